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
    /// AF_VSOCK on this port. Only the host (CID 2) may connect: see
    /// [`peer_allowed`].
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

/// Whether a vsock peer may talk to the agent: only the host (CID 2).
///
/// A connection from any other CID can only come from inside this guest
/// (CID 1 through vsock loopback, or the guest's own CID), that is from a
/// container process: such a peer could create, exec into and signal every
/// container of the VM with the agent's privileges. The guest kernel is
/// built without vsock loopback as well; this check is the second wall.
pub fn vsock_peer_allowed(cid: u32) -> bool {
    cid == libc::VMADDR_CID_HOST
}

/// Whether the peer of an accepted connection may use the agent. Unix
/// peers (the host tests' listener) are allowed; vsock peers must be the
/// host. `Err` when the peer address cannot be read (the connection is
/// dropped then too).
pub fn peer_allowed(conn: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(bool, String)> {
    use nix::sys::socket::{getpeername, SockaddrLike, SockaddrStorage};
    let addr: SockaddrStorage = getpeername(std::os::fd::AsRawFd::as_raw_fd(&conn))?;
    if let Some(v) = addr.as_vsock_addr() {
        return Ok((
            vsock_peer_allowed(v.cid()),
            format!("vsock cid {} port {}", v.cid(), v.port()),
        ));
    }
    Ok((addr.family() != Some(AddressFamily::Vsock), "unix".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_cid_may_connect() {
        assert!(vsock_peer_allowed(2));
        for cid in [0, 1, 3, 4, 1000, u32::MAX] {
            assert!(!vsock_peer_allowed(cid), "cid {cid}");
        }
    }

    #[test]
    fn unix_peers_are_allowed() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (ok, what) = peer_allowed(std::os::fd::AsFd::as_fd(&a)).unwrap();
        assert!(ok);
        assert_eq!(what, "unix");
    }
}
