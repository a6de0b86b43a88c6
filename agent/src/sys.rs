//! The few raw syscalls nix does not wrap. Every `unsafe` of the crate that
//! is not a `fork` lives here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// `close_range(first, last, 0)`: closes every fd in `first..=last`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches only our fd table;
    // callers own the fds in the range (a freshly forked child).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes `fd` (a tty) the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// splice(2) of up to `len` bytes from `from` to `to`, without blocking on
/// the pipe (the socket's own O_NONBLOCK covers the other side). Through
/// libc because nix gates its wrapper behind a feature the workspace does
/// not otherwise need.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> nix::Result<usize> {
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    // SAFETY: no offsets (both are streams), two borrowed fds: the call
    // reads and writes no memory of this process.
    let r = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    nix::errno::Errno::result(r).map(|n| n as usize)
}

/// How many bytes wait to be read in a pipe or socket (FIONREAD).
pub fn pending_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid
    // for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Sets the window size of a pty (master or slave).
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which is
    // valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `poll(2)` over raw pollfds; returns how many have events. EINTR is
/// reported as 0 ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and length describe a live, exclusively borrowed
    // slice of pollfd structs that the kernel writes `revents` into.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Sets or clears O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Unblocks every signal and resets every disposition to the default, as a
/// freshly exec'd program expects (Rust ignores SIGPIPE; the agent blocks
/// SIGCHLD for its signalfd).
pub fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let _ = SigSet::all().thread_unblock();
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { sigaction(sig, &dfl) };
    }
}

/// Forks. Only called while the agent is single-threaded, so the child may
/// allocate and run ordinary Rust code.
pub fn fork() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: the agent never starts a thread (see the crate docs), so no
    // lock can be held by another thread at the time of the fork.
    Ok(unsafe { nix::unistd::fork() }?)
}

/// Exits the calling process at once, without running destructors or
/// atexit handlers (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// `setdomainname(2)`.
pub fn setdomainname(name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live C string.
    let r = unsafe { libc::setdomainname(name.as_ptr(), name.to_bytes().len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `accept4` with CLOEXEC and NONBLOCK; `None` when nothing is pending.
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use nix::sys::socket::{accept4, SockFlag};
    use std::os::fd::FromRawFd;
    match accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    ) {
        // SAFETY: accept4 returned a new fd that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(nix::errno::Errno::ECONNABORTED) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens a pty pair through the calling process's /dev/ptmx (so inside a
/// container it belongs to the container's devpts): (master, slave).
pub fn open_pty() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let master: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok((master, unsafe { std::os::fd::OwnedFd::from_raw_fd(slave) }))
}

/// Takes ownership of an fd received with SCM_RIGHTS.
pub fn own_received_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: the kernel installed this fd for us in recvmsg; nothing else
    // owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// The index N of a pty master (its slave is /dev/pts/N of its devpts).
pub fn pty_number(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which
    // is valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// `mount_setattr(AT_FDCWD, path, AT_RECURSIVE | AT_SYMLINK_NOFOLLOW)`
/// setting `set` and clearing `clr` (`MOUNT_ATTR_*`) on the mount at `path`
/// and every mount below it. nix has no wrapper for it.
pub fn mount_setattr_recursive(path: &std::path::Path, set: u64, clr: u64) -> nix::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is a valid NUL-terminated path and `attr` a valid
    // mount_attr, both outliving the call; the struct's size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

/// `set_mempolicy(mode, nodemask, maxnode)` with `mask` as the node mask
/// (empty: no mask). nix has no wrapper for it.
pub fn set_mempolicy(mode: i32, mask: &[u64]) -> io::Result<()> {
    let (ptr, maxnode) = if mask.is_empty() {
        (std::ptr::null(), 0u64)
    } else {
        // The kernel reads `maxnode - 1` bits.
        (mask.as_ptr(), mask.len() as u64 * 64 + 1)
    };
    // SAFETY: `ptr` is null with maxnode 0, or points at `mask.len()` u64s
    // that cover the `maxnode - 1` bits the kernel reads; it only reads them.
    let r = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode, ptr, maxnode) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
