//! husk's per-container monitor: runs one microVM (with its builtin KVM
//! engine, the `husk-kvm` crate in `vmm/kvm/`, or QEMU), supervises its vhost-user device
//! daemons (virtiofsd, husk-vsockd), and in container supervisor mode
//! runs one container through the guest agent and exits with its status.
//! See `vmm/README.md`. What the runtime and the monitor agree on (the
//! config, the fds, the ready report, the state-directory records) is in
//! `husk-vmm-contract` (`vmm/contract/`).

pub mod binaries;
pub mod confine;
pub mod console;
pub mod daemons;
pub mod engine;
pub mod monitor;
pub mod privileges;
pub mod probe;
pub mod process;
pub mod seccomp;
pub mod signals;
pub mod supervise;
pub mod vm;

pub use vm::{Vm, VmError, VmExit, VmHandle};
