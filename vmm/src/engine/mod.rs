//! Engines run the guest once the device daemons serve their sockets.
//! Two implement [`EngineInstance`]: QEMU as a child process and the
//! builtin KVM engine (`crate::builtin`), in process.

pub mod qemu;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crate::binaries::BinaryError;
use crate::config::{EngineChoice, VmConfig};
use crate::process::ProcessError;

/// An engine could not be chosen or started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The builtin engine was asked for; it does not exist yet.
    #[error("the builtin KVM engine is not built yet; use engine \"qemu\"")]
    BuiltinUnavailable,
    /// The builtin engine could not build or start the VM.
    #[error("builtin KVM engine")]
    Builtin(#[from] crate::builtin::engine::BuiltinError),
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
    /// In-process KVM (`crate::builtin`).
    Builtin,
    /// `qemu-system-x86_64 -accel tcg`.
    Qemu,
}

/// Whether the builtin engine is compiled in.
pub const BUILTIN_AVAILABLE: bool = true;

/// What the host offers, read from `/proc/cpuinfo` and `/sys/module`.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The text of /proc/cpuinfo.
    pub cpuinfo: String,
    /// Whether kvm_intel or kvm_amd is loaded.
    pub hw_kvm_module: bool,
}

impl HostFacts {
    /// This host's facts, read once per process (engine selection and the
    /// builtin engine's CPUID policy both ask).
    pub fn probe() -> &'static Self {
        static FACTS: std::sync::OnceLock<HostFacts> = std::sync::OnceLock::new();
        FACTS.get_or_init(|| HostFacts {
            cpuinfo: std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            hw_kvm_module: ["kvm_intel", "kvm_amd"]
                .iter()
                .any(|m| Path::new("/sys/module").join(m).exists()),
        })
    }

    /// True when the CPU has VT-x/AMD-V (a `vmx` or `svm` flag) or a
    /// hardware KVM module is loaded. PVM-backed `/dev/kvm` does not count.
    pub fn hardware_virtualization(&self) -> bool {
        self.hw_kvm_module
            || self.cpuinfo.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim() == "flags" && v.split_whitespace().any(|f| f == "vmx" || f == "svm")
                })
            })
    }
}

/// Picks the engine. `Auto` falls back to QEMU with a reason to log.
pub fn select(
    choice: EngineChoice,
    host: &HostFacts,
    builtin_available: bool,
) -> Result<(EngineKind, Option<String>), EngineError> {
    match choice {
        EngineChoice::Qemu => Ok((EngineKind::Qemu, None)),
        EngineChoice::Builtin if builtin_available => Ok((EngineKind::Builtin, None)),
        EngineChoice::Builtin => Err(EngineError::BuiltinUnavailable),
        EngineChoice::Auto => {
            let hw = host.hardware_virtualization();
            if hw && builtin_available {
                return Ok((EngineKind::Builtin, None));
            }
            let why = if hw {
                "the builtin KVM engine is not built yet"
            } else {
                "this host has no hardware virtualization (no vmx/svm)"
            };
            Ok((
                EngineKind::Qemu,
                Some(format!(
                    "using the qemu engine (TCG emulation) because {why}: the guest boots in seconds instead of ~150 ms and runs several times slower"
                )),
            ))
        }
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
        EngineKind::Builtin => Ok(Box::new(crate::builtin::engine::BuiltinEngine::start(
            cfg,
            crate::builtin::engine::Devices::FromConfig,
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
        assert!(HostFacts {
            cpuinfo: VMX.into(),
            hw_kvm_module: false
        }
        .hardware_virtualization());
        assert!(!HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: false
        }
        .hardware_virtualization());
        assert!(HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: true
        }
        .hardware_virtualization());
    }

    #[test]
    fn selection() {
        let hw = HostFacts {
            cpuinfo: VMX.into(),
            hw_kvm_module: false,
        };
        let no = HostFacts {
            cpuinfo: PVM.into(),
            hw_kvm_module: false,
        };
        assert_eq!(
            select(EngineChoice::Auto, &hw, true).unwrap(),
            (EngineKind::Builtin, None)
        );
        let (k, w) = select(EngineChoice::Auto, &hw, false).unwrap();
        assert_eq!(k, EngineKind::Qemu);
        assert!(w.unwrap().contains("not built yet"));
        let (k, w) = select(EngineChoice::Auto, &no, true).unwrap();
        assert_eq!(k, EngineKind::Qemu);
        let w = w.unwrap();
        assert!(
            w.contains("no hardware virtualization") && w.contains("seconds") && !w.contains('\n')
        );
        assert_eq!(
            select(EngineChoice::Qemu, &hw, true).unwrap(),
            (EngineKind::Qemu, None)
        );
        assert_eq!(
            select(EngineChoice::Builtin, &no, true).unwrap(),
            (EngineKind::Builtin, None)
        );
        let e = select(EngineChoice::Builtin, &hw, false).unwrap_err();
        assert!(e.to_string().contains("not built yet"));
    }
}
