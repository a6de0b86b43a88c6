//! What `husk-vmm --probe-host` prints (one JSON document) and `husk check`
//! reads: the monitor's own view of this host, so the engine choice and the
//! helper programs found are said by the code that uses them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The monitor's view of this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The CPU has VT-x/AMD-V (`vmx`/`svm`) or a hardware KVM module is
    /// loaded.
    pub hardware_virtualization: bool,
    /// `/dev/kvm` opens read-write for this process.
    pub kvm_device: bool,
    /// The CPU says it runs under a hypervisor (`hypervisor` flag).
    pub under_hypervisor: bool,
    /// The engine `auto` picks: `builtin` or `qemu`.
    pub engine: String,
    /// qemu's accelerator here (`kvm` or `tcg`), when qemu is the engine.
    pub accel: Option<String>,
    /// Why, in one line.
    pub reason: String,
    /// The helper programs the monitor looks for.
    pub programs: Vec<ProgramReport>,
}

/// One helper program: where the monitor finds it, and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramReport {
    /// Its name (`virtiofsd`, `qemu-system-x86_64`, ...).
    pub name: String,
    /// What it is for.
    pub role: String,
    /// Whether the monitor needs it on this host (qemu: only when qemu is
    /// the engine).
    pub required: bool,
    /// Where it was found.
    pub path: Option<PathBuf>,
    /// The first line of its `--version`.
    pub version: Option<String>,
    /// Why it is not usable.
    pub error: Option<String>,
}
