//! Starting a `husk-vmm` monitor and waiting for its
//! [`ReadyReport`]: the one way `husk create` (a container's own VM) and
//! the shim (a pod's VM) launch it.
//!
//! The monitor is started in its own session, inside the host cgroup the
//! caller made (joined between fork and exec, so everything the monitor
//! starts is in it too), with the write end of a pipe as
//! [`READY_FD`] and the pod network's tap, if any, as [`TAP_FD`]. It
//! writes one JSON line there once the VM is up, or why it is not; the
//! contract (fds, report, config) is `husk-vmm-contract`'s.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use husk_vmm_contract::{ReadyReport, READY_FD, TAP_FD};
use nix::fcntl::OFlag;

use crate::host_cgroup::Joiner;

/// How much longer than the VM's boot timeout a launcher waits for the
/// ready report: the monitor also starts its daemons and, in container
/// mode, has the agent create the container.
pub const READY_GRACE: Duration = Duration::from_secs(30);

/// What [`launch_monitor`] starts; the callers' differences are here.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The `husk-vmm` binary.
    pub binary: &'a Path,
    /// Its `--config` file.
    pub config: &'a Path,
    /// Further arguments (the shim's `--ready-fd` and `--log-file`).
    pub args: Vec<OsString>,
    /// The monitor's stdin.
    pub stdin: Stdio,
    /// The monitor's stdout.
    pub stdout: Stdio,
    /// The monitor's stderr.
    pub stderr: Stdio,
    /// Whether its stdin (a pty slave) becomes its controlling terminal in
    /// its new session, so a resize reaches it as SIGWINCH.
    pub controlling_tty: bool,
    /// The tap device, handed over as [`TAP_FD`].
    pub tap: Option<&'a OwnedFd>,
    /// The host cgroup the monitor joins before it runs.
    pub cgroup: &'a Joiner,
    /// How long to wait for the report ([`ready_timeout`]).
    pub ready_timeout: Duration,
}

/// How long a launcher waits for the ready report of a monitor whose
/// config says `boot_timeout_s`: that plus [`READY_GRACE`].
pub fn ready_timeout(boot_timeout_s: u64) -> Duration {
    Duration::from_secs(boot_timeout_s) + READY_GRACE
}

/// A monitor that reported the VM up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launched {
    /// The monitor's pid (it runs in its own session; whoever reaps it is
    /// the caller's business).
    pub pid: i32,
    /// The pid it reported ([`ReadyReport::Ready`]): the container's init
    /// in the guest in container mode, unchecked.
    pub reported_pid: Option<i64>,
}

/// Why [`launch_monitor`] did not get a VM. From [`LaunchError::NoReport`]
/// on, the monitor was started: [`LaunchError::pid`] says which, and the
/// caller decides how to stop what is left of it.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The ready pipe or the tap's copy could not be made.
    #[error("{what}")]
    Fds {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The monitor could not be started (or could not join the cgroup).
    #[error("cannot run {} in the host cgroup {cgroup}", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cgroup's path.
        cgroup: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The monitor closed its ready fd (it exited) or the wait ran out
    /// before a report.
    #[error("no readiness report ({why})")]
    NoReport {
        /// The monitor.
        pid: i32,
        /// Why nothing came.
        why: NoReport,
    },
    /// The line on the ready fd is no [`ReadyReport`].
    #[error("bad readiness report {line:?}")]
    BadReport {
        /// The monitor.
        pid: i32,
        /// What it wrote.
        line: String,
    },
    /// The monitor reported that it failed.
    #[error("{error}")]
    Failed {
        /// The monitor.
        pid: i32,
        /// Its reason ([`ReadyReport::Failed`]).
        error: String,
    },
}

impl LaunchError {
    /// The monitor's pid, if it was started.
    pub fn pid(&self) -> Option<i32> {
        match self {
            LaunchError::Fds { .. } | LaunchError::Spawn { .. } => None,
            LaunchError::NoReport { pid, .. }
            | LaunchError::BadReport { pid, .. }
            | LaunchError::Failed { pid, .. } => Some(*pid),
        }
    }
}

/// Why no report came.
#[derive(Debug, thiserror::Error)]
pub enum NoReport {
    /// The ready fd was closed with nothing on it: the monitor is gone.
    #[error("monitor exited")]
    Exited,
    /// Nothing within the timeout.
    #[error("timed out")]
    TimedOut,
    /// Reading the pipe failed.
    #[error("{0}")]
    Read(io::Error),
}

/// Starts `husk-vmm` as `launch` says and waits for its ready report;
/// `started` gets its pid as soon as it runs (before the wait), for a
/// caller that records it.
pub fn launch_monitor(
    launch: Launch<'_>,
    started: impl FnOnce(i32),
) -> Result<Launched, LaunchError> {
    let fds = |what| {
        move |e: nix::errno::Errno| LaunchError::Fds {
            what,
            source: e.into(),
        }
    };
    // Close-on-exec: the child keeps only the copy dup2 makes at READY_FD.
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(fds("pipe"))?;
    // Above 10, so the dup2 onto READY_FD cannot clobber it.
    let tap = launch
        .tap
        .map(high_fd)
        .transpose()
        .map_err(|source| LaunchError::Fds {
            what: "dup the tap fd",
            source,
        })?;
    let tap_raw = tap.as_ref().map(AsRawFd::as_raw_fd);
    let wr_raw = wr.as_raw_fd();
    let cgroup_fds = launch.cgroup.fds();
    let set_ctty = launch.controlling_tty;
    let mut cmd = Command::new(launch.binary);
    cmd.arg("--config")
        .arg(launch.config)
        .args(&launch.args)
        .stdin(launch.stdin)
        .stdout(launch.stdout)
        .stderr(launch.stderr);
    // SAFETY: between fork and exec the closure only calls the
    // async-signal-safe write, dup2, fcntl, setsid and ioctl on fds open in
    // the child, and allocates nothing (`cgroup_fds` was collected before).
    unsafe {
        cmd.pre_exec(move || {
            // First: everything the monitor starts inherits the cgroup.
            Joiner::join(&cgroup_fds)?;
            if wr_raw == READY_FD {
                // Clear close-on-exec on the fd we keep.
                libc::fcntl(READY_FD, libc::F_SETFD, 0);
            } else if libc::dup2(wr_raw, READY_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // dup2 leaves the new fd inheritable.
            if let Some(t) = tap_raw {
                if libc::dup2(t, TAP_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::setsid();
            if set_ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        binary: launch.binary.to_owned(),
        cgroup: launch.cgroup.path().to_owned(),
        source,
    })?;
    // The monitor holds its copies now.
    drop(wr);
    drop(tap);
    let pid = child.id() as i32;
    // Nobody waits on the `Child`: the monitor runs in its own session;
    // the CLI exits and leaves it to init, the shim's reaper reaps it.
    drop(child);
    started(pid);
    let line =
        read_line(rd, launch.ready_timeout).map_err(|why| LaunchError::NoReport { pid, why })?;
    match ReadyReport::parse(&line) {
        Ok(ReadyReport::Ready {
            pid: reported_pid,
            boot,
        }) => {
            // `husk --debug` shows where the boot's time went.
            for s in &boot {
                tracing::debug!(monitor = pid, ms = s.ms, "boot: {}", s.stage);
            }
            Ok(Launched { pid, reported_pid })
        }
        Ok(ReadyReport::Failed { error }) => Err(LaunchError::Failed { pid, error }),
        Err(_) => Err(LaunchError::BadReport { pid, line }),
    }
}

/// Duplicates `fd` to a number >= 10 (close-on-exec), so a child's pre-exec
/// `dup2` onto a small fixed number cannot clobber it.
fn high_fd(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let r = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: `r` is a new fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Reads one line from `rd` within `timeout`.
fn read_line(rd: OwnedFd, timeout: Duration) -> Result<String, NoReport> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut left = timeout.as_millis() as u64;
    while left > 0 {
        let step = left.min(10_000) as u16;
        let mut fds = [PollFd::new(rd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(step)) {
            Ok(0) => left = left.saturating_sub(u64::from(step)),
            Ok(_) => {
                let mut line = String::new();
                BufReader::new(File::from(rd))
                    .read_line(&mut line)
                    .map_err(NoReport::Read)?;
                if line.is_empty() {
                    return Err(NoReport::Exited);
                }
                return Ok(line);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(NoReport::Read(e.into())),
        }
    }
    Err(NoReport::TimedOut)
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
