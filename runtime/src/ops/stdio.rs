//! Host ptys for terminal processes and handing the pty master to
//! `--console-socket`; the byte pumps to the agent's streams are
//! `husk_protocol::attach`'s.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::pty::{openpty, OpenptyResult};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

/// A host pty pair whose slave is raw: the guest's pty does the line
/// discipline, the host one only carries bytes.
pub fn raw_pty() -> io::Result<OpenptyResult> {
    let pty = openpty(None, None).map_err(io::Error::from)?;
    let mut t = tcgetattr(&pty.slave).map_err(io::Error::from)?;
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(io::Error::from)?;
    Ok(pty)
}

/// Sends `master` over the Unix socket at `path`, as runc does: the
/// message data is the pty's name, the fd travels as SCM_RIGHTS.
pub fn send_console(path: &Path, pty: &OpenptyResult) -> io::Result<()> {
    let sock = UnixStream::connect(path)?;
    let name = nix::unistd::ttyname(&pty.slave)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/ptmx".into());
    let master = &pty.master;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    Ok(())
}

/// A duplicate of one of this process's standard fds as a `File`.
pub fn std_fd(fd: i32) -> io::Result<File> {
    // SAFETY: fd 0..=2 are open for the life of the process; the borrow
    // ends at once, the clone owns its own descriptor.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    Ok(File::from(borrowed.try_clone_to_owned()?))
}
