//! Engines run the guest once the device daemons serve their sockets.
//! Two implement [`EngineInstance`]: QEMU as a child process (`qemu`) and
//! the builtin KVM engine (`kvm`: the `husk-kvm` VMM, in process).

pub mod kvm;
pub mod qemu;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use husk_vmm_contract::config::{EngineChoice, VmConfig};

use crate::binaries::BinaryError;
use crate::process::ProcessError;

/// An engine could not be chosen or started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The builtin engine could not build or start the VM.
    #[error("builtin KVM engine")]
    Builtin(#[from] husk_kvm::VmmError),
    /// The engine's program is missing.
    #[error(transparent)]
    Binary(#[from] BinaryError),
    /// The engine process could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// qemu's empty chroot directory could not be made.
    #[error("cannot prepare qemu's chroot directory {path}")]
    Chroot {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The console log or its relay could not be set up.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
}

/// Which engine actually runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// In-process KVM (`husk-kvm`, see [`kvm`]).
    Builtin,
    /// `qemu-system-x86_64`, with the [`Accel`] the host allows.
    Qemu,
}

/// How the qemu engine runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// `-accel kvm -cpu host`: hardware virtualization.
    Kvm,
    /// `-accel tcg -cpu max`: emulation, seconds to boot.
    Tcg,
}

/// What the host offers, read from `/proc/cpuinfo` and `/sys/module`.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The text of /proc/cpuinfo.
    pub cpuinfo: String,
    /// Whether kvm_intel or kvm_amd is loaded.
    pub hw_kvm_module: bool,
    /// Whether this process can open /dev/kvm read-write.
    pub kvm_device: bool,
}

impl HostFacts {
    /// This host's facts, read once per process (engine selection and the
    /// builtin engine's CPUID policy both ask).
    pub fn probe() -> &'static Self {
        static FACTS: std::sync::OnceLock<HostFacts> = std::sync::OnceLock::new();
        FACTS.get_or_init(|| HostFacts {
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            hw_kvm_module: husk_kvm::cpu::hw_kvm_module_loaded(),
            kvm_device: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
        })
    }

    /// The qemu engine's accelerator here: KVM where it can run a Linux
    /// guest (hardware virtualization and a usable /dev/kvm), else TCG. A
    /// PVM-backed /dev/kvm stops Linux guests early, so it gets TCG.
    pub fn qemu_accel(&self) -> Accel {
        if self.kvm_device && self.hardware_virtualization() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// True when the CPU has VT-x/AMD-V (a `vmx` or `svm` flag) or a
    /// hardware KVM module is loaded. PVM-backed `/dev/kvm` does not count.
    pub fn hardware_virtualization(&self) -> bool {
        husk_kvm::cpu::hardware_virtualization(&self.cpuinfo, self.hw_kvm_module)
    }
}

/// Boot options every guest gets, whatever the engine.
///
/// - `no_timer_check`: the IOAPIC timer self-test counts ticks against the
///   wall clock, and a guest whose vCPUs are descheduled (emulation on a
///   loaded host, nested KVM) fails it and panics ("IO-APIC + timer doesn't
///   work"); the timer works, the check is what is unreliable.
/// - `tsc=reliable`: the TSC is the VMM's (constant, synchronised across
///   vCPUs), so the clocksource watchdog that would vet it against the
///   jiffies has nothing to find, and the guest switches to it at once.
/// - `pty.legacy_count=0`: no BSD `/dev/ptyXX` devices (nothing in a
///   container uses them; the agent and every libc use /dev/ptmx). Making
///   the 256 of them took 117 ms of a TCG boot (`initcall_debug`).
const GUEST_BOOT_OPTIONS: &str =
    "console=ttyS0 panic=-1 quiet no_timer_check tsc=reliable pty.legacy_count=0";

/// Only where the guest's CPU is emulated (qemu TCG): `nolapic_timer`. TCG
/// has no TSC-deadline timer, so the kernel calibrates the local APIC timer
/// against the PIT, a fixed 100 ms of ticks that took 250 ms under TCG
/// (`initcall_debug`: the gap before "smpboot: CPU0"); the PIT (microvm
/// keeps it on) drives the clock events instead. Under KVM the guest sees
/// TSC-deadline and skips that calibration, so the APIC timer stays.
const EMULATED_CPU_BOOT_OPTIONS: &str = "nolapic_timer";

/// The guest command line for a guest run by `accel` (the builtin engine is
/// always [`Accel::Kvm`]): our options first, the config's extra arguments
/// last so they can override (`loglevel=7` beats `quiet`).
pub fn kernel_cmdline(cfg: &VmConfig, accel: Accel) -> String {
    let mut c = String::from(GUEST_BOOT_OPTIONS);
    if accel == Accel::Tcg {
        c.push(' ');
        c.push_str(EMULATED_CPU_BOOT_OPTIONS);
    }
    if cfg.vsock.agent_port != husk_protocol::DEFAULT_AGENT_PORT {
        c.push_str(&format!(
            " {}={}",
            husk_protocol::AGENT_PORT_CMDLINE_KEY,
            cfg.vsock.agent_port
        ));
    }
    if let Some(extra) = cfg
        .cmdline
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        c.push(' ');
        c.push_str(extra);
    }
    c
}

/// Picks the engine, and says why in one line (the monitor logs it).
/// `Auto` is the builtin engine on hardware virtualization, else qemu.
pub fn select(choice: EngineChoice, host: &HostFacts) -> (EngineKind, String) {
    let qemu = |because: &str| {
        match host.qemu_accel() {
        Accel::Kvm => format!("qemu engine with KVM: {because}"),
        Accel::Tcg => format!(
            "qemu engine with TCG emulation (the guest boots in seconds instead of ~150 ms and runs several times slower): {because}, and this host has no hardware virtualization (no vmx/svm)"
        ),
    }
    };
    match choice {
        EngineChoice::Qemu => (EngineKind::Qemu, qemu("asked for")),
        EngineChoice::Builtin => (EngineKind::Builtin, "builtin KVM engine: asked for".into()),
        EngineChoice::Auto if host.hardware_virtualization() => (
            EngineKind::Builtin,
            "builtin KVM engine: auto, and this host has hardware virtualization".into(),
        ),
        EngineChoice::Auto => (EngineKind::Qemu, qemu("auto")),
    }
}

/// A running guest, whatever runs it.
pub trait EngineInstance: std::fmt::Debug + Send {
    /// The engine's name for logs.
    fn name(&self) -> &str;
    /// The engine's process id, when it is a separate process.
    fn pid(&self) -> Option<u32>;
    /// Readable once the guest has stopped.
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// `Some` once the guest has stopped: `Ok` for a guest reboot/poweroff,
    /// `Err(description)` for an engine failure.
    fn try_wait(&mut self) -> Option<Result<(), String>>;
    /// Waits up to `timeout` for the guest to stop; true once it has.
    fn wait_timeout(&mut self, timeout: Duration) -> bool;
    /// Stops the guest now (waiting up to `grace` for a clean exit).
    fn stop(&mut self, grace: Duration);
    /// Parks the guest's vCPUs (`true`) or runs them again; returns once
    /// they are parked, or why they could not be.
    fn set_paused(&mut self, paused: bool) -> Result<(), String>;
}

/// Starts the chosen engine for `cfg`, whose daemons already serve their
/// sockets, with the guest's serial console written to `console` (the
/// console relay's pipe, `crate::console`).
pub fn start(
    kind: EngineKind,
    cfg: &VmConfig,
    console: OwnedFd,
) -> Result<Box<dyn EngineInstance>, EngineError> {
    match kind {
        EngineKind::Builtin => Ok(Box::new(kvm::KvmEngine::start(
            cfg,
            husk_kvm::Devices::FromConfig,
            console.into(),
        )?)),
        EngineKind::Qemu => Ok(Box::new(qemu::QemuEngine::start(cfg, console)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme de pse msr vmx sse2\n";
    const PVM: &str =
        "processor\t: 0\nflags\t\t: fpu vme hypervisor sse2\nmodel name\t: svm-like name\n";

    #[test]
    fn detects_hardware_virtualization() {
        // Flags are read from `flags` lines only, as whole words.
        assert!(husk_kvm::cpu::has_cpu_flag(PVM, "hypervisor"));
        assert!(
            !husk_kvm::cpu::has_cpu_flag(PVM, "svm"),
            "a model name is no flag"
        );
        assert!(!husk_kvm::cpu::has_cpu_flag(VMX, "vm"));
        assert!(HostFacts {
            cpuinfo: VMX.into(),
            hw_kvm_module: false,
            kvm_device: true,
        }
        .hardware_virtualization());
        assert!(!HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: false,
            kvm_device: true,
        }
        .hardware_virtualization());
        assert!(HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: true,
            kvm_device: true,
        }
        .hardware_virtualization());
    }

    #[test]
    fn selection() {
        let hw = HostFacts {
            cpuinfo: VMX.into(),
            hw_kvm_module: false,
            kvm_device: true,
        };
        let no = HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: false,
            kvm_device: true,
        };
        let (k, why) = select(EngineChoice::Auto, &hw);
        assert_eq!(k, EngineKind::Builtin);
        assert!(why.contains("hardware virtualization"), "{why}");
        let (k, w) = select(EngineChoice::Auto, &no);
        assert_eq!(k, EngineKind::Qemu);
        assert!(
            w.contains("no hardware virtualization") && w.contains("seconds") && !w.contains('\n'),
            "{w}"
        );
        let (k, w) = select(EngineChoice::Qemu, &hw);
        assert_eq!(k, EngineKind::Qemu);
        assert!(w.starts_with("qemu engine with KVM"), "{w}");
        assert_eq!(select(EngineChoice::Builtin, &no).0, EngineKind::Builtin);
    }

    #[test]
    fn qemu_uses_kvm_only_where_it_can_run_a_guest() {
        let facts = |cpuinfo: &str, kvm_device| HostFacts {
            cpuinfo: cpuinfo.into(),
            hw_kvm_module: false,
            kvm_device,
        };
        assert_eq!(facts(VMX, true).qemu_accel(), Accel::Kvm);
        assert_eq!(facts(VMX, false).qemu_accel(), Accel::Tcg, "no /dev/kvm");
        assert_eq!(facts(PVM, true).qemu_accel(), Accel::Tcg, "PVM-backed");
    }
}
