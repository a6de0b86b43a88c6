//! `virtiofsd`: one per share, in the sandbox the config names (namespace
//! unless an operator chose a weaker one), confined by [`super::confine`].

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use husk_vmm_contract::config::{ShareConfig, VirtiofsdSandbox, VmConfig};

use super::confine::{virtiofsd_modcaps, Confinement};
use super::{remove_socket, wait_for_socket, DaemonError, SOCKET_TIMEOUT};
use crate::process::Supervised;

/// virtiofsd 1.x's arguments for one share. Never `--xattr`, `--posix-acl`
/// or `--security-label`: without xattr support the guest cannot set file
/// capabilities (`security.capability`) on host files.
pub fn virtiofsd_args(
    share: &ShareConfig,
    socket: &Path,
    sandbox: VirtiofsdSandbox,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "--socket-path".into(),
        socket.into(),
        "--shared-dir".into(),
        share.host_dir.clone().into(),
        "--sandbox".into(),
        sandbox.as_arg().into(),
        "--cache".into(),
        share.cache.as_arg().into(),
        format!("--modcaps={}", virtiofsd_modcaps()).into(),
    ];
    // Direct I/O refuses MAP_SHARED of a file (ENODEV) unless virtiofsd
    // allows it; a shared mapping is then cached in the guest and seen by
    // host processes when it is written back: what `auto` gives every
    // file, only for mapped ones.
    if share.cache.is_direct_io() {
        a.push("--allow-mmap".into());
    }
    if share.readonly {
        a.push("--readonly".into());
    }
    if share.writeback && !share.readonly {
        a.push("--writeback".into());
    }
    if let Some(n) = share.threads {
        a.push(format!("--thread-pool-size={n}").into());
    }
    a
}

/// Starts virtiofsd for `share` with `cfg.virtiofsd_sandbox`. There is no
/// fallback: if that sandbox cannot be set up the start fails, naming
/// virtiofsd's reason.
pub fn start_virtiofsd(
    program: &Path,
    cfg: &VmConfig,
    share: &ShareConfig,
) -> Result<Supervised, DaemonError> {
    let sandbox = cfg.virtiofsd_sandbox;
    let socket = cfg.fs_backend_socket(&share.tag);
    let log = cfg.state_dir.join(format!("virtiofsd-{}.log", share.tag));
    let name = format!("virtiofsd[{}]", share.tag);
    remove_socket(&socket);
    let mut cmd = Command::new(program);
    cmd.args(virtiofsd_args(share, &socket, sandbox));
    Confinement::virtiofsd(sandbox)?.install(&mut cmd);
    let mut child = Supervised::spawn(&name, cmd, &log)?;
    child.record_in(&cfg.state_dir);
    match wait_for_socket(&mut child, &socket, SOCKET_TIMEOUT) {
        Ok(()) => {
            if sandbox == VirtiofsdSandbox::Namespace {
                tracing::info!(share = %share.tag, "virtiofsd runs with --sandbox namespace");
            } else {
                tracing::warn!(
                    share = %share.tag,
                    "virtiofsd runs with the weaker --sandbox {} the configuration asked for",
                    sandbox.as_arg()
                );
            }
            Ok(child)
        }
        Err(e @ DaemonError::ExitedEarly { .. }) => Err(DaemonError::Sandbox {
            name,
            sandbox: sandbox.as_arg(),
            source: Box::new(e),
        }),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "virtiofsd_tests.rs"]
mod tests;
