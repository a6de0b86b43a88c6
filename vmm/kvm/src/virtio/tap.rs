//! A host tap device as the backend of virtio-net.
//!
//! The tap is set up the way the device needs it: `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` (frames carry a `virtio_net_hdr`, so the device passes the
//! guest's header format through), a 12-byte header (`virtio_net_hdr_v1`,
//! with `num_buffers`), no offloads (the device offers none, so the kernel
//! must hand over fully checksummed, unsegmented frames) and non-blocking.
//!
//! The few `TUN*` ioctls are written by hand: the crates that wrap them
//! (`tun-tap`, `tun`) either are unmaintained or pull in async runtimes, and
//! five ioctls on one fd do not justify either.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The size of the header in front of each frame (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize =
    std::mem::size_of::<virtio_bindings::virtio_net::virtio_net_hdr_v1>();

/// A tap could not be opened or adopted.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    Open(#[source] io::Error),
    /// The interface name does not fit `IFNAMSIZ` or is empty.
    #[error("tap name {0:?} is empty, longer than 15 bytes or contains NUL")]
    BadName(String),
    /// A tun ioctl or fcntl failed.
    #[error("{what} on the tap failed")]
    Ioctl {
        /// Which call.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// An adopted fd is not a tap with a virtio-net header.
    #[error("the fd is not a tap opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (flags {0:#x})")]
    NotVnetTap(u16),
}

/// `struct ifreq` as far as the tun ioctls use it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn zeroed() -> Self {
        IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open, configured tap device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Opens (creating it if needed) the tap `name` in the caller's network
    /// namespace.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let (fd, name) = attach(name, TAP_FLAGS)?;
        let tap = Tap { fd, name };
        tap.configure()?;
        Ok(tap)
    }

    /// Adopts a tap the runtime opened (inside the container's network
    /// namespace) and passed over. It must have been attached with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, which cannot be changed later.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let mut req = IfReq::zeroed();
        // SAFETY: as in `open`; TUNGETIFF fills `req`.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) };
        if rc < 0 {
            return Err(ioctl_err("TUNGETIFF"));
        }
        let flags = req.flags as libc::c_int;
        if flags & TAP_FLAGS != TAP_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(TapError::NotVnetTap(req.flags as u16));
        }
        set_nonblocking(&fd)?;
        let tap = Tap {
            fd,
            name: req.name(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// A datagram socket standing in for a tap in tests that cannot create
    /// one: one write is one frame, one read is one frame.
    #[cfg(any(test, feature = "test-utils"))]
    pub(crate) fn fake(fd: OwnedFd) -> Tap {
        Tap {
            fd,
            name: "fake".into(),
        }
    }

    fn configure(&self) -> Result<(), TapError> {
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which is
        // live for the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ"));
        }
        self.set_offload(0)
    }

    /// Which offloads (`TUN_F_*`) the tap may hand the device; the guest's
    /// negotiated `VIRTIO_NET_F_GUEST_*` features decide.
    pub fn set_offload(&self, flags: libc::c_uint) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value, no pointers.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                flags as libc::c_ulong,
            )
        };
        if rc < 0 {
            return Err(ioctl_err("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its header); `WouldBlock` when none is queued.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame gathered from `iov`.
    ///
    /// # Safety
    /// Every `iov` entry must describe memory readable for its length for
    /// the duration of the call.
    pub(crate) unsafe fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let cnt = libc::c_int::try_from(iov.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the caller guarantees the iovecs are readable.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), cnt) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens `/dev/net/tun` non-blocking and attaches it to the interface
/// `name` with `flags`; returns the fd and the name the kernel gave.
fn attach(name: &str, flags: libc::c_int) -> Result<(OwnedFd, String), TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::BadName(name.to_owned()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::Open)?;
    let fd = OwnedFd::from(file);
    let mut req = IfReq::zeroed();
    req.name[..bytes.len()].copy_from_slice(bytes);
    // The flags fit in the low 16 bits (ifr_flags is a short).
    req.flags = flags as libc::c_short;
    // SAFETY: `req` is a live, writable `ifreq`-sized buffer for the
    // duration of the call and `fd` is an open tun fd.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    Ok((fd, req.name()))
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), TapError> {
    // SAFETY: F_GETFL on an fd we own, no pointers.
    let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(ioctl_err("fcntl(F_GETFL)"));
    }
    // SAFETY: F_SETFL on an fd we own, no pointers.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(ioctl_err("fcntl(F_SETFL)"));
    }
    Ok(())
}

fn ioctl_err(what: &'static str) -> TapError {
    TapError::Ioctl {
        what,
        source: io::Error::last_os_error(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a-name-that-is-too-long", "nul\0"] {
            assert!(
                matches!(Tap::open(name), Err(TapError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn adopting_a_non_tap_fd_fails() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(Tap::from_fd(f.into()).is_err());
    }

    /// Runs `f` on a thread in a network namespace of its own, so the
    /// interfaces it makes never reach the host; false when it cannot.
    pub(crate) fn in_private_netns(test: &'static str, f: impl FnOnce() + Send + 'static) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
            husk_test_support::skip(format!("{test}: needs root and /dev/net/tun"));
            return false;
        }
        std::thread::spawn(move || {
            // SAFETY: unshare only moves this thread to a new namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                husk_test_support::skip(format!("{test}: unshare(CLONE_NEWNET): {e}"));
                return false;
            }
            f();
            true
        })
        .join()
        .expect("the test panicked in its network namespace")
    }

    #[test]
    fn adopts_a_vnet_tap_and_refuses_other_tun_fds() {
        in_private_netns("adopts_a_vnet_tap_and_refuses_other_tun_fds", || {
            let (fd, _) = attach("husk-a0", TAP_FLAGS).unwrap();
            // Blocking, as a runtime might hand it over.
            // SAFETY: F_SETFL on an fd we own, no pointers.
            assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, 0) }, 0);
            let tap = Tap::from_fd(fd).unwrap();
            assert_eq!(tap.name(), "husk-a0");
            let err = tap.read(&mut [0; 64]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "made non-blocking");

            for (name, flags) in [
                ("husk-a1", libc::IFF_TAP | libc::IFF_NO_PI),
                (
                    "husk-a2",
                    libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
                ),
            ] {
                let (fd, _) = attach(name, flags).unwrap();
                assert!(
                    matches!(Tap::from_fd(fd), Err(TapError::NotVnetTap(_))),
                    "{name}"
                );
            }
        });
    }
}
