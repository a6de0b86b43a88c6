//! The contract between husk's runtime (`husk`, `containerd-shim-husk-v2`)
//! and its monitor (`husk-vmm`): everything both sides must agree on, and
//! nothing else, so the runtime links no engine code (no KVM, vhost or
//! boot-loader crates) to start a monitor and read what it reports.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | [`VmConfig`]: the JSON document the runtime writes and `husk-vmm --config` reads, and its validation |
//! | [`ready`] | [`ReadyReport`]: the one JSON line the monitor writes on [`READY_FD`] once the VM (and container) is up, or why it failed |
//! | [`journal`] | the state-directory records the monitor writes and the runtime reads: the guest's `vm-state`, the recorded children |
//! | [`host`] | [`host::HostReport`]: what `husk-vmm --probe-host` says about this host (engine choice, helper programs), for `husk check` |
//!
//! The fd numbers a monitor inherits from its launcher are
//! [`READY_FD`] and [`TAP_FD`].

pub mod config;
pub mod host;
pub mod journal;
pub mod ready;

pub use config::{ContainerConfig, EngineChoice, NetConfig, ShareConfig, VmConfig};
pub use ready::{BootStage, ReadyReport};

/// The fd a launched monitor writes its [`ReadyReport`] on
/// (`husk-vmm --ready-fd`, or `container.ready_fd` in the config).
pub const READY_FD: i32 = 3;

/// The fd a launched monitor gets the pod network's tap on (after
/// [`READY_FD`]); named in the config's `net[].tap_fd`.
pub const TAP_FD: i32 = 4;
