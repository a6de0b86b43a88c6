//! The builtin engine: a [`Machine`] (KVM VM, guest RAM, the port-I/O and
//! MMIO buses, configured vCPUs) built as a straight recipe, then one thread
//! per vCPU running `KVM_RUN` and dispatching exits to the buses.
//!
//! Threads: each vCPU thread trusts nothing the guest does; a device access
//! nobody claims, or with an odd width, is logged at debug and ignored. Only
//! KVM itself failing (internal error, failed entry, an exit we never asked
//! for) ends the engine with an error. The guest stopping (i8042 reset,
//! triple fault, a system event, `hlt` without an in-kernel LAPIC) ends it
//! cleanly. Either way the [`ExitState`]'s eventfd becomes readable.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_vmm_contract::config::VmConfig;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::boot::{self, BootError, BootSpec};
use super::bus::{Bus, BusError, SharedDevice};
use super::cpu::{self, CpuError, CpuTopology, Entry};
use super::i8042::{ResetTrigger, I8042, I8042_BASE, I8042_LEN};
use super::memory::{create_guest_memory, MemoryError, VIRTIO_MMIO_SIZE};
use super::serial::{SerialDevice, COM1_BASE, COM1_GSI, COM1_LEN};
use super::vm::{KvmVm, KvmVmError};
use crate::engine::{EngineInstance, HostFacts};

/// The builtin engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The KVM VM.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// A vCPU.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// Loading the kernel.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Placing a device.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A host resource.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The configuration does not fit this engine.
    #[error("{0}")]
    Invalid(String),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] super::virtio::DeviceError),
    /// The MP table (how the guest finds its vCPUs) could not be written.
    #[error("cannot write the MP table")]
    MpTable(#[source] vm_memory::GuestMemoryError),
}

/// Which devices [`BuiltinEngine::start`] gives the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    /// The config's: vsock and the shares on their daemons' sockets.
    FromConfig,
    /// Only the serial console (boot tests and benchmarks, no daemons).
    ConsoleOnly,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuiltinError {
    let what = what.into();
    move |source| BuiltinError::Io { what, source }
}

/// How the guest ended, shared by the vCPU threads, the reset device and
/// the engine's owner.
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

/// A virtio-mmio device as the transport hands it to the engine.
pub struct MmioDevice {
    /// The transport's registers.
    pub device: SharedDevice,
    /// Where its [`VIRTIO_MMIO_SIZE`] register window starts.
    pub base: u64,
    /// Each queue's kick eventfd and its index, registered as ioeventfds on
    /// `QueueNotify` (base + 0x50) with the index as datamatch.
    pub ioevents: Vec<(EventFd, u32)>,
    /// The device's interrupt eventfd, registered as an irqfd on `gsi`.
    pub irq: EventFd,
    /// The device's interrupt line.
    pub gsi: u32,
}

impl std::fmt::Debug for MmioDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioDevice")
            .field("base", &format_args!("{:#x}", self.base))
            .field("queues", &self.ioevents.len())
            .field("gsi", &self.gsi)
            .finish_non_exhaustive()
    }
}

/// virtio-mmio's `QueueNotify` register.
const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// A VM ready to run: built by [`Machine::new`], given devices and an
/// entry point, then started with [`BuiltinEngine::run`].
#[derive(Debug)]
pub struct Machine {
    /// The KVM VM.
    pub vm: KvmVm,
    /// Guest RAM (memfd-backed).
    pub mem: GuestMemoryMmap,
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    vcpus: Vec<VcpuFd>,
    topo: CpuTopology,
    exit: Arc<ExitState>,
    /// Eventfds registered with KVM, kept open for the VM's life.
    fds: Vec<EventFd>,
    mmio_devices: Vec<(u64, u32)>,
}

impl Machine {
    /// The VM, its `vcpus` vCPUs configured (CPUID, MSRs, FPU, LAPIC) and
    /// the i8042 reset line on the port bus.
    pub fn new(mem: GuestMemoryMmap, vcpus: u8) -> Result<Self, BuiltinError> {
        if vcpus == 0 {
            return Err(BuiltinError::Invalid("a VM needs at least one vCPU".into()));
        }
        let vm = KvmVm::new(&mem)?;
        let topo = CpuTopology {
            count: vcpus,
            mask_for_emulation: !HostFacts::probe().hardware_virtualization(),
        };
        let mut fds = Vec::with_capacity(usize::from(vcpus));
        for id in 0..vcpus {
            let fd = vm.create_vcpu(id)?;
            cpu::configure(vm.kvm(), &fd, id, topo)?;
            fds.push(fd);
        }
        let exit = ExitState::new().map_err(io_err("cannot create the exit eventfd"))?;
        let mut m = Machine {
            vm,
            mem,
            pio: Bus::new(),
            mmio: Bus::new(),
            vcpus: fds,
            topo,
            exit,
            fds: Vec::new(),
            mmio_devices: Vec::new(),
        };
        let i8042 = I8042(vm_superio::I8042Device::new(ResetTrigger(m.exit.clone())));
        m.pio
            .insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_LEN)?;
        Ok(m)
    }

    /// How the guest ends (the i8042 and the vCPUs report here).
    pub fn exit_state(&self) -> &Arc<ExitState> {
        &self.exit
    }

    /// A fresh eventfd registered as an irqfd on `gsi`: writing it raises
    /// the line.
    pub fn irqfd(&mut self, gsi: u32) -> Result<EventFd, BuiltinError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create an irqfd"))?;
        self.vm.register_irqfd(&evt, gsi)?;
        let ours = evt.try_clone().map_err(io_err("cannot dup an irqfd"))?;
        self.fds.push(ours);
        Ok(evt)
    }

    /// COM1 with its output to `out`.
    pub fn add_serial(&mut self, out: Box<dyn Write + Send>) -> Result<(), BuiltinError> {
        let irq = self.irqfd(COM1_GSI)?;
        let serial = SerialDevice::new(irq, out);
        self.pio
            .insert(Arc::new(Mutex::new(serial)), COM1_BASE, COM1_LEN)?;
        Ok(())
    }

    /// A virtio-mmio transport: its registers on the MMIO bus, its kick
    /// eventfds as ioeventfds, its interrupt as an irqfd.
    pub fn add_mmio_device(&mut self, d: MmioDevice) -> Result<(), BuiltinError> {
        self.mmio.insert(d.device, d.base, VIRTIO_MMIO_SIZE)?;
        for (evt, queue) in d.ioevents {
            self.vm
                .register_mmio_ioevent(&evt, d.base + VIRTIO_MMIO_QUEUE_NOTIFY, queue)?;
            self.fds.push(evt);
        }
        self.vm.register_irqfd(&d.irq, d.gsi)?;
        self.fds.push(d.irq);
        self.mmio_devices.push((d.base, d.gsi));
        Ok(())
    }

    /// The vCPUs' topology and CPUID policy.
    pub fn topology(&self) -> CpuTopology {
        self.topo
    }

    /// Each virtio-mmio device's (base, GSI), for the command line.
    pub fn mmio_devices(&self) -> &[(u64, u32)] {
        &self.mmio_devices
    }

    /// Where vCPU 0 starts.
    pub fn set_entry(&self, entry: Entry) -> Result<(), BuiltinError> {
        let bsp = self
            .vcpus
            .first()
            .ok_or_else(|| BuiltinError::Invalid("no vCPU".into()))?;
        cpu::set_entry(bsp, &self.mem, entry)?;
        Ok(())
    }
}

/// A running builtin-engine guest.
#[derive(Debug)]
pub struct BuiltinEngine {
    exit: Arc<ExitState>,
    threads: Vec<JoinHandle<()>>,
    /// Kept alive until the vCPU threads are joined: the VM fd, guest RAM
    /// (its mapping backs the memory slots) and the registered eventfds.
    _vm: KvmVm,
    _mem: GuestMemoryMmap,
    _fds: Vec<EventFd>,
}

impl BuiltinEngine {
    /// Builds the VM for `cfg` (guest RAM, COM1 writing to `console`, the
    /// i8042, the virtio devices, the kernel) and starts it. `console` is
    /// the console relay's pipe (`crate::console`) in the monitor, or any
    /// file.
    pub fn start(
        cfg: &VmConfig,
        devices: Devices,
        console: std::fs::File,
    ) -> Result<Self, BuiltinError> {
        let vcpus = u8::try_from(cfg.vcpus)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| BuiltinError::Invalid(format!("{} vCPUs", cfg.vcpus)))?;
        let mem = create_guest_memory(u64::from(cfg.memory_mib) << 20)?;
        // reboot=k: reboot through the i8042 (no ACPI here), which ends the
        // engine like qemu's -no-reboot.
        let mut cmdline = format!("{} reboot=k", crate::engine::qemu::kernel_cmdline(cfg));
        if !HostFacts::probe().hardware_virtualization() {
            // PVM-backed KVM applies the host's CPUID for some leaves
            // whatever SET_CPUID2 says, so tell Linux as well (see
            // `CpuTopology::mask_for_emulation`).
            cmdline.push_str(" clearcpuid=");
            cmdline.push_str(cpu::EMULATION_CLEARCPUID);
        }
        let devices = match devices {
            Devices::FromConfig => super::devices::place(super::devices::from_config(cfg)?, &mem)?,
            Devices::ConsoleOnly => Vec::new(),
        };
        let mmio: Vec<(u64, u32)> = devices.iter().map(|d| (d.base, d.gsi)).collect();
        // The kernel first: a bad kernel is reported as such on any host,
        // before /dev/kvm is touched.
        let entry = boot::load(
            &mem,
            &BootSpec {
                kernel: &cfg.kernel,
                initramfs: cfg.initramfs.as_deref(),
                cmdline: &cmdline,
                mmio_devices: &mmio,
            },
        )?;
        super::mptable::write(&mem, vcpus).map_err(BuiltinError::MpTable)?;
        let mut m = Machine::new(mem, vcpus)?;
        m.add_serial(Box::new(console))?;
        for d in devices {
            m.add_mmio_device(d)?;
        }
        m.set_entry(entry)?;
        Self::run(m)
    }

    /// Starts one thread per vCPU of `m`.
    pub fn run(m: Machine) -> Result<Self, BuiltinError> {
        install_kick_handler();
        let Machine {
            vm,
            mem,
            pio,
            mmio,
            vcpus,
            exit,
            fds,
            ..
        } = m;
        let mut engine = BuiltinEngine {
            exit: exit.clone(),
            threads: Vec::new(),
            _vm: vm,
            _mem: mem,
            _fds: fds,
        };
        for (id, fd) in vcpus.into_iter().enumerate() {
            let (pio, mmio, state) = (pio.clone(), mmio.clone(), exit.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(r) = vcpu_thread(fd, id, &pio, &mmio, &state) {
                        state.finish(r);
                    }
                });
            match spawned {
                Ok(h) => {
                    exit.threads
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(h.as_pthread_t());
                    engine.threads.push(h);
                }
                Err(e) => {
                    engine.stop_threads();
                    return Err(io_err("cannot start a vCPU thread")(e));
                }
            }
        }
        Ok(engine)
    }

    /// The exit state (tests wait on it).
    pub fn exit_state(&self) -> &Arc<ExitState> {
        &self.exit
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

impl Drop for BuiltinEngine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl EngineInstance for BuiltinEngine {
    fn name(&self) -> &str {
        "builtin"
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        self.exit.set_paused(paused)
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self.exit`, which outlives the
        // returned borrow (it lives as long as `self`).
        unsafe { BorrowedFd::borrow_raw(self.exit.evt.as_raw_fd()) }
    }

    fn try_wait(&mut self) -> Option<Result<(), String>> {
        self.exit.result()
    }

    fn wait_timeout(&mut self, timeout: Duration) -> bool {
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

    /// There is no clean way to ask a guest without ACPI to stop; the
    /// monitor asks the agent first, so this just stops the vCPUs.
    fn stop(&mut self, _grace: Duration) {
        self.exit.finish(Ok(()));
        self.stop_threads();
    }
}

/// What one exit asks of the vCPU loop.
enum Step {
    Continue,
    Stop(Result<(), String>),
    InternalError,
}

fn vcpu_thread(
    mut vcpu: VcpuFd,
    id: usize,
    pio: &Bus,
    mmio: &Bus,
    exit: &ExitState,
) -> Option<Result<(), String>> {
    // Confined before the guest runs a single instruction.
    if let Err(e) = crate::confine::this_thread(crate::seccomp::ThreadKind::Vcpu) {
        return Some(Err(format!(
            "vCPU {id}: {}",
            crate::monitor::error_chain(&e)
        )));
    }
    // The monitor blocks signals before it starts threads; the kick must
    // get through to this one.
    if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
        return Some(Err(format!(
            "vCPU {id}: cannot unblock the kick signal: {e}"
        )));
    }
    loop {
        exit.park_while_paused();
        if exit.stopping() {
            return None;
        }
        let step = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio.read(u64::from(port), data) {
                    tracing::debug!(port, width = data.len(), "unclaimed port read");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !pio.write(u64::from(port), data) {
                    tracing::debug!(port, width = data.len(), "unclaimed port write");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    tracing::debug!(addr, width = data.len(), "unclaimed MMIO read");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    tracing::debug!(addr, width = data.len(), "unclaimed MMIO write");
                }
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => {
                tracing::info!(vcpu = id, "guest halted");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::info!(vcpu = id, "guest shut down (triple fault or reset)");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                tracing::info!(vcpu = id, kind, "guest system event");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::InternalError) => Step::InternalError,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Stop(Err(format!(
                "vCPU {id}: KVM entry failed (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
            Ok(other) => Step::Stop(Err(format!("vCPU {id}: unexpected KVM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Stop(Err(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        };
        match step {
            Step::Continue => {}
            Step::Stop(r) => return Some(r),
            Step::InternalError => return Some(Err(internal_error(&mut vcpu, id))),
        }
    }
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR`: its suberror (1 = the
/// instruction emulator failed) and where the guest was.
fn internal_error(vcpu: &mut VcpuFd, id: usize) -> String {
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the union member KVM filled in.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let rip = vcpu
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|_| "?".into());
    format!(
        "vCPU {id}: KVM internal error, suberror {} (1 = instruction emulation failed) at rip {rip}, data {:x?}",
        internal.suberror,
        &internal.data[..n]
    )
}
