//! The vhost-user device daemons, one set per VM: one `virtiofsd` per share
//! and one `husk-vsockd`. The monitor starts them before the engine,
//! waits for their sockets, and stops them on every exit path.

pub mod confine;
mod virtiofsd;
mod vsock;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use virtiofsd::{start_virtiofsd, virtiofsd_args};
pub use vsock::{start_vsock, vsock_args, PROGRAM as VSOCK_PROGRAM};

use crate::binaries::BinaryError;
use crate::process::{describe, ProcessError, Supervised};

/// How long a daemon gets to create its socket.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// A device daemon could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Its program is missing.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// It could not be spawned.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// It exited before its socket appeared.
    #[error("{name} exited with {} before serving {}: {log_tail}", describe(*.status), .socket.display())]
    ExitedEarly {
        /// The daemon.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// The socket it should have created.
        socket: PathBuf,
        /// The last line it logged.
        log_tail: String,
    },
    /// Its confinement could not be prepared.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// virtiofsd did not start in the sandbox the configuration asks for;
    /// the monitor never falls back to a weaker one by itself.
    #[error(
        "{name} cannot run with --sandbox {sandbox}; not falling back to a weaker sandbox \
         (an operator may opt in with virtiofsd_sandbox or HUSK_VIRTIOFSD_SANDBOX=chroot|none)"
    )]
    Sandbox {
        /// The daemon.
        name: String,
        /// The sandbox asked for.
        sandbox: &'static str,
        /// How it failed, with the daemon's last log line.
        #[source]
        source: Box<DaemonError>,
    },
    /// Its socket did not appear in time.
    #[error("{name} did not create {} within {SOCKET_TIMEOUT:?}", .socket.display())]
    SocketTimeout {
        /// The daemon.
        name: String,
        /// The socket it should have created.
        socket: PathBuf,
    },
}

/// Waits until `socket` exists as a Unix socket, failing early when the
/// daemon exits first.
pub fn wait_for_socket(
    child: &mut Supervised,
    socket: &Path,
    timeout: Duration,
) -> Result<(), DaemonError> {
    let deadline = Instant::now() + timeout;
    loop {
        if socket
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_socket())
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait() {
            return Err(DaemonError::ExitedEarly {
                name: child.name().to_owned(),
                status,
                socket: socket.to_owned(),
                log_tail: child.log_tail(),
            });
        }
        if Instant::now() >= deadline {
            return Err(DaemonError::SocketTimeout {
                name: child.name().to_owned(),
                socket: socket.to_owned(),
            });
        }
        child.wait_timeout(Duration::from_millis(5));
    }
}

/// Removes a socket file left by an earlier run or by a daemon; anything
/// that is not a socket is left alone.
pub fn remove_socket(path: &Path) {
    if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_socket())
    {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), "cannot remove socket: {e}");
        }
    }
}

/// Removes `uds` and the `UDS_PORT` sockets the vsock backend creates for
/// guest-initiated connections.
pub fn remove_vsock_sockets(uds: &Path) {
    remove_socket(uds);
    let (Some(dir), Some(name)) = (uds.parent(), uds.file_name()) else {
        return;
    };
    let prefix = format!("{}_", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.strip_prefix(&prefix)
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            {
                remove_socket(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::process::Command;

    #[test]
    fn socket_wait_and_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        let sock = dir.path().join("s.sock");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo cannot bind >&2; exit 2"]);
        let mut c = Supervised::spawn("dying", cmd, &log).unwrap();
        let err = wait_for_socket(&mut c, &sock, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dying exited with exit code 2") && err.ends_with("cannot bind"),
            "{err}"
        );

        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let mut c = Supervised::spawn("slow", sleep, &log).unwrap();
        let err = wait_for_socket(&mut c, &sock, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, DaemonError::SocketTimeout { .. }));
        let _l = UnixListener::bind(&sock).unwrap();
        let _l2 = UnixListener::bind(dir.path().join("s.sock_1024")).unwrap();
        std::fs::write(dir.path().join("s.sock_x"), "").unwrap();
        wait_for_socket(&mut c, &sock, Duration::from_secs(1)).unwrap();
        remove_vsock_sockets(&sock);
        assert!(!sock.exists());
        assert!(!dir.path().join("s.sock_1024").exists());
        assert!(dir.path().join("s.sock_x").exists(), "not ours: left alone");
    }
}
