//! The vCPU threads and the running VMM ([`Vmm`]): one thread per vCPU
//! running `KVM_RUN` and handing each exit to `crate::exits`; the kick
//! signal that gets a thread out of `KVM_RUN`; parking the vCPUs for
//! `husk pause`; stopping and joining them. [`ExitState`] is what the
//! threads and the VMM's owner share: how the guest ended and an eventfd
//! that becomes readable when it has.
//!
//! Each vCPU thread is confined (the [`ThreadHook`] the machine was built
//! with) before the guest runs a single instruction.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_vmm_contract::config::VmConfig;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::{self, io_err, BuildOptions, Machine, VmmError};
use crate::bus::Bus;
use crate::confine::{ThreadHook, ThreadRole};
use crate::exits::{internal_error, ExitContext, Step};
use crate::kvm_vm::KvmVm;

/// How the guest ended, shared by the vCPU threads and the VMM's owner.
#[derive(Debug)]
pub struct ExitState {
    result: Mutex<Option<Result<(), String>>>,
    stopping: AtomicBool,
    evt: EventFd,
    /// The vCPU threads to kick out of `KVM_RUN`; emptied (under this lock)
    /// before they are joined, so a kick never targets a joined thread.
    threads: Mutex<Vec<libc::pthread_t>>,
    /// `husk pause`: whether the vCPUs should be parked, and how many are.
    pause: Mutex<Pause>,
    /// Signalled when `pause` changes or the guest stops.
    pause_cv: Condvar,
}

#[derive(Debug, Default)]
struct Pause {
    wanted: bool,
    parked: usize,
}

impl ExitState {
    /// A running guest.
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(ExitState {
            result: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
            threads: Mutex::new(Vec::new()),
            pause: Mutex::new(Pause::default()),
            pause_cv: Condvar::new(),
        }))
    }

    fn lock_pause(&self) -> std::sync::MutexGuard<'_, Pause> {
        self.pause.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes parked vCPUs after `stopping` was set.
    fn wake_parked(&self) {
        let _held = self.lock_pause();
        self.pause_cv.notify_all();
    }

    /// Called by a vCPU thread between two `KVM_RUN`s: blocks while the
    /// guest is paused (and not stopping).
    fn park_while_paused(&self) {
        let mut p = self.lock_pause();
        if !p.wanted || self.stopping() {
            return;
        }
        p.parked += 1;
        self.pause_cv.notify_all();
        while p.wanted && !self.stopping() {
            p = self.pause_cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
    }

    /// Parks every vCPU (kicking each out of `KVM_RUN` until all are
    /// parked) or lets them run again.
    fn set_paused(&self, paused: bool) -> Result<(), String> {
        let mut p = self.lock_pause();
        p.wanted = paused;
        self.pause_cv.notify_all();
        if !paused {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let threads = self
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if p.parked >= threads.len() || self.stopping() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} of {} vCPUs parked after 5 s",
                    p.parked,
                    threads.len()
                ));
            }
            for &t in &threads {
                kick(t);
            }
            p = self
                .pause_cv
                .wait_timeout(p, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Records how the guest ended (the first call wins), makes the exit
    /// eventfd readable and kicks the other vCPUs out of `KVM_RUN`.
    pub fn finish(&self, r: Result<(), String>) {
        {
            let mut res = self.result.lock().unwrap_or_else(|p| p.into_inner());
            if res.is_none() {
                *res = Some(r);
            }
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.wake_parked();
        let _ = self.evt.write(1);
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        for &t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|&&t| t != me)
        {
            kick(t);
        }
    }

    /// True once the guest ended or a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// How the guest ended, once it has.
    pub fn result(&self) -> Option<Result<(), String>> {
        self.result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Readable once the guest ended.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// The signal that interrupts `KVM_RUN`; its handler does nothing.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler) {
            tracing::error!(error = %e, "cannot install the vCPU kick signal handler");
        }
    });
}

fn kick(t: libc::pthread_t) {
    // SAFETY: `t` is a vCPU thread that has not been joined yet (see
    // `ExitState::threads`); the signal has a no-op handler installed.
    unsafe { libc::pthread_kill(t, kick_signal()) };
}

/// A running VM: its vCPU threads.
#[derive(Debug)]
pub struct Vmm {
    exit: Arc<ExitState>,
    threads: Vec<JoinHandle<()>>,
    /// Kept alive until the vCPU threads are joined: the VM fd, guest RAM
    /// (its mapping backs the memory slots) and the registered eventfds.
    _vm: KvmVm,
    _mem: GuestMemoryMmap,
    _fds: Vec<EventFd>,
}

impl Vmm {
    /// Builds the VM for `cfg` ([`builder::build`]) and starts it.
    pub fn start(
        cfg: &VmConfig,
        opts: &BuildOptions,
        console: std::fs::File,
    ) -> Result<Self, VmmError> {
        Self::run(builder::build(cfg, opts, console)?)
    }

    /// Starts one thread per vCPU of `m`.
    pub fn run(m: Machine) -> Result<Self, VmmError> {
        install_kick_handler();
        let exit = ExitState::new().map_err(io_err("cannot create the exit eventfd"))?;
        let Machine {
            vm,
            mem,
            pio,
            mmio,
            vcpus,
            reset,
            confine,
            fds,
            ..
        } = m;
        let reset = Arc::new(reset);
        let mut vmm = Vmm {
            exit: exit.clone(),
            threads: Vec::new(),
            _vm: vm,
            _mem: mem,
            _fds: fds,
        };
        for (id, fd) in vcpus.into_iter().enumerate() {
            let thread = VcpuThread {
                id,
                pio: pio.clone(),
                mmio: mmio.clone(),
                reset: reset.clone(),
                confine: confine.clone(),
                state: exit.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(r) = thread.run(fd) {
                        thread.state.finish(r);
                    }
                });
            match spawned {
                Ok(h) => {
                    exit.threads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(h.as_pthread_t());
                    vmm.threads.push(h);
                }
                Err(e) => {
                    vmm.stop_threads();
                    return Err(io_err("cannot start a vCPU thread")(e));
                }
            }
        }
        Ok(vmm)
    }

    /// The exit state (tests wait on it).
    pub fn exit_state(&self) -> &Arc<ExitState> {
        &self.exit
    }

    /// Parks the vCPUs (`true`) or runs them again; returns once they are
    /// parked, or why they could not be.
    pub fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        self.exit.set_paused(paused)
    }

    /// Readable once the guest has stopped.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self.exit`, which outlives the
        // returned borrow (it lives as long as `self`).
        unsafe { BorrowedFd::borrow_raw(self.exit.evt.as_raw_fd()) }
    }

    /// `Some` once the guest has stopped: `Ok` for a guest reset or
    /// shutdown, `Err(description)` for a KVM failure.
    pub fn try_wait(&self) -> Option<Result<(), String>> {
        self.exit.result()
    }

    /// Waits up to `timeout` for the guest to stop; true once it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exit.result().is_some() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let mut pfd = [nix::poll::PollFd::new(
                self.exit_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let t = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
            let _ = nix::poll::poll(&mut pfd, t);
        }
    }

    /// Stops the guest now: there is no clean way to ask a guest without
    /// ACPI to stop (husk-vmm asks the agent first), so this stops the
    /// vCPUs and joins their threads.
    pub fn stop(&mut self) {
        self.exit.finish(Ok(()));
        self.stop_threads();
    }

    /// Kicks every vCPU out of `KVM_RUN` until it returns, then joins them.
    fn stop_threads(&mut self) {
        self.exit.stopping.store(true, Ordering::SeqCst);
        self.exit.wake_parked();
        // No kicks from `ExitState::finish` after this point.
        self.exit
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.threads.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            for h in self.threads.iter().filter(|h| !h.is_finished()) {
                kick(h.as_pthread_t());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// One vCPU thread's share of the VM.
struct VcpuThread {
    id: usize,
    pio: Bus,
    mmio: Bus,
    reset: Arc<EventFd>,
    confine: ThreadHook,
    state: Arc<ExitState>,
}

impl VcpuThread {
    /// The run loop: `None` when asked to stop, else how the guest ended.
    fn run(&self, mut vcpu: VcpuFd) -> Option<Result<(), String>> {
        let id = self.id;
        // Confined before the guest runs a single instruction.
        if let Err(e) = self.confine.enter(ThreadRole::Vcpu) {
            return Some(Err(format!("vCPU {id}: {e}")));
        }
        // The monitor blocks signals before it starts threads; the kick
        // must get through to this one.
        if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
            return Some(Err(format!(
                "vCPU {id}: cannot unblock the kick signal: {e}"
            )));
        }
        let exits = ExitContext {
            id,
            pio: &self.pio,
            mmio: &self.mmio,
            reset: &self.reset,
        };
        loop {
            self.state.park_while_paused();
            if self.state.stopping() {
                return None;
            }
            match exits.handle(vcpu.run()) {
                Step::Continue => {}
                Step::Stop(r) => return Some(r),
                Step::InternalError => return Some(Err(internal_error(&mut vcpu, id))),
            }
        }
    }
}
