//! Running a short-lived helper program and collecting its exit status in
//! both of the processes this crate lives in.
//!
//! In the `husk` CLI that is plain `waitpid`. In the shim it is not:
//! containerd-shim's SIGCHLD handler reaps *every* child of the shim and
//! publishes the status on its exit monitor, so a `wait` of our own would
//! find nothing (ECHILD). The shim calls [`exits_come_from_the_shim_monitor`]
//! once at start, and [`output`] then subscribes to that monitor before
//! spawning, so the exit cannot be missed.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};

static SHIM_REAPS: AtomicBool = AtomicBool::new(false);

/// Called by the shim before it runs anything: from now on child exits are
/// read from containerd-shim's exit monitor.
pub fn exits_come_from_the_shim_monitor() {
    SHIM_REAPS.store(true, Ordering::SeqCst);
}

/// Runs `cmd` with stdin from /dev/null and returns its status and output,
/// like [`Command::output`], wherever this code runs.
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null());
    if !SHIM_REAPS.load(Ordering::SeqCst) {
        return cmd.output();
    }
    let exits = monitor_subscribe(Topic::Pid).map_err(std::io::Error::other)?;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stderr = child.stderr.take();
    // stderr on its own thread, so a full pipe on either side cannot stall.
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_end(&mut stdout)?;
    }
    let stderr = err.join().unwrap_or_default();
    let code = wait_pid(child.id() as i32, exits);
    Ok(Output {
        // A wait status: the exit code in the second byte (the monitor
        // reports a signal death as 128+N, which reads as that exit code).
        status: ExitStatus::from_raw((code & 0xff) << 8),
        stdout,
        stderr,
    })
}
