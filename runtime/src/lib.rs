//! The host side of husk: OCI bundles, the state directory, VM sizing,
//! hooks, and the container operations the `husk` CLI (and later the
//! containerd shim) are made of.
//!
//! | module | owns |
//! | --- | --- |
//! | [`bundle`] | loading config.json, sharing rootfs and bind sources into the guest, rewriting paths |
//! | [`state`] | `ROOT/ID/state.json`, atomic writes, id claims, monitor liveness |
//! | [`sizing`] | memory/vCPUs/kernel/engine from resources, the `vm` section and `husk.*` annotations |
//! | [`hooks`] | host-side OCI hooks |

pub mod bundle;
pub mod hooks;
pub mod sizing;
pub mod state;
