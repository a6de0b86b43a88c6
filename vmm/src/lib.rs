//! husk's per-container monitor: runs one microVM (with its builtin KVM
//! engine or QEMU), supervises its vhost-user device
//! daemons (virtiofsd, vhost-device-vsock), and in container supervisor mode
//! runs one container through the guest agent and exits with its status.
//! See `vmm/README.md`.

pub mod binaries;
pub mod builtin;
pub mod config;
pub mod confine;
pub mod console;
pub mod container;
pub mod daemons;
pub mod engine;
pub mod journal;
pub mod monitor;
pub mod privileges;
pub mod process;
pub mod seccomp;
pub mod signals;
pub mod vm;

pub use config::{ContainerConfig, EngineChoice, ShareConfig, VmConfig};
pub use vm::{Vm, VmError, VmExit, VmHandle};
