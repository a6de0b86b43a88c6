//! `husk-vsockd` (the workspace's `vsockd/`): the hybrid vsock backend
//! (the host connects to a Unix socket and writes `CONNECT <port>\n`),
//! without capabilities and confined by [`super::confine`].
//!
//! It replaced vhost-device-vsock 0.3.0, whose command line it keeps: that
//! one refused TX payloads spread over several descriptors, carried no
//! half-close, and could stop answering `CONNECT`s queued before the
//! guest's driver was ready. The config's `binaries.vhost_device_vsock`
//! (and `--vhost-device-vsock`) still name the program to run.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use husk_vmm_contract::config::VmConfig;

use super::confine::Confinement;
use super::{remove_socket, remove_vsock_sockets, wait_for_socket, DaemonError, SOCKET_TIMEOUT};
use crate::process::Supervised;

/// The program's name, as searched for by `crate::binaries::locate_own`.
pub const PROGRAM: &str = "husk-vsockd";

/// husk-vsockd's arguments for `cfg`.
pub fn vsock_args(cfg: &VmConfig) -> Vec<OsString> {
    vec![
        "--socket".into(),
        cfg.vsock_backend_socket().into(),
        "--uds-path".into(),
        cfg.vsock_uds_path().into(),
        "--guest-cid".into(),
        cfg.vsock.guest_cid.to_string().into(),
    ]
}

/// Starts husk-vsockd and waits for its vhost-user socket.
pub fn start_vsock(program: &Path, cfg: &VmConfig) -> Result<Supervised, DaemonError> {
    remove_socket(&cfg.vsock_backend_socket());
    remove_vsock_sockets(&cfg.vsock_uds_path());
    let mut cmd = Command::new(program);
    cmd.args(vsock_args(cfg));
    Confinement::vsock()?.install(&mut cmd);
    let mut child = Supervised::spawn(PROGRAM, cmd, &cfg.state_dir.join("husk-vsockd.log"))?;
    child.record_in(&cfg.state_dir);
    wait_for_socket(&mut child, &cfg.vsock_backend_socket(), SOCKET_TIMEOUT)?;
    Ok(child)
}
