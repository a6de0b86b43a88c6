//! Building the VM: a [`Machine`] (the KVM VM, guest RAM, the port-I/O and
//! MMIO buses with their devices, the configured vCPUs) made as a straight
//! recipe, either by hand (tests) or from a [`VmConfig`] by [`build`]:
//! guest RAM, the virtio devices, the kernel and its command line, the MP
//! table, COM1, the i8042 and the vCPUs. Nothing runs until
//! [`crate::Vmm::run`] starts the vCPU threads.

use std::io::Write;
use std::sync::{Arc, Mutex};

use husk_vmm_contract::config::VmConfig;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, BootError, BootSpec};
use crate::bus::{Bus, BusError, SharedDevice};
use crate::confine::ThreadHook;
use crate::cpu::{self, CpuError, CpuTopology, Entry};
use crate::i8042::{ResetTrigger, I8042, I8042_BASE, I8042_LEN};
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::memory::{create_guest_memory, MemoryError, VIRTIO_MMIO_SIZE};
use crate::serial::{SerialDevice, COM1_BASE, COM1_GSI, COM1_LEN};

/// The VMM could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
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
    /// The configuration does not fit this VMM.
    #[error("{0}")]
    Invalid(String),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Device(#[from] crate::virtio::DeviceError),
    /// The MP table (how the guest finds its vCPUs) could not be written.
    #[error("cannot write the MP table")]
    MpTable(#[source] vm_memory::GuestMemoryError),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Io { what, source }
}

/// Which devices [`build`] gives the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Devices {
    /// The config's: vsock and the shares on their daemons' sockets, and
    /// the taps.
    FromConfig,
    /// Only the serial console (boot tests and benchmarks, no daemons).
    ConsoleOnly,
}

/// What the embedding process decides for [`build`], beyond the config.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Which devices the guest gets.
    pub devices: Devices,
    /// The kernel command line (husk-vmm's `engine::kernel_cmdline`); the
    /// builder appends `reboot=k` and, without hardware virtualization,
    /// `clearcpuid=`.
    pub cmdline: String,
    /// Whether the host has VT-x/AMD-V. Without it `/dev/kvm` is
    /// PVM-backed and the vCPUs hide what its emulator lacks (see
    /// [`CpuTopology::mask_for_emulation`]).
    pub hardware_virtualization: bool,
    /// Confines each vCPU thread and the net worker.
    pub confine: ThreadHook,
}

/// A virtio-mmio device as the transport hands it to the builder.
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

/// A VM ready to run: built by [`Machine::new`], given devices and an
/// entry point, then started with [`crate::Vmm::run`].
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
    pub(crate) vcpus: Vec<VcpuFd>,
    topo: CpuTopology,
    /// The i8042's reset line (non-blocking); the vCPU loop reads it.
    pub(crate) reset: EventFd,
    /// How the vCPU threads are confined.
    pub(crate) confine: ThreadHook,
    /// Eventfds registered with KVM, kept open for the VM's life.
    pub(crate) fds: Vec<EventFd>,
    mmio_devices: Vec<(u64, u32)>,
}

impl Machine {
    /// The VM, its `topo.count` vCPUs configured (CPUID, MSRs, FPU, LAPIC)
    /// and the i8042 reset line on the port bus. Its threads are not
    /// confined unless [`Machine::confine_threads`] says how.
    pub fn new(mem: GuestMemoryMmap, topo: CpuTopology) -> Result<Self, VmmError> {
        if topo.count == 0 {
            return Err(VmmError::Invalid("a VM needs at least one vCPU".into()));
        }
        let vm = KvmVm::new(&mem)?;
        let mut fds = Vec::with_capacity(usize::from(topo.count));
        for id in 0..topo.count {
            let fd = vm.create_vcpu(id)?;
            cpu::configure(vm.kvm(), &fd, id, topo)?;
            fds.push(fd);
        }
        let reset =
            EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create the reset eventfd"))?;
        let trigger = reset
            .try_clone()
            .map_err(io_err("cannot dup the reset eventfd"))?;
        let mut m = Machine {
            vm,
            mem,
            pio: Bus::new(),
            mmio: Bus::new(),
            vcpus: fds,
            topo,
            reset,
            confine: ThreadHook::none(),
            fds: Vec::new(),
            mmio_devices: Vec::new(),
        };
        let i8042 = I8042(vm_superio::I8042Device::new(ResetTrigger(trigger)));
        m.pio
            .insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_LEN)?;
        Ok(m)
    }

    /// Confines each vCPU thread with `hook` before it runs the guest.
    pub fn confine_threads(&mut self, hook: ThreadHook) {
        self.confine = hook;
    }

    /// A fresh eventfd registered as an irqfd on `gsi`: writing it raises
    /// the line.
    pub fn irqfd(&mut self, gsi: u32) -> Result<EventFd, VmmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(io_err("cannot create an irqfd"))?;
        self.vm.register_irqfd(&evt, gsi)?;
        let ours = evt.try_clone().map_err(io_err("cannot dup an irqfd"))?;
        self.fds.push(ours);
        Ok(evt)
    }

    /// COM1 with its output to `out`.
    pub fn add_serial(&mut self, out: Box<dyn Write + Send>) -> Result<(), VmmError> {
        let irq = self.irqfd(COM1_GSI)?;
        let serial = SerialDevice::new(irq, out);
        self.pio
            .insert(Arc::new(Mutex::new(serial)), COM1_BASE, COM1_LEN)?;
        Ok(())
    }

    /// A virtio-mmio transport: its registers on the MMIO bus, its kick
    /// eventfds as ioeventfds, its interrupt as an irqfd.
    pub fn add_mmio_device(&mut self, d: MmioDevice) -> Result<(), VmmError> {
        self.mmio.insert(d.device, d.base, VIRTIO_MMIO_SIZE)?;
        for (evt, queue) in d.ioevents {
            self.vm.register_mmio_ioevent(
                &evt,
                d.base + crate::virtio::mmio::reg::QUEUE_NOTIFY,
                queue,
            )?;
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
    pub fn set_entry(&self, entry: Entry) -> Result<(), VmmError> {
        let bsp = self
            .vcpus
            .first()
            .ok_or_else(|| VmmError::Invalid("no vCPU".into()))?;
        cpu::set_entry(bsp, &self.mem, entry)?;
        Ok(())
    }
}

/// Builds the VM for `cfg`: guest RAM, the virtio devices, the kernel with
/// `opts.cmdline`, the MP table, the vCPUs, COM1 writing to `console` and
/// the i8042. `console` is the console relay's pipe in husk-vmm, or any
/// file.
pub fn build(
    cfg: &VmConfig,
    opts: &BuildOptions,
    console: std::fs::File,
) -> Result<Machine, VmmError> {
    let vcpus = u8::try_from(cfg.vcpus)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| VmmError::Invalid(format!("{} vCPUs", cfg.vcpus)))?;
    let mem = create_guest_memory(u64::from(cfg.memory_mib) << 20)?;
    // reboot=k: reboot through the i8042 (no ACPI here), which ends the
    // VM like qemu's -no-reboot.
    let mut cmdline = format!("{} reboot=k", opts.cmdline);
    if !opts.hardware_virtualization {
        // PVM-backed KVM applies the host's CPUID for some leaves
        // whatever SET_CPUID2 says, so tell Linux as well (see
        // `CpuTopology::mask_for_emulation`).
        cmdline.push_str(" clearcpuid=");
        cmdline.push_str(cpu::EMULATION_CLEARCPUID);
    }
    let devices = match opts.devices {
        Devices::FromConfig => {
            crate::devices::place(crate::devices::from_config(cfg, &opts.confine)?, &mem)?
        }
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
    crate::mptable::write(&mem, vcpus).map_err(VmmError::MpTable)?;
    let topo = CpuTopology {
        count: vcpus,
        mask_for_emulation: !opts.hardware_virtualization,
    };
    let mut m = Machine::new(mem, topo)?;
    m.confine_threads(opts.confine.clone());
    m.add_serial(Box::new(console))?;
    for d in devices {
        m.add_mmio_device(d)?;
    }
    m.set_entry(entry)?;
    Ok(m)
}
