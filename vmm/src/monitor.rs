//! The plain monitor loop (no container): start the VM, report readiness
//! once the agent listens, then wait for the guest to stop, a child to die
//! or a stop signal.
//!
//! Readiness waits for the agent's console line, so the caller's first
//! `CONNECT` reaches a guest whose vsock driver is running.
//! vhost-device-vsock 0.3.0 loses its vring worker thread for good when a
//! host connection arrives after the memory table but before the guest set
//! up the queues (`process_tx` fails on the not-ready queue, and that error
//! ends the worker's epoll loop), so connecting while the guest boots can
//! leave the VM without an agent connection. The container path
//! (`supervise.rs`) waits for the same line. The console relay
//! (`crate::console`) sees the line go by and signals an eventfd this loop
//! polls; the console log is never read back.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use husk_vmm_contract::config::VmConfig;
use husk_vmm_contract::{BootStage, ReadyReport};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::signals::{is_stop_signal, pause_request, Signals};
use crate::vm::{Vm, VmError, AGENT_READY_LINE};

/// When the monitor started and the boot stages done since, for the ready
/// report ([`boot_stage`]).
static BOOT: std::sync::Mutex<Vec<BootStage>> = std::sync::Mutex::new(Vec::new());
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Starts the boot clock; main calls it first.
pub fn boot_clock_start() {
    STARTED.get_or_init(Instant::now);
}

/// Milliseconds since `t`, as the monitor's debug timings log them.
pub fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Records that boot stage `stage` is done now (logged at debug, and sent
/// in the ready report).
pub fn boot_stage(stage: &str) {
    let ms = elapsed_ms(*STARTED.get_or_init(Instant::now));
    tracing::debug!(ms, "boot: {stage}");
    if let Ok(mut b) = BOOT.lock() {
        b.push(BootStage {
            stage: stage.to_owned(),
            ms,
        });
    }
}

/// The exit status for a monitor failure (bad config, a daemon or the engine
/// failing, no agent).
pub const EXIT_FAILURE: i32 = 1;

/// The inherited fd the monitor reports readiness on: one
/// [`ReadyReport`] line, then closed. A no-op when none was given.
#[derive(Debug, Default)]
pub struct ReadyFd(Option<File>);

impl ReadyFd {
    /// Takes ownership of inherited fd `fd` and marks it close-on-exec so no
    /// child inherits it. Fails if `fd` is not open or is 0..=2.
    pub fn from_inherited(fd: i32) -> std::io::Result<Self> {
        if fd <= 2 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "ready fd must be 3 or more",
            ));
        }
        // SAFETY: F_GETFD only inspects the fd table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is open (checked above) and was inherited for us to
        // report on; main calls this once, so nothing else owns it.
        let f = unsafe { File::from_raw_fd(fd) };
        // SAFETY: F_SETFD on an fd we own.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(ReadyFd(Some(f)))
    }

    /// Whether anybody reads the report.
    pub fn is_wanted(&self) -> bool {
        self.0.is_some()
    }

    /// Reports success (with the container's guest pid in container mode).
    pub fn ok(&mut self, pid: Option<i32>) {
        // One monitor boots one VM: the stages are this process's.
        let boot = BOOT
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        self.send(ReadyReport::Ready {
            pid: pid.map(i64::from),
            boot,
        });
    }

    /// Reports failure.
    pub fn fail(&mut self, error: &str) {
        self.send(ReadyReport::Failed {
            error: error.to_owned(),
        });
    }

    fn send(&mut self, report: ReadyReport) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(report.to_line().as_bytes());
        }
    }
}

pub use husk_protocol::error_chain;

/// Runs a VM without a container until the guest stops (exit 0), a child
/// fails (1) or a stop signal arrives (128 + signal). A VM that cannot
/// start is an error (also reported on the ready fd).
pub fn run_plain(
    cfg: &VmConfig,
    signals: &mut Signals,
    mut ready: ReadyFd,
) -> Result<i32, VmError> {
    let mut vm = Vm::start(cfg).inspect_err(|e| ready.fail(&error_chain(e)))?;
    // Every child runs: from here on no capabilities, no new processes.
    crate::confine::main_thread(&vm)
        .map_err(VmError::from)
        .inspect_err(|e| ready.fail(&error_chain(e)))?;
    let boot_timeout = Duration::from_secs(cfg.boot_timeout_s);
    let deadline = Instant::now() + boot_timeout;
    // Without a reader nobody waits, and a guest without an agent (a
    // kernel under test) must not be stopped for it.
    let mut announced = !ready.is_wanted();
    loop {
        while let Some(sig) = signals.next_signal() {
            if let Some(paused) = pause_request(sig) {
                vm.set_paused(paused);
            } else if is_stop_signal(sig) {
                tracing::info!("{sig}: stopping the VM");
                ready.fail(&format!("interrupted by {sig}"));
                vm.shutdown();
                return Ok(128 + sig as i32);
            }
        }
        if let Some(exit) = vm.try_wait() {
            ready.fail(&format!("the VM stopped before the agent listened: {exit}"));
            vm.shutdown();
            if exit.is_clean() {
                tracing::info!("{exit}");
                return Ok(0);
            }
            tracing::error!("{exit}");
            return Ok(EXIT_FAILURE);
        }
        if !announced {
            if vm.agent_announced() {
                announced = true;
                boot_stage("agent listening");
                tracing::info!("the agent listens");
                ready.ok(None);
            } else if Instant::now() >= deadline {
                let msg = format!("no {AGENT_READY_LINE:?} on the console within {boot_timeout:?}");
                tracing::error!("{msg}");
                ready.fail(&msg);
                vm.shutdown();
                return Ok(EXIT_FAILURE);
            }
        }
        let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
        fds.extend(
            vm.exit_fds()
                .into_iter()
                .map(|f| PollFd::new(f, PollFlags::POLLIN)),
        );
        // Until the agent listens: its ready line (the console relay's
        // eventfd) or the boot deadline.
        let timeout = if announced {
            PollTimeout::NONE
        } else {
            fds.extend(
                vm.agent_ready_fd()
                    .map(|f| PollFd::new(f, PollFlags::POLLIN)),
            );
            let left = deadline.saturating_duration_since(Instant::now());
            PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                .unwrap_or(PollTimeout::NONE)
        };
        let _ = poll(&mut fds, timeout);
    }
}
