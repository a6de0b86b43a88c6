//! Loading Linux: the `vmlinux` ELF at its physical addresses, the
//! initramfs at the top of low RAM, the command line, and the PVH
//! `hvm_start_info` with its memory map (the e820 equivalent). The vCPU
//! then starts at the kernel's PVH entry ([`super::cpu::Entry::Pvh`]).
//!
//! Low memory, all below 1 MiB:
//!
//! | address | what |
//! | --- | --- |
//! | `0x500` | boot GDT ([`super::cpu::BOOT_GDT_ADDR`]) |
//! | `0x6000` | `hvm_start_info` |
//! | `0x6040` | the module list (the initramfs) |
//! | `0x7000` | the memory map |
//! | `0x20000` | the command line (64 KiB at most) |

use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use linux_loader::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::cpu::Entry;
use super::memory::{MMIO_GAP_START, VIRTIO_MMIO_SIZE};

/// `hvm_start_info`.
pub const START_INFO_ADDR: u64 = 0x6000;
const MODLIST_ADDR: u64 = 0x6040;
const MEMMAP_ADDR: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Its size limit, terminating NUL included.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Where the kernel may start (1 MiB); below is the low-memory area.
const HIMEM_START: u64 = 0x10_0000;
/// The extended BIOS data area, kept out of RAM as on a PC.
const EBDA_START: u64 = 0x9_fc00;

/// The kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ELF could not be loaded.
    #[error("cannot load kernel {path}: {reason}")]
    Kernel {
        /// The kernel.
        path: PathBuf,
        /// The loader's reason.
        reason: String,
    },
    /// The kernel has no PVH entry note.
    #[error("kernel {0} has no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvh(PathBuf),
    /// The initramfs does not fit between the kernel and the MMIO gap.
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM above the kernel")]
    InitramfsTooBig {
        /// The initramfs.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The command line is invalid or too long.
    #[error("bad kernel command line: {0}")]
    Cmdline(String),
    /// Writing a boot structure to guest memory failed.
    #[error("cannot write {0} to guest memory")]
    Write(&'static str),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec<'a> {
    /// The uncompressed `vmlinux` with a PVH note.
    pub kernel: &'a Path,
    /// The initramfs, if any.
    pub initramfs: Option<&'a Path>,
    /// The command line, without the virtio-mmio devices.
    pub cmdline: &'a str,
    /// Each virtio-mmio device's (register base, GSI), announced on the
    /// command line (`virtio_mmio.device=4K@BASE:GSI`).
    pub mmio_devices: &'a [(u64, u32)],
}

/// Checks that `path` starts like an x86-64 little-endian ELF, so a wrong
/// kernel (a bzImage, say) is refused before anything is started.
pub fn check_kernel(path: &Path) -> Result<(), BootError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(20);
    std::fs::File::open(path)
        .and_then(|f| f.take(20).read_to_end(&mut head))
        .map_err(|source| BootError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    const EM_X86_64: u16 = 62;
    let is_x86_64_elf = head.len() == 20
        && head[..4] == *b"\x7fELF"
        && head[4] == 2
        && head[5] == 1
        && u16::from_le_bytes([head[18], head[19]]) == EM_X86_64;
    if is_x86_64_elf {
        Ok(())
    } else {
        Err(BootError::Kernel {
            path: path.to_path_buf(),
            reason: "not an x86-64 ELF (the builtin engine boots an uncompressed vmlinux)".into(),
        })
    }
}

/// The full command line for `spec`.
pub fn build_cmdline(spec: &BootSpec<'_>) -> Result<Cmdline, BootError> {
    let bad = |e: linux_loader::cmdline::Error| BootError::Cmdline(e.to_string());
    let mut c = Cmdline::try_from(spec.cmdline, CMDLINE_MAX).map_err(bad)?;
    for &(base, gsi) in spec.mmio_devices {
        c.add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(base), gsi, None)
            .map_err(bad)?;
    }
    Ok(c)
}

/// The memory map the guest sees: RAM below the EBDA, RAM from 1 MiB to
/// the end of each region, the EBDA..1 MiB hole reserved.
fn memmap(mem: &GuestMemoryMmap) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut v = vec![
        entry(0, EBDA_START, XEN_HVM_MEMMAP_TYPE_RAM),
        entry(
            EBDA_START,
            HIMEM_START - EBDA_START,
            XEN_HVM_MEMMAP_TYPE_RESERVED,
        ),
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            v.push(entry(start, end - start, XEN_HVM_MEMMAP_TYPE_RAM));
        }
    }
    v
}

/// The end of RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&e| e <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Loads `spec` into `mem`; returns where vCPU 0 starts.
pub fn load(mem: &GuestMemoryMmap, spec: &BootSpec<'_>) -> Result<Entry, BootError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::Read { path, source }
    };
    let mut kernel = std::fs::File::open(spec.kernel).map_err(read_err(spec.kernel))?;
    let loaded =
        Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            BootError::Kernel {
                path: spec.kernel.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    let PvhBootCapability::PvhEntryPresent(pvh_entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvh(spec.kernel.to_path_buf()));
    };

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        ..Default::default()
    };

    if let Some(path) = spec.initramfs {
        // Read straight into guest RAM (no copy through the heap).
        let mut file = std::fs::File::open(path).map_err(read_err(path))?;
        let size = file.metadata().map_err(read_err(path))?.len();
        let too_big = || BootError::InitramfsTooBig {
            path: path.to_path_buf(),
            size,
        };
        let addr = low_ram_end(mem)
            .checked_sub(size)
            .map(|a| a & !0xfff)
            .filter(|&a| a >= loaded.kernel_end)
            .ok_or_else(too_big)?;
        let count = usize::try_from(size).map_err(|_| too_big())?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
            .map_err(|e| BootError::Read {
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })?;
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(MODLIST_ADDR))
            .map_err(|_| BootError::Write("the module list"))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR;
    }

    let cmdline = build_cmdline(spec)?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    let map = memmap(mem);
    start_info.memmap_entries = map.len() as u32;
    for (i, e) in map.iter().enumerate() {
        let at = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(*e, GuestAddress(at))
            .map_err(|_| BootError::Write("the memory map"))?;
    }
    mem.write_obj(start_info, GuestAddress(START_INFO_ADDR))
        .map_err(|_| BootError::Write("hvm_start_info"))?;
    tracing::debug!(
        entry = format!("{:#x}", pvh_entry.raw_value()),
        kernel_end = format!("{:#x}", loaded.kernel_end),
        cmdline = ?cmdline.as_cstring().ok(),
        "kernel loaded"
    );
    Ok(Entry::Pvh {
        entry: pvh_entry.raw_value(),
        start_info: START_INFO_ADDR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn cmdline_with_devices() {
        let spec = BootSpec {
            kernel: Path::new("/nonexistent"),
            initramfs: None,
            cmdline: "console=ttyS0 panic=-1",
            mmio_devices: &[(0xd000_0000, 5), (0xd000_1000, 6)],
        };
        let c = build_cmdline(&spec).unwrap().as_cstring().unwrap();
        assert_eq!(
            c.to_str().unwrap(),
            "console=ttyS0 panic=-1 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        let long = "x".repeat(CMDLINE_MAX);
        let spec = BootSpec {
            cmdline: &long,
            ..spec
        };
        assert!(matches!(build_cmdline(&spec), Err(BootError::Cmdline(_))));
    }

    #[test]
    fn memory_map_and_errors() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let m = memmap(&mem);
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[2].addr, m[2].size),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
        assert_eq!(low_ram_end(&mem), 64 << 20);
        let spec = BootSpec {
            kernel: Path::new("/nonexistent/vmlinux"),
            initramfs: None,
            cmdline: "",
            mmio_devices: &[],
        };
        assert!(matches!(load(&mem, &spec), Err(BootError::Read { .. })));
        let not_elf = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(not_elf.path(), b"not an ELF at all, just bytes").unwrap();
        let spec = BootSpec {
            kernel: not_elf.path(),
            ..spec
        };
        assert!(matches!(load(&mem, &spec), Err(BootError::Kernel { .. })));
        assert!(matches!(
            check_kernel(not_elf.path()),
            Err(BootError::Kernel { .. })
        ));
        assert!(matches!(
            check_kernel(Path::new("/nonexistent")),
            Err(BootError::Read { .. })
        ));
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 62;
        std::fs::write(not_elf.path(), &elf).unwrap();
        check_kernel(not_elf.path()).unwrap();
    }

    /// A minimal PVH kernel: one 16-byte PT_LOAD at 16 MiB and the Xen
    /// note naming its 32-bit entry.
    fn tiny_pvh_elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x210];
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        let put16 =
            |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let put64 =
            |f: &mut Vec<u8>, at: usize, v: u64| f[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put16(&mut f, 16, 2); // ET_EXEC
        put16(&mut f, 18, 62); // x86-64
        put32(&mut f, 20, 1);
        put64(&mut f, 24, HIMEM_START);
        put64(&mut f, 32, 64); // program headers right after
        put16(&mut f, 52, 64);
        put16(&mut f, 54, 56);
        put16(&mut f, 56, 2);
        // PT_LOAD: 16 bytes from 0x200 at HIMEM_START.
        let ph = 64;
        put32(&mut f, ph, 1);
        put64(&mut f, ph + 8, 0x200);
        put64(&mut f, ph + 16, HIMEM_START);
        put64(&mut f, ph + 24, HIMEM_START);
        put64(&mut f, ph + 32, 16);
        put64(&mut f, ph + 40, 16);
        // PT_NOTE at 0x100: "Xen", XEN_ELFNOTE_PHYS32_ENTRY (18).
        let ph = 64 + 56;
        put32(&mut f, ph, 4);
        put64(&mut f, ph + 8, 0x100);
        put64(&mut f, ph + 32, 20);
        put64(&mut f, ph + 40, 20);
        put64(&mut f, ph + 48, 4);
        put32(&mut f, 0x100, 4);
        put32(&mut f, 0x104, 4);
        put32(&mut f, 0x108, 18);
        f[0x10c..0x110].copy_from_slice(b"Xen\0");
        put32(&mut f, 0x110, HIMEM_START as u32);
        f
    }

    #[test]
    fn initramfs_lands_page_aligned_at_the_top_of_low_ram() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let kernel = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(kernel.path(), tiny_pvh_elf()).unwrap();
        let initramfs = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(initramfs.path(), &data).unwrap();
        let spec = BootSpec {
            kernel: kernel.path(),
            initramfs: Some(initramfs.path()),
            cmdline: "console=ttyS0",
            mmio_devices: &[],
        };
        let entry = load(&mem, &spec).unwrap();
        assert_eq!(
            entry,
            Entry::Pvh {
                entry: HIMEM_START,
                start_info: START_INFO_ADDR
            }
        );
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_ADDR)).unwrap();
        assert_eq!(module.size, data.len() as u64);
        assert_eq!(module.paddr, ((64 << 20) - data.len() as u64) & !0xfff);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(module.paddr))
            .unwrap();
        assert_eq!(back, data);
        let info: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
        assert_eq!(info.nr_modules, 1);

        // An initramfs too big for RAM above the kernel is refused by name.
        let big = tempfile::NamedTempFile::new().unwrap();
        big.as_file().set_len(64 << 20).unwrap();
        let spec = BootSpec {
            initramfs: Some(big.path()),
            ..spec
        };
        assert!(matches!(
            load(&mem, &spec),
            Err(BootError::InitramfsTooBig { .. })
        ));
    }
}
