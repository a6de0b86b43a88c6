//! vCPU setup: CPUID, MSRs, FPU, the LAPIC's LINT pins, and the registers
//! for where the guest starts (the PVH 32-bit entry for Linux, 16-bit real
//! mode for the tests' hand-assembled programs).

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the boot GDT lives for the PVH entry (below the real-mode IVT's
/// end is taken; 0x500 is the first free byte of the BIOS data area).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Flat 4 GiB descriptors: null, null, code32 (0x10), data (0x18), TSS
/// (0x20). The PVH spec asks for exactly these selectors' properties; the
/// kernel loads its own GDT first thing.
const BOOT_GDT: [u64; 5] = [
    0,
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

/// A vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed")]
    Ioctl {
        /// The vCPU.
        id: u8,
        /// The ioctl, in words.
        what: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The boot GDT could not be written.
    #[error("cannot write the boot GDT to guest memory")]
    Gdt,
    /// A KVM structure could not be built.
    #[error("vCPU {0}: cannot build the MSR list")]
    Msrs(u8),
}

/// Where vCPU 0 starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The PVH entry: 32-bit protected mode, paging off, interrupts off,
    /// `ebx` = the `hvm_start_info` address.
    Pvh {
        /// The kernel's PVH entry point (its ELF note).
        entry: u64,
        /// The `hvm_start_info` structure.
        start_info: u64,
    },
    /// 16-bit real mode at `cs:ip`, stack at `0:sp`.
    Real {
        /// Code segment (base = cs * 16).
        cs: u16,
        /// Instruction pointer.
        ip: u16,
        /// Stack pointer.
        sp: u16,
    },
}

/// What every vCPU of one VM shares.
#[derive(Debug, Clone, Copy)]
pub struct CpuTopology {
    /// How many vCPUs the VM has.
    pub count: u8,
    /// Hide CPUID features KVM's instruction emulator lacks. PVM-backed
    /// `/dev/kvm` (no vmx/svm on the host) emulates far more instructions
    /// than hardware KVM, and its emulator stops the guest on xsave/xrstor,
    /// cmpxchg16b, popcnt and the SMAP/SMEP instructions (clac/stac); hiding
    /// them makes Linux use the fallbacks it already has.
    pub mask_for_emulation: bool,
}

/// True when the host has VT-x/AMD-V: `cpuinfo` (the text of
/// `/proc/cpuinfo`) has a `vmx` or `svm` flag, or a hardware KVM module
/// (`kvm_intel`, `kvm_amd`) is loaded. PVM-backed `/dev/kvm` does not
/// count; it gets [`CpuTopology::mask_for_emulation`].
pub fn hardware_virtualization(cpuinfo: &str, hw_kvm_module: bool) -> bool {
    hw_kvm_module || has_cpu_flag(cpuinfo, "vmx") || has_cpu_flag(cpuinfo, "svm")
}

/// Whether `cpuinfo` (the text of `/proc/cpuinfo`) lists `flag` among the
/// CPU's flags (its `flags` lines only, whole words).
pub fn has_cpu_flag(cpuinfo: &str, flag: &str) -> bool {
    cpuinfo.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim() == "flags" && v.split_whitespace().any(|f| f == flag))
    })
}

/// Whether a hardware KVM module is loaded here.
pub fn hw_kvm_module_loaded() -> bool {
    ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| std::path::Path::new("/sys/module").join(m).exists())
}

/// [`hardware_virtualization`] for this host, read now.
pub fn probe_hardware_virtualization() -> bool {
    hardware_virtualization(
        &std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
        hw_kvm_module_loaded(),
    )
}

/// The same features for Linux's `clearcpuid=`.
pub const EMULATION_CLEARCPUID: &str = "xsave,cx16,popcnt,smap,smep";

fn vcpu_ioctl(id: u8, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Ioctl { id, what, source }
}

/// CPUID leaf 1 ECX bits.
const CPUID1_ECX_CX16: u32 = 1 << 13;
const CPUID1_ECX_POPCNT: u32 = 1 << 23;
const CPUID1_ECX_XSAVE: u32 = 1 << 26;
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;
const CPUID1_ECX_AVX: u32 = 1 << 28;
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 7 EBX bits.
const CPUID7_EBX_SMEP: u32 = 1 << 7;
const CPUID7_EBX_SMAP: u32 = 1 << 20;
/// AVX2 and the AVX-512 family need XSAVE-managed state.
const CPUID7_EBX_AVX_FAMILY: u32 = (1 << 5) | 0xdc23_0000;

/// CPUID leaf 1 ECX bit 24: the LAPIC timer has TSC-deadline mode.
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// What this host's KVM offers beyond `KVM_GET_SUPPORTED_CPUID`: features
/// KVM implements but leaves the VMM to advertise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvmExtras {
    /// `KVM_CAP_TSC_DEADLINE_TIMER`: KVM emulates the LAPIC timer's
    /// TSC-deadline mode, though `KVM_GET_SUPPORTED_CPUID` never lists its
    /// bit. Advertised, Linux programs its timer with one MSR write per
    /// event and needs no calibration; without it, Linux measures the
    /// LAPIC timer's rate against the PIT for 100 ms of guest ticks at
    /// boot ("Calibrating APIC timer"), which nested or loaded hosts
    /// stretch well past that.
    pub tsc_deadline: bool,
}

impl KvmExtras {
    /// What `kvm` offers.
    pub fn probe(kvm: &Kvm) -> Self {
        Self {
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
        }
    }
}

/// Shapes the CPUID entries KVM supports (`entries`, from
/// `KVM_GET_SUPPORTED_CPUID`) for vCPU `id`: its APIC id and the VM's vCPU
/// count (leaves 1, 0xb, 0x1f), the hypervisor bit, what `extras` offers,
/// and the masks of [`CpuTopology::mask_for_emulation`]. KVM's paravirtual
/// leaves (0x4000_0000.., kvm-clock, PV EOI, PV unhalt among them) pass
/// unchanged.
pub fn shape_cpuid(entries: &mut [kvm_cpuid_entry2], id: u8, topo: CpuTopology, extras: KvmExtras) {
    for e in entries {
        match e.function {
            1 => {
                // APIC id, logical processor count, CLFLUSH size 8 qwords.
                e.ebx = (u32::from(id) << 24) | (u32::from(topo.count) << 16) | (8 << 8);
                e.ecx |= CPUID1_ECX_HYPERVISOR;
                if extras.tsc_deadline {
                    e.ecx |= CPUID1_ECX_TSC_DEADLINE;
                }
                if topo.count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is valid
                }
                if topo.mask_for_emulation {
                    e.ecx &= !(CPUID1_ECX_CX16
                        | CPUID1_ECX_POPCNT
                        | CPUID1_ECX_XSAVE
                        | CPUID1_ECX_OSXSAVE
                        | CPUID1_ECX_AVX);
                }
            }
            7 if e.index == 0 && topo.mask_for_emulation => {
                e.ebx &= !(CPUID7_EBX_SMEP | CPUID7_EBX_SMAP | CPUID7_EBX_AVX_FAMILY);
            }
            0xb | 0x1f => {
                // x2APIC topology: every vCPU its own core.
                e.edx = u32::from(id);
                if e.index == 0 {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 0x100; // level 0: SMT
                } else if e.index == 1 {
                    e.eax = 8;
                    e.ebx = u32::from(topo.count);
                    e.ecx = 0x201; // level 1: core
                } else {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            _ => {}
        }
    }
}

/// Sets vCPU `id`'s CPUID: what KVM supports, shaped by [`shape_cpuid`].
pub fn configure_cpuid(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    topo: CpuTopology,
) -> Result<(), CpuError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(vcpu_ioctl(id, "GET_SUPPORTED_CPUID"))?;
    shape_cpuid(cpuid.as_mut_slice(), id, topo, KvmExtras::probe(kvm));
    vcpu.set_cpuid2(&cpuid)
        .map_err(vcpu_ioctl(id, "SET_CPUID2"))
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The MSRs a fresh CPU has after reset, as Linux expects them.
pub fn configure_msrs(vcpu: &VcpuFd, id: u8) -> Result<(), CpuError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::Msrs(id))?;
    let set = vcpu.set_msrs(&msrs).map_err(vcpu_ioctl(id, "SET_MSRS"))?;
    if set != entries.len() {
        // Not fatal: the guest reprograms what it uses; say which one KVM refused.
        tracing::debug!(
            vcpu = id,
            refused = format!("{:#x}", entries[set].index),
            "KVM refused an MSR"
        );
    }
    Ok(())
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn configure_fpu(vcpu: &VcpuFd, id: u8) -> Result<(), CpuError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(vcpu_ioctl(id, "SET_FPU"))
}

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 4;
const APIC_MODE_EXTINT: u32 = 7;

fn lapic_reg(regs: &[std::os::raw::c_char; 1024], off: usize) -> u32 {
    let b = |i: usize| regs[off + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; 1024], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// LINT0 as ExtINT (the PIC's output reaches the CPU, as on a PC) and
/// LINT1 as NMI.
pub fn configure_lapic(vcpu: &VcpuFd, id: u8) -> Result<(), CpuError> {
    let mut lapic = vcpu.get_lapic().map_err(vcpu_ioctl(id, "GET_LAPIC"))?;
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let v = lapic_reg(&lapic.regs, reg);
        set_lapic_reg(&mut lapic.regs, reg, (v & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(vcpu_ioctl(id, "SET_LAPIC"))
}

/// CPUID, MSRs, FPU and LAPIC for vCPU `id`. vCPUs other than 0 then wait
/// in the kernel for the INIT/SIPI the guest sends them.
pub fn configure(kvm: &Kvm, vcpu: &VcpuFd, id: u8, topo: CpuTopology) -> Result<(), CpuError> {
    configure_cpuid(kvm, vcpu, id, topo)?;
    configure_msrs(vcpu, id)?;
    configure_fpu(vcpu, id)?;
    configure_lapic(vcpu, id)
}

fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Sets vCPU 0's registers for `entry`; for PVH also writes the boot GDT
/// to guest memory.
pub fn set_entry(vcpu: &VcpuFd, mem: &GuestMemoryMmap, entry: Entry) -> Result<(), CpuError> {
    let mut sregs = vcpu.get_sregs().map_err(vcpu_ioctl(0, "GET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(vcpu_ioctl(0, "GET_REGS"))?;
    regs.rflags = 0x2;
    match entry {
        Entry::Pvh { entry, start_info } => {
            for (i, d) in BOOT_GDT.iter().enumerate() {
                mem.write_obj(*d, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))
                    .map_err(|_| CpuError::Gdt)?;
            }
            sregs.gdt.base = BOOT_GDT_ADDR;
            sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
            sregs.idt.base = 0;
            sregs.idt.limit = 0;
            sregs.cs = flat_segment(0x10, 0xb);
            let data = flat_segment(0x18, 0x3);
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = kvm_segment {
                limit: 0x67,
                g: 0,
                db: 0,
                s: 0,
                ..flat_segment(0x20, 0xb)
            };
            sregs.cr0 = 0x11; // PE, ET; paging off
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = entry;
            regs.rbx = start_info;
        }
        Entry::Real { cs, ip, sp } => {
            sregs.cs.selector = cs;
            sregs.cs.base = u64::from(cs) << 4;
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.ss,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                s.selector = 0;
                s.base = 0;
            }
            regs.rip = u64::from(ip);
            regs.rsp = u64::from(sp);
        }
    }
    vcpu.set_sregs(&sregs).map_err(vcpu_ioctl(0, "SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(vcpu_ioctl(0, "SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    const TOPO: CpuTopology = CpuTopology {
        count: 2,
        mask_for_emulation: false,
    };

    #[test]
    fn tsc_deadline_is_advertised_when_kvm_has_it() {
        let mut e = vec![leaf(1, 0)];
        shape_cpuid(&mut e, 0, TOPO, KvmExtras { tsc_deadline: true });
        assert_ne!(find(&e, 1, 0).ecx & CPUID1_ECX_TSC_DEADLINE, 0);

        let mut e = vec![leaf(1, 0)];
        shape_cpuid(
            &mut e,
            0,
            TOPO,
            KvmExtras {
                tsc_deadline: false,
            },
        );
        assert_eq!(find(&e, 1, 0).ecx & CPUID1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = vec![leaf(1, 0)];
        shape_cpuid(&mut e, 1, TOPO, KvmExtras::default());
        let l = find(&e, 1, 0);
        assert_eq!(l.ebx >> 24, 1);
        assert_eq!((l.ebx >> 16) & 0xff, 2);
        assert_ne!(l.ecx & CPUID1_ECX_HYPERVISOR, 0);
        assert_ne!(l.edx & (1 << 28), 0);
    }

    #[test]
    fn paravirtual_leaves_pass_unchanged() {
        let kvm_features = kvm_cpuid_entry2 {
            function: 0x4000_0001,
            eax: 0x0100_7afb,
            edx: 1,
            ..Default::default()
        };
        let mut e = vec![leaf(1, 0), kvm_features];
        shape_cpuid(&mut e, 0, TOPO, KvmExtras { tsc_deadline: true });
        assert_eq!(find(&e, 0x4000_0001, 0), kvm_features);
    }

    #[test]
    fn emulation_mask_hides_what_the_emulator_lacks() {
        let mut one = leaf(1, 0);
        one.ecx = CPUID1_ECX_XSAVE | CPUID1_ECX_CX16 | CPUID1_ECX_POPCNT;
        let mut seven = leaf(7, 0);
        seven.ebx = CPUID7_EBX_SMEP | CPUID7_EBX_SMAP | 1;
        let mut e = vec![one, seven];
        let topo = CpuTopology {
            count: 1,
            mask_for_emulation: true,
        };
        shape_cpuid(&mut e, 0, topo, KvmExtras { tsc_deadline: true });
        let l = find(&e, 1, 0);
        assert_eq!(
            l.ecx & (CPUID1_ECX_XSAVE | CPUID1_ECX_CX16 | CPUID1_ECX_POPCNT),
            0
        );
        assert_ne!(l.ecx & CPUID1_ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&e, 7, 0).ebx, 1);
    }

    #[test]
    fn x2apic_topology_names_each_vcpu() {
        let mut e = vec![leaf(0xb, 0), leaf(0xb, 1), leaf(0xb, 2)];
        shape_cpuid(&mut e, 1, TOPO, KvmExtras::default());
        assert_eq!(find(&e, 0xb, 0).edx, 1);
        assert_eq!(find(&e, 0xb, 1).ebx, 2);
        assert_eq!(find(&e, 0xb, 2).ecx, 2);
    }
}
