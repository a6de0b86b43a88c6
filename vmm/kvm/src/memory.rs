//! Guest RAM and the guest-physical layout.
//!
//! RAM is one memfd mapped shared, so the vhost-user daemons (virtiofsd,
//! vhost-device-vsock) can map the same pages from the fd and offsets the
//! frontend sends them. Below 4 GiB RAM stops at [`MMIO_GAP_START`]; the
//! devices live in the gap; RAM beyond that continues at 4 GiB.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Where the 32-bit MMIO gap starts (3.25 GiB), as in Firecracker.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// Where it ends (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// The first virtio-mmio device's registers; each device gets
/// [`VIRTIO_MMIO_SIZE`] after the previous one.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
/// One virtio-mmio device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The first GSI for virtio-mmio devices (0-4 are the PIT, keyboard,
/// cascade and serial); one per device, counting up.
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// Guest RAM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero or not page-aligned.
    #[error("guest memory size {0:#x} is zero or not a multiple of 4 KiB")]
    BadSize(u64),
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    /// Mapping failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

/// The RAM ranges for `size` bytes of guest memory, around the MMIO gap.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// `size` bytes of guest RAM in one memfd, each range mapped shared at its
/// own offset in the file.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if size == 0 || size & 0xfff != 0 {
        return Err(MemoryError::BadSize(size));
    }
    let memfd = memfd("husk-guest-ram")?;
    memfd.set_len(size).map_err(MemoryError::Memfd)?;
    let mut offset = 0;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let file = memfd.try_clone().map_err(MemoryError::Memfd)?;
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::BadSize(size))?;
        regions.push((addr, len_usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

fn memfd(name: &str) -> Result<File, MemoryError> {
    let name = std::ffi::CString::new(name).map_err(|e| MemoryError::Memfd(e.into()))?;
    // SAFETY: `name` is a valid NUL-terminated string; the flags are constants.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create just returned this fd and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn layout_around_the_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            r[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn memfd_backed_and_shared() {
        assert!(create_guest_memory(0).is_err());
        assert!(create_guest_memory(4095).is_err());
        let m = create_guest_memory(16 << 20).unwrap();
        m.write_obj(0xdead_beef_u32, GuestAddress(0x1000)).unwrap();
        let r = m.iter().next().unwrap();
        let fo = r.file_offset().expect("file backed");
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        fo.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }
}
