//! [`Vm::start`]: daemons, then the engine; [`VmHandle`]: watching and
//! stopping what was started, on every path (including drop).

use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_protocol::client::AgentAddr;
use husk_vmm_contract::config::{ConfigError, VmConfig};
use husk_vmm_contract::journal::VmState;

use crate::console::ConsoleRelay;
use crate::daemons::{self, remove_socket, remove_vsock_sockets, DaemonError};
use crate::engine::{self, EngineError, EngineInstance, EngineKind, HostFacts};
use crate::monitor::elapsed_ms;
use crate::process::{describe, Supervised};

/// The VM could not be started or failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A device daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The monitor could not confine itself after starting the VM.
    #[error("cannot confine the monitor")]
    Confine(#[from] crate::confine::ConfineError),
}

/// How long a daemon's exit may precede the engine's for the pair to count
/// as one clean guest stop.
const DAEMON_EXIT_GRACE: Duration = Duration::from_secs(1);

/// Namespace for [`Vm::start`].
#[derive(Debug)]
pub struct Vm;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted or powered off (the agent's `Shutdown`).
    GuestStopped,
    /// The engine failed.
    EngineFailed(String),
    /// A device daemon exited while the guest ran.
    DaemonExited(String),
}

impl VmExit {
    /// True for a clean guest stop.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::GuestStopped)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestStopped => f.write_str("the guest stopped"),
            VmExit::EngineFailed(m) => write!(f, "engine failed: {m}"),
            VmExit::DaemonExited(m) => write!(f, "device daemon died: {m}"),
        }
    }
}

/// What the agent prints on the console once it listens.
pub const AGENT_READY_LINE: &str = "husk-agent listening";

/// A running VM: its daemons and engine. Dropping it stops everything and
/// removes the sockets.
#[derive(Debug)]
pub struct VmHandle {
    daemons: Vec<Supervised>,
    engine: Option<Box<dyn EngineInstance>>,
    sockets: Vec<PathBuf>,
    vsock_uds: PathBuf,
    agent_addr: AgentAddr,
    console: Option<ConsoleRelay>,
    kind: EngineKind,
    exit: Option<VmExit>,
    /// Says whether the vCPUs run (`husk pause`).
    vm_state: Option<husk_vmm_contract::journal::VmStateFile>,
}

impl Vm {
    /// Validates `cfg`, starts the device daemons, waits for their sockets,
    /// then the console relay (`crate::console`, the one thread it starts,
    /// after the daemons) and the engine. Everything started is stopped
    /// again if a later step fails. The children get PR_SET_PDEATHSIG, which
    /// fires when the *calling* thread exits: call it from a thread that
    /// lives as long as the VM.
    pub fn start(cfg: &VmConfig) -> Result<VmHandle, VmError> {
        cfg.validate()?;
        let host = HostFacts::probe();
        let (kind, why) = engine::select(cfg.engine, host);
        // An operator's explicit choice needs no explaining; auto's does,
        // loudly when it falls back to emulation.
        if kind == EngineKind::Qemu && host.qemu_accel() == engine::Accel::Tcg {
            tracing::warn!("{why}");
        } else if cfg.engine == husk_vmm_contract::config::EngineChoice::Auto {
            tracing::info!("{why}");
        } else {
            tracing::debug!("{why}");
        }
        if kind == EngineKind::Builtin {
            husk_kvm::boot::check_kernel(&cfg.kernel)
                .map_err(|e| EngineError::Builtin(e.into()))?;
        }
        // Resolve every program before starting anything.
        let vsock_bin = crate::binaries::locate_own(
            crate::daemons::VSOCK_PROGRAM,
            cfg.binaries.vhost_device_vsock.as_deref(),
        )
        .map_err(DaemonError::from)?;
        let fs_bin = if cfg.shares.is_empty() {
            None
        } else {
            Some(
                crate::binaries::locate_own("virtiofsd", cfg.binaries.virtiofsd.as_deref())
                    .map_err(DaemonError::from)?,
            )
        };
        if kind == EngineKind::Qemu {
            crate::binaries::locate("qemu-system-x86_64", cfg.binaries.qemu.as_deref())
                .map_err(EngineError::from)?;
        }
        // Made by main (or the runtime) already; if it is gone, the
        // container was deleted while this monitor started.
        cfg.require_state_dir()?;
        cfg.claim_net_fds()?;

        let mut h = VmHandle {
            daemons: Vec::new(),
            engine: None,
            sockets: vec![cfg.vsock_backend_socket()],
            vsock_uds: cfg.vsock_uds_path(),
            agent_addr: AgentAddr::HybridVsock {
                uds: cfg.vsock_uds_path(),
                port: cfg.vsock.agent_port,
            },
            console: None,
            kind,
            exit: None,
            vm_state: husk_vmm_contract::journal::VmStateFile::create(&cfg.state_dir)
                .inspect_err(|e| tracing::warn!("cannot create the vm-state file: {e}"))
                .ok(),
        };
        let started = Instant::now();
        h.daemons.push(daemons::start_vsock(&vsock_bin, cfg)?);
        for share in &cfg.shares {
            h.sockets.push(cfg.fs_backend_socket(&share.tag));
            h.daemons.push(daemons::start_virtiofsd(
                fs_bin.as_deref().unwrap_or(&vsock_bin),
                cfg,
                share,
            )?);
        }
        tracing::debug!(elapsed = ?started.elapsed(), "device daemons ready");
        crate::monitor::boot_stage("device daemons ready");
        let (relay, console_pipe) = ConsoleRelay::start(&cfg.console_log_path(), &cfg.console)
            .map_err(EngineError::from)?;
        h.console = Some(relay);
        h.engine = Some(engine::start(kind, cfg, console_pipe)?);
        tracing::info!(engine = ?kind, pid = ?h.engine_pid(), "guest started");
        crate::monitor::boot_stage("engine started");
        Ok(h)
    }
}

impl VmHandle {
    /// Whether the agent has said on the serial console that it listens
    /// (the console relay saw [`AGENT_READY_LINE`] go by; the log is never
    /// read back). Connecting to the hybrid vsock socket before the guest's
    /// vsock device is up leaves vhost-device-vsock 0.3.0 with connections
    /// it never answers, so the monitor waits for this line first.
    pub fn agent_announced(&self) -> bool {
        self.console.as_ref().is_some_and(ConsoleRelay::announced)
    }

    /// Becomes readable once [`VmHandle::agent_announced`] is true, for a
    /// caller's poll loop.
    pub fn agent_ready_fd(&self) -> Option<BorrowedFd<'_>> {
        self.console.as_ref().map(ConsoleRelay::ready_fd)
    }

    /// Where the agent answers.
    pub fn agent_addr(&self) -> AgentAddr {
        self.agent_addr.clone()
    }

    /// The engine running the guest.
    pub fn engine_kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's pid (qemu), if it is a separate process.
    pub fn engine_pid(&self) -> Option<u32> {
        self.engine.as_ref().and_then(|e| e.pid())
    }

    /// The pids of the device daemons.
    pub fn daemon_pids(&self) -> Vec<u32> {
        self.daemons.iter().map(Supervised::pid).collect()
    }

    /// Fds that become readable when the engine or a daemon stops, for a
    /// caller's own poll loop; then call [`VmHandle::try_wait`].
    pub fn exit_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v: Vec<BorrowedFd<'_>> = self.daemons.iter().map(Supervised::exit_fd).collect();
        v.extend(self.engine.as_ref().map(|e| e.exit_fd()));
        v
    }

    /// `Some` once the guest stopped or anything failed; does not block.
    pub fn try_wait(&mut self) -> Option<VmExit> {
        if self.exit.is_some() {
            return self.exit.clone();
        }
        if let Some(e) = self.engine.as_mut() {
            match e.try_wait() {
                Some(Ok(())) => self.exit = Some(VmExit::GuestStopped),
                Some(Err(m)) => self.exit = Some(VmExit::EngineFailed(m)),
                None => {}
            }
        }
        if self.exit.is_none() {
            for d in &mut self.daemons {
                if let Some(s) = d.try_wait() {
                    // A daemon exits when the engine disconnects: when the
                    // guest stopped, the engine's exit is about to show.
                    if let Some(e) = self.engine.as_mut() {
                        if e.wait_timeout(DAEMON_EXIT_GRACE) {
                            return self.try_wait();
                        }
                    }
                    let msg = format!("{} exited with {}: {}", d.name(), describe(s), d.log_tail());
                    self.exit = Some(VmExit::DaemonExited(msg));
                    break;
                }
            }
        }
        self.exit.clone()
    }

    /// Waits up to `timeout` (forever with `None`) for the guest to stop or
    /// anything to fail.
    pub fn wait_timeout(&mut self, timeout: Option<Duration>) -> Option<VmExit> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.try_wait() {
                return Some(e);
            }
            let ms: i32 = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
            };
            let fds = self.exit_fds();
            let mut pfds: Vec<_> = fds
                .iter()
                .map(|f| nix::poll::PollFd::new(*f, nix::poll::PollFlags::POLLIN))
                .collect();
            let t = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::NONE);
            let _ = nix::poll::poll(&mut pfds, t);
        }
    }

    /// Waits for the guest to stop or anything to fail.
    pub fn wait(&mut self) -> VmExit {
        self.wait_timeout(None).unwrap_or(VmExit::GuestStopped)
    }

    /// Parks the guest's vCPUs (`husk pause`) or runs them again, then
    /// records which in the state directory's `vm-state`.
    pub fn set_paused(&mut self, paused: bool) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        match engine.set_paused(paused) {
            Ok(()) => {
                tracing::info!(
                    paused,
                    "vCPUs {}",
                    if paused { "parked" } else { "running" }
                );
                self.record(if paused {
                    VmState::Paused
                } else {
                    VmState::Running
                });
            }
            Err(e) => tracing::error!(paused, "cannot change the vCPUs' state: {e}"),
        }
    }

    /// Records in `vm-state` that the container's init exited (or the VM
    /// ended): `husk state` says `stopped` from now on, while the monitor
    /// still drains the output and stops the VM.
    pub fn record_stopped(&mut self) {
        self.record(VmState::Stopped);
    }

    fn record(&mut self, state: VmState) {
        if let Some(f) = self.vm_state.as_mut() {
            if let Err(e) = f.set(state) {
                tracing::warn!("cannot record the vm state: {e}");
            }
        }
    }

    /// Stops the engine's vCPUs, tells the daemons to stop, tears the
    /// engine down, then reaps the daemons and removes the sockets.
    /// Idempotent.
    pub fn shutdown(&mut self) {
        if let Some(mut e) = self.engine.take() {
            let t = Instant::now();
            e.stop(Duration::from_secs(2));
            tracing::debug!(ms = elapsed_ms(t), "engine stopped");
            // With the vCPUs stopped nothing needs the daemons: told now,
            // they exit while the engine is torn down (the VM destroyed,
            // the guest's memory unmapped: most of the exit path under
            // nested emulation) instead of after it, on another core where
            // there is one, and husk-vsockd does not first reset itself for
            // a next frontend when the engine's vhost-user connections close.
            for d in &mut self.daemons {
                d.terminate();
            }
            let t = Instant::now();
            drop(e);
            tracing::debug!(ms = elapsed_ms(t), "engine torn down");
        }
        // The engine is gone: log what it wrote last, end the relay.
        if let Some(mut c) = self.console.take() {
            c.stop();
        }
        for mut d in self.daemons.drain(..) {
            let t = Instant::now();
            d.stop(Duration::from_millis(500));
            tracing::debug!(daemon = d.name(), ms = elapsed_ms(t), "daemon stopped");
        }
        for s in &self.sockets {
            remove_socket(s);
            // virtiofsd's pid file next to its socket.
            let mut pid = s.clone().into_os_string();
            pid.push(".pid");
            let _ = std::fs::remove_file(pid);
        }
        remove_vsock_sockets(&self.vsock_uds);
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
