//! The listening socket: vsock in the guest, a Unix socket for host tests.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sys::socket::{
    bind as nix_bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

use super::ServerError;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK on this port, any CID.
    Vsock(u32),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(Listen::Vsock)
                .map_err(|_| format!("bad vsock port {port:?}"));
        }
        Err(format!(
            "--listen must be vsock:PORT or unix:PATH, not {s:?}"
        ))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Vsock(p) => write!(f, "vsock:{p}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Binds and listens (non-blocking, close-on-exec).
pub fn bind(addr: &Listen) -> Result<OwnedFd, ServerError> {
    let err = |e: std::io::Error| ServerError::Listen {
        addr: addr.to_string(),
        source: e,
    };
    match addr {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
            l.set_nonblocking(true).map_err(err)?;
            Ok(l.into())
        }
        Listen::Vsock(port) => {
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                None,
            )
            .map_err(|e| err(e.into()))?;
            nix_bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &VsockAddr::new(libc::VMADDR_CID_ANY, *port),
            )
            .map_err(|e| err(e.into()))?;
            listen(&fd, Backlog::new(64).map_err(|e| err(e.into()))?).map_err(|e| err(e.into()))?;
            Ok(fd)
        }
    }
}
