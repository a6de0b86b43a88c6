//! Container supervisor mode: the monitor is the container's host-side pid.
//! After boot it creates the container through the agent, forwards the
//! declared stdio between its own fds 0/1/2 and the container, forwards the
//! signals it gets to the container's init, and exits with init's status.
//!
//! Threads: one per forwarded stdio stream and one blocked in
//! `WaitProcess`, all started after every child process was spawned. The
//! main thread polls the signalfd, the children's pidfds and the waiter.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use husk_protocol::attach::{
    attach, resize_request, Attached, HostEnds, Sink, Source, Target, ThreadInit,
};
use husk_protocol::client::{AgentAddr, AgentClient, ClientError};
use husk_protocol::{Request, Response, SignalProcess};
use husk_vmm_contract::config::{ContainerConfig, VmConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::monitor::{error_chain, ReadyFd, EXIT_FAILURE};
use crate::signals::{is_stop_signal, pause_request, Signals};
use crate::vm::VmExit;
use crate::vm::{Vm, VmError, VmHandle};

/// How long the stdout/stderr pumps get to drain after init exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest gets to reboot after `Shutdown`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the monitor gave up before the container ran.
enum Abort {
    Failed(String),
    Signal(nix::sys::signal::Signal),
}

/// The monitor's own stdio, forwarded to the container's declared streams.
#[derive(Debug)]
pub struct HostStdio {
    /// Read and sent to the container's stdin.
    pub stdin: OwnedFd,
    /// Receives the container's stdout.
    pub stdout: OwnedFd,
    /// Receives the container's stderr.
    pub stderr: OwnedFd,
}

impl HostStdio {
    /// Duplicates this process's fds 0, 1 and 2.
    pub fn inherited() -> io::Result<Self> {
        Ok(HostStdio {
            stdin: io::stdin().as_fd().try_clone_to_owned()?,
            stdout: io::stdout().as_fd().try_clone_to_owned()?,
            stderr: io::stderr().as_fd().try_clone_to_owned()?,
        })
    }
}

/// What container supervision needs from a running VM; [`VmHandle`] is the
/// real one.
pub trait Guest {
    /// Where the agent answers.
    fn agent_addr(&self) -> AgentAddr;
    /// `Some` once the VM stopped or failed.
    fn try_wait(&mut self) -> Option<VmExit>;
    /// Waits up to `timeout` for the VM to stop.
    fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit>;
    /// Readable when the VM may have stopped.
    fn exit_fds(&self) -> Vec<BorrowedFd<'_>>;
    /// Stops everything.
    fn shutdown(&mut self);
    /// Whether the agent announced it listens (true when unknown).
    fn agent_announced(&self) -> bool {
        true
    }
    /// Parks or runs the vCPUs (`husk pause` / `resume`).
    fn set_paused(&mut self, _paused: bool) {}
    /// Records that the container's init exited or the VM ended.
    fn record_stopped(&mut self) {}
}

impl Guest for VmHandle {
    fn agent_addr(&self) -> AgentAddr {
        VmHandle::agent_addr(self)
    }
    fn try_wait(&mut self) -> Option<VmExit> {
        VmHandle::try_wait(self)
    }
    fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit> {
        VmHandle::wait_timeout(self, timeout)
    }
    fn exit_fds(&self) -> Vec<BorrowedFd<'_>> {
        VmHandle::exit_fds(self)
    }
    fn shutdown(&mut self) {
        VmHandle::shutdown(self)
    }
    fn agent_announced(&self) -> bool {
        VmHandle::agent_announced(self)
    }
    fn set_paused(&mut self, paused: bool) {
        VmHandle::set_paused(self, paused)
    }
    fn record_stopped(&mut self) {
        VmHandle::record_stopped(self)
    }
}

/// Runs `cfg` (which must carry a container) and returns the exit status.
/// A VM that cannot start is an error (also reported on the ready fd).
pub fn run_container(
    cfg: &VmConfig,
    signals: &mut Signals,
    mut ready: ReadyFd,
) -> Result<i32, VmError> {
    let Some(ccfg) = cfg.container.as_ref() else {
        ready.fail("no container section in the config");
        return Ok(EXIT_FAILURE);
    };
    let stdio = match HostStdio::inherited() {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&format!("cannot duplicate stdio: {e}"));
            return Ok(EXIT_FAILURE);
        }
    };
    let mut vm = Vm::start(cfg).inspect_err(|e| ready.fail(&error_chain(e)))?;
    // Every child runs: from here on no capabilities, no new processes.
    crate::confine::main_thread(&vm)
        .map_err(VmError::from)
        .inspect_err(|e| ready.fail(&error_chain(e)))?;
    let timeout = Duration::from_secs(cfg.boot_timeout_s);
    Ok(supervise_container(
        &mut vm, ccfg, timeout, signals, ready, stdio,
    ))
}

/// Creates the container in a started `guest`, reports readiness, forwards
/// stdio and signals, and returns the container's exit status once it
/// exited and the guest was shut down (or 1 / 128+signal on failure).
/// `guest` is shut down on every path.
pub fn supervise_container(
    guest: &mut dyn Guest,
    ccfg: &ContainerConfig,
    boot_timeout: Duration,
    signals: &mut Signals,
    mut ready: ReadyFd,
    stdio: HostStdio,
) -> i32 {
    let started = Instant::now();
    let setup = match setup(boot_timeout, ccfg, guest, signals, stdio) {
        Ok(s) => s,
        Err(abort) => {
            guest.shutdown();
            return match abort {
                Abort::Failed(msg) => {
                    tracing::error!("{msg}");
                    ready.fail(&msg);
                    EXIT_FAILURE
                }
                Abort::Signal(sig) => {
                    ready.fail(&format!("interrupted by {sig}"));
                    128 + sig as i32
                }
            };
        }
    };
    tracing::info!(pid = setup.pid, elapsed = ?started.elapsed(), "container created");
    crate::monitor::boot_stage("container created");
    ready.ok(Some(setup.pid));
    supervise(ccfg, guest, signals, setup)
}

struct Setup {
    pid: i32,
    control: Arc<Mutex<AgentClient>>,
    waiter: mpsc::Receiver<Result<i32, String>>,
    waiter_wake: UnixStream,
    pumps: Attached,
    /// The process has a terminal: SIGWINCH resizes it instead of being
    /// forwarded.
    terminal: bool,
    /// Where the window size is read (the monitor's stdin, a pty slave).
    tty: OwnedFd,
}

fn setup(
    boot_timeout: Duration,
    ccfg: &ContainerConfig,
    vm: &mut dyn Guest,
    signals: &mut Signals,
    host: HostStdio,
) -> Result<Setup, Abort> {
    let addr = vm.agent_addr();
    let deadline = Instant::now() + boot_timeout;
    let mut announced = false;
    let mut control = loop {
        if let Some(exit) = vm.try_wait() {
            return Err(Abort::Failed(format!(
                "the VM stopped before the agent answered: {exit}"
            )));
        }
        while let Some(sig) = signals.next_signal() {
            if let Some(paused) = pause_request(sig) {
                vm.set_paused(paused);
            } else if is_stop_signal(sig) {
                return Err(Abort::Signal(sig));
            }
        }
        // Connect once the agent said it listens; after half the boot
        // timeout try anyway (a console that is not a file, say).
        let half = boot_timeout / 2;
        if !announced {
            if vm.agent_announced() {
                announced = true;
                crate::monitor::boot_stage("agent listening");
            } else if Instant::now() + half < deadline {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        match AgentClient::connect(&addr, Duration::from_secs(2)) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(Abort::Failed(format!(
                    "the agent did not answer at {addr} within {boot_timeout:?}: {e}"
                )))
            }
            Err(e) => {
                tracing::debug!("the agent's first connection: {e}; again in 50 ms");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    crate::monitor::boot_stage("agent answered");
    let fail = |what: &str, e: ClientError| Abort::Failed(format!("{what}: {}", error_chain(&e)));
    let cid = ccfg.create.container_id.clone();
    if let Some(net) = &ccfg.network {
        match control.call(Request::ConfigureNetwork(net.clone())) {
            Ok(_) => tracing::info!(
                interfaces = net.interfaces.len(),
                "guest network configured"
            ),
            Err(e) => return Err(fail("cannot configure the guest network", e)),
        }
    }
    let pid = match control.call(Request::CreateContainer(Box::new(ccfg.create.clone()))) {
        Ok(Response::Process { pid }) => pid,
        Ok(other) => return Err(Abort::Failed(format!("CreateContainer answered {other:?}"))),
        Err(e) => return Err(fail("cannot create the container", e)),
    };
    let stdio = ccfg.create.stdio;
    let terminal = is_terminal(ccfg);
    let dup = |fd: &OwnedFd, what: &str| {
        fd.try_clone()
            .map(std::fs::File::from)
            .map_err(|e| Abort::Failed(format!("dup {what}: {e}")))
    };
    // The runtime made a terminal process's stdio the slave of a host pty
    // (raw) whose master went to --console-socket: input from fd 0,
    // output to fd 1, window size from fd 0.
    let ends = HostEnds {
        stdin: (terminal || stdio.stdin)
            .then(|| dup(&host.stdin, "stdin").map(Source::File))
            .transpose()?,
        stdout: (terminal || stdio.stdout)
            .then(|| dup(&host.stdout, "stdout").map(Sink::File))
            .transpose()?,
        stderr: (!terminal && stdio.stderr)
            .then(|| dup(&host.stderr, "stderr").map(Sink::File))
            .transpose()?,
        terminal,
    };
    let target = Target {
        container_id: &cid,
        exec_id: None,
    };
    if terminal {
        resize_tty(&mut control, target, &host.stdin);
    }
    let mut wait_client = AgentClient::connect(&addr, Duration::from_secs(5))
        .map_err(|e| fail("cannot open the wait connection", e))?;

    // Every child process exists now: threads from here on, each confined
    // as it starts.
    let init: ThreadInit = Arc::new(confine_pump);
    let pumps = attach(&addr, target, ends, Some(init.clone()))
        .map_err(|e| fail("cannot attach stdio", e))?;
    let control = Arc::new(Mutex::new(control));
    let (wtx, waiter) = mpsc::channel();
    let (waiter_wake, mut wake_tx) =
        UnixStream::pair().map_err(|e| Abort::Failed(format!("socketpair: {e}")))?;
    // Drained after every poll wake-up, whatever woke it: never block there.
    waiter_wake
        .set_nonblocking(true)
        .map_err(|e| Abort::Failed(format!("socketpair: {e}")))?;
    let wcid = cid.clone();
    thread::spawn(move || {
        let r = match init() {
            Ok(()) => wait_client.wait(&wcid, None).map_err(|e| error_chain(&e)),
            Err(e) => Err(e),
        };
        let _ = wtx.send(r);
        let _ = wake_tx.write_all(b"x");
    });
    let tty = host
        .stdin
        .try_clone()
        .map_err(|e| Abort::Failed(format!("dup stdin: {e}")))?;
    Ok(Setup {
        pid,
        control,
        waiter,
        waiter_wake,
        pumps,
        terminal,
        tty,
    })
}

/// Confines a pump or waiter thread as it starts; one that cannot be
/// confined does not run (its stream closes, the container sees EOF).
fn confine_pump() -> Result<(), String> {
    crate::confine::this_thread(crate::seccomp::ThreadKind::Pump).map_err(|e| {
        let msg = format!("stdio thread: {}", error_chain(&e));
        tracing::error!("{msg}");
        msg
    })
}

/// Whether the container's process has a terminal.
fn is_terminal(ccfg: &ContainerConfig) -> bool {
    ccfg.create
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false)
}

/// Copies the window size of `tty` to the container's pty.
fn resize_tty(control: &mut AgentClient, target: Target<'_>, tty: &OwnedFd) {
    let Some(req) = resize_request(target, tty) else {
        return;
    };
    if let Err(e) = control.call(req) {
        tracing::debug!("ResizeTty: {}", error_chain(&e));
    }
}

fn supervise(
    ccfg: &ContainerConfig,
    vm: &mut dyn Guest,
    signals: &mut Signals,
    mut setup: Setup,
) -> i32 {
    let cid = ccfg.create.container_id.clone();
    let mut wake_buf = [0u8; 8];
    let result: Result<i32, String> = loop {
        if let Ok(r) = setup.waiter.try_recv() {
            break r;
        }
        while let Some(sig) = signals.next_signal() {
            if let Some(paused) = pause_request(sig) {
                vm.set_paused(paused);
                continue;
            }
            if sig == nix::sys::signal::Signal::SIGWINCH && setup.terminal {
                // Our controlling terminal (the host pty) was resized.
                if let Ok(mut c) = setup.control.lock() {
                    let target = Target {
                        container_id: &cid,
                        exec_id: None,
                    };
                    resize_tty(&mut c, target, &setup.tty);
                }
                continue;
            }
            let req = Request::SignalProcess(SignalProcess {
                container_id: cid.clone(),
                exec_id: None,
                signal: sig as i32,
                all: false,
            });
            tracing::debug!("forwarding {sig}");
            if let Ok(mut c) = setup.control.lock() {
                if let Err(e) = c.call(req) {
                    tracing::warn!("cannot forward {sig}: {}", error_chain(&e));
                }
            }
        }
        if let Some(exit) = vm.try_wait() {
            // The waiter may have its answer already; prefer it.
            match setup.waiter.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break r,
                Err(_) => break Err(format!("{exit} while the container ran")),
            }
        }
        let mut fds = vec![
            PollFd::new(signals.fd(), PollFlags::POLLIN),
            PollFd::new(setup.waiter_wake.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            vm.exit_fds()
                .into_iter()
                .map(|f| PollFd::new(f, PollFlags::POLLIN)),
        );
        let _ = poll(&mut fds, PollTimeout::NONE);
        let _ = (&setup.waiter_wake).read(&mut wake_buf);
    };
    // Said before the drain and the VM's stop, which take seconds.
    vm.record_stopped();
    let exited = Instant::now();
    let ms = crate::monitor::elapsed_ms;
    let status = match result {
        Ok(s) => {
            tracing::info!(status = s, "container init exited");
            setup.pumps.drain(DRAIN_TIMEOUT);
            tracing::debug!(ms = ms(exited), "exit path: stdio drained");
            // The agent answers Shutdown once the guest's writes are on
            // the host (it syncs first): the VM is stopped right after,
            // not left to reboot, which takes seconds under emulation.
            // Without an answer the guest gets SHUTDOWN_TIMEOUT to stop.
            let answered = setup
                .control
                .lock()
                .map_err(|_| "the control connection's lock is poisoned".to_owned())
                .and_then(|mut c| c.call(Request::Shutdown).map_err(|e| error_chain(&e)));
            match answered {
                Ok(_) => tracing::debug!(
                    ms = ms(exited),
                    "exit path: agent synced and answered Shutdown"
                ),
                Err(e) => {
                    tracing::warn!("Shutdown: {e}; waiting for the guest to stop");
                    match vm.wait_timeout(Some(SHUTDOWN_TIMEOUT)) {
                        Some(exit) if exit.is_clean() => {}
                        Some(exit) => tracing::warn!("after the container exited: {exit}"),
                        None => tracing::warn!(
                            "the guest did not stop within {SHUTDOWN_TIMEOUT:?}; killing it"
                        ),
                    }
                }
            }
            if (0..=255).contains(&s) {
                s
            } else {
                255
            }
        }
        Err(msg) => {
            tracing::error!("{msg}");
            EXIT_FAILURE
        }
    };
    vm.shutdown();
    tracing::debug!(ms = ms(exited), "exit path: engine and daemons gone");
    status
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
