//! Child processes the monitor supervises (device daemons, qemu): spawned so
//! they die with the monitor, watched through a pidfd, stopped and reaped on
//! every exit path.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A supervised child could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be opened.
    #[error("cannot open log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// fork/exec failed.
    #[error("cannot start {name} ({program})")]
    Spawn {
        /// What the child is.
        name: String,
        /// The program.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// pidfd_open failed.
    #[error("cannot watch {name} (pidfd_open)")]
    Pidfd {
        /// What the child is.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One running child.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    child: Child,
    pidfd: OwnedFd,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// Describes an exit status the way a log line wants it.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => format!("{status}"),
    }
}

impl Supervised {
    /// Spawns `cmd` with stdin on /dev/null and stdout/stderr appended to
    /// `log`, in its own process group (a terminal's ^C reaches the monitor,
    /// which decides), killed by the kernel if the monitor dies.
    ///
    /// Call this only from the thread that stays alive as long as the child
    /// should (PR_SET_PDEATHSIG fires when the spawning *thread* exits), and
    /// before the process starts other threads.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, ProcessError> {
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| ProcessError::Log {
                    path: log.to_owned(),
                    source,
                })
        };
        let out = open_log()?;
        let err = open_log()?;
        let parent = std::process::id();
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
        // getppid, _exit) and touches no locks or allocations.
        unsafe {
            cmd.pre_exec(move || die_with_parent(parent));
        }
        let program = PathBuf::from(cmd.get_program());
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program,
            source,
        })?;
        let mut child = child;
        let pidfd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcessError::Pidfd {
                    name: name.to_owned(),
                    source,
                });
            }
        };
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Supervised {
            name: name.to_owned(),
            child,
            pidfd,
            log: log.to_owned(),
            status: None,
        })
    }

    /// Records this child in `state_dir`'s list of what the monitor
    /// started ([`husk_vmm_contract::journal`]), for cleanup after a SIGKILLed monitor.
    pub fn record_in(&self, state_dir: &Path) {
        if let Err(e) = husk_vmm_contract::journal::record(state_dir, self.pid(), &self.name) {
            tracing::warn!(name = %self.name, error = %e, "cannot record the child in the state directory");
        }
    }

    /// What this child is.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Readable once the child has exited (a pidfd).
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Its exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = left.as_millis().min(u16::MAX as u128) as u16;
            let mut fds = [nix::poll::PollFd::new(
                self.pidfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, ms);
        }
    }

    /// Sends SIGTERM unless the child has exited; does not wait (see
    /// [`Self::stop`]), so several children can be told at once.
    pub fn terminate(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        // qemu runs as another uid: the confined monitor raises CAP_KILL
        // for the signal only.
        let _ = crate::privileges::with_kill_capability(|| {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        });
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_wait() {
            return s;
        }
        if !grace.is_zero() {
            self.terminate();
            if let Some(s) = self.wait_timeout(grace) {
                return s;
            }
        }
        let _ = crate::privileges::with_kill_capability(|| self.child.kill());
        let s = self
            .child
            .wait()
            .unwrap_or_else(|_| ExitStatus::from_raw(libc::SIGKILL));
        self.status = Some(s);
        s
    }

    /// The last line of the child's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        last_line(&self.log)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Runs in the forked child before exec: asks for SIGKILL when the monitor
/// dies. Async-signal-safe.
fn die_with_parent(parent: u32) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments has no memory effects.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // The monitor blocks the signals it handles; its children must not
    // inherit that mask.
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    // The monitor died between fork and prctl: nobody would kill us.
    if ppid as u32 != parent {
        // SAFETY: ends the forked child without running any destructors.
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The last non-empty line of a (log) file, at most 300 bytes of it.
pub fn last_line(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_stop_reap_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello; echo last words >&2; exec sleep 30"]);
        let mut c = Supervised::spawn("sleeper", cmd, &log).unwrap();
        assert!(c.try_wait().is_none());
        let t0 = std::time::Instant::now();
        while last_line(&log) != "last words" {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "child never wrote its log"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = c.pid();
        let s = c.stop(Duration::from_secs(2));
        assert_eq!(s.signal(), Some(libc::SIGTERM));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert_eq!(c.log_tail(), "last words");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        let mut c = Supervised::spawn("quick", cmd, &log).unwrap();
        let s = c.wait_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(describe(s), "exit code 3");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Supervised::spawn(
            "x",
            Command::new("/nonexistent/prog"),
            &dir.path().join("l"),
        )
        .unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
