//! The KVM VM: `/dev/kvm`, the VM fd, guest RAM as memory slots, the
//! in-kernel interrupt controllers (PIC, IOAPIC, per-vCPU LAPIC) and PIT,
//! and the irqfd/ioeventfd registrations devices use to bypass the vCPUs.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// The three pages KVM needs for its real-mode TSS on Intel, placed just
/// below the 4 GiB boundary, inside the MMIO gap and outside any device.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page table page (Intel, unrestricted guests off),
/// the page right below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// A KVM call failed while building or wiring the VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmVmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// A VM-level ioctl failed.
    #[error("KVM {what} failed")]
    Ioctl {
        /// The ioctl, in words.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A guest RAM region does not fit a memory slot.
    #[error("guest RAM region at {0:#x} does not fit a KVM memory slot")]
    Region(u64),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmVmError {
    move |source| KvmVmError::Ioctl { what, source }
}

/// An x86 KVM VM with guest RAM and interrupt controllers in place; vCPUs
/// and devices are added by the caller.
#[derive(Debug)]
pub struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
}

impl KvmVm {
    /// Opens `/dev/kvm`, creates the VM, the interrupt controllers and the
    /// PIT, and maps every region of `mem` as a memory slot.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self, KvmVmError> {
        let kvm = Kvm::new().map_err(KvmVmError::Open)?;
        let fd = kvm.create_vm().map_err(ioctl("CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(ioctl("SET_TSS_ADDR"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(ioctl("SET_IDENTITY_MAP_ADDR"))?;
        // The irqchip before any vCPU, so each vCPU gets an in-kernel LAPIC.
        fd.create_irq_chip().map_err(ioctl("CREATE_IRQCHIP"))?;
        // The dummy speaker port keeps port 0x61 in the kernel.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(ioctl("CREATE_PIT2"))?;
        for (slot, region) in mem.iter().enumerate() {
            let start = region.start_addr().raw_value();
            let region_def = kvm_userspace_memory_region {
                slot: u32::try_from(slot).map_err(|_| KvmVmError::Region(start))?,
                flags: 0,
                guest_phys_addr: start,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which
            // the caller keeps alive for as long as the VM (the VMM holds
            // both); slots never overlap because the regions do not.
            unsafe { fd.set_user_memory_region(region_def) }
                .map_err(ioctl("SET_USER_MEMORY_REGION"))?;
        }
        Ok(KvmVm { kvm, fd })
    }

    /// The `/dev/kvm` handle (CPUID and MSR queries).
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Creates vCPU `id`; configure it with [`super::cpu`].
    pub fn create_vcpu(&self, id: u8) -> Result<VcpuFd, KvmVmError> {
        self.fd
            .create_vcpu(u64::from(id))
            .map_err(ioctl("CREATE_VCPU"))
    }

    /// Writing `evt` raises `gsi` (PIC and IOAPIC pins 0-23 by KVM's
    /// default routing).
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), KvmVmError> {
        self.fd.register_irqfd(evt, gsi).map_err(ioctl("IRQFD"))
    }

    /// A guest 32-bit write of `datamatch` to MMIO `addr` signals `evt`
    /// without leaving the kernel.
    pub fn register_mmio_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), KvmVmError> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(ioctl("IOEVENTFD"))
    }
}
