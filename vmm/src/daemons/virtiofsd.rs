//! `virtiofsd`: one per share, in the strongest sandbox this host allows.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::{remove_socket, wait_for_socket, DaemonError, SOCKET_TIMEOUT};
use crate::config::{ShareConfig, VmConfig};
use crate::process::Supervised;

/// virtiofsd's `--sandbox` modes, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    /// Mount, pid and net namespaces plus pivot_root into the shared dir.
    Namespace,
    /// chroot into the shared dir.
    Chroot,
    /// None: only virtiofsd's own path checks and seccomp.
    None,
}

impl Sandbox {
    /// Strongest first.
    pub const ALL: [Sandbox; 3] = [Sandbox::Namespace, Sandbox::Chroot, Sandbox::None];

    /// The value of `--sandbox`.
    pub fn as_arg(self) -> &'static str {
        match self {
            Sandbox::Namespace => "namespace",
            Sandbox::Chroot => "chroot",
            Sandbox::None => "none",
        }
    }
}

/// virtiofsd 1.x's arguments for one share.
pub fn virtiofsd_args(share: &ShareConfig, socket: &Path, sandbox: Sandbox) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--socket-path".into(),
        socket.into(),
        "--shared-dir".into(),
        share.host_dir.clone().into(),
        "--sandbox".into(),
        sandbox.as_arg().into(),
        "--cache".into(),
        share.cache.as_arg().into(),
    ];
    if share.readonly {
        a.push("--readonly".into());
    }
    a
}

/// Starts virtiofsd for `share`, trying sandboxes from `strongest` down
/// until one serves its socket. Returns the daemon and the sandbox used, to
/// start the next share's daemon there directly.
pub fn start_virtiofsd(
    program: &Path,
    cfg: &VmConfig,
    share: &ShareConfig,
    strongest: Sandbox,
) -> Result<(Supervised, Sandbox), DaemonError> {
    let socket = cfg.fs_backend_socket(&share.tag);
    let log = cfg.state_dir.join(format!("virtiofsd-{}.log", share.tag));
    let name = format!("virtiofsd[{}]", share.tag);
    let mut last_err = None;
    for sandbox in Sandbox::ALL.into_iter().skip_while(|s| *s != strongest) {
        remove_socket(&socket);
        let mut cmd = Command::new(program);
        cmd.args(virtiofsd_args(share, &socket, sandbox));
        let mut child = Supervised::spawn(&name, cmd, &log)?;
        match wait_for_socket(&mut child, &socket, SOCKET_TIMEOUT) {
            Ok(()) => {
                if sandbox != Sandbox::Namespace {
                    tracing::warn!(share = %share.tag, "virtiofsd runs with --sandbox {}", sandbox.as_arg());
                } else {
                    tracing::info!(share = %share.tag, "virtiofsd runs with --sandbox namespace");
                }
                return Ok((child, sandbox));
            }
            Err(e @ DaemonError::ExitedEarly { .. }) => {
                tracing::info!(share = %share.tag, "virtiofsd --sandbox {} failed: {e}", sandbox.as_arg());
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or(DaemonError::SocketTimeout { name, socket }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CachePolicy;

    #[test]
    fn args() {
        let share = ShareConfig {
            tag: "rootfs".into(),
            host_dir: "/b/rootfs".into(),
            cache: CachePolicy::Auto,
            readonly: true,
        };
        let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), Sandbox::Chroot);
        let a: Vec<_> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "--socket-path",
                "/s/fs.sock",
                "--shared-dir",
                "/b/rootfs",
                "--sandbox",
                "chroot",
                "--cache",
                "auto",
                "--readonly"
            ]
        );
    }
}
