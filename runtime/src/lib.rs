//! The host side of husk: OCI bundles, the state directory, VM sizing,
//! hooks, and the container operations the `husk` CLI (and later the
//! containerd shim) are made of.
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | runc's command line |
//! | [`ops`] | the operations: create, start, state, kill, delete, exec, ps, list, pause, ... |
//! | [`bundle`] | loading config.json, sharing rootfs and bind sources into the guest (read-only on the host where asked), rewriting paths |
//! | [`mounts`] | the mount and path syscalls the share is built with (`open_tree`, `mount_setattr`, `move_mount`, `openat2`) |
//! | [`mountpoints`] | mount destinations made on the host in a read-only rootfs, without leaving it through symlinks |
//! | [`state`] | `ROOT/ID/state.json`, atomic writes, id claims, monitor liveness |
//! | [`sizing`] | memory/vCPUs/kernel/engine from resources, the `vm` section and `husk.*` annotations |
//! | [`resources`] | resource updates (`update`, the shim's `Update`): merged, checked against the VM, decoded from containerd |
//! | [`hooks`] | host-side OCI hooks |
//! | [`monitor`] | launching `husk-vmm` (the CLI's and the shim's one way): its fds, its host cgroup, its ready report |
//! | [`unsupported`] | spec fields a VM cannot honour: refused, or logged as not applied |
//! | [`network`] | the spec's network namespace mirrored into the guest (tap, tc, guest config) |
//! | [`portforward`] | `kubectl port-forward`: the pod namespace's loopback led into the guest's |
//! | [`host_cgroup`] | the container's cgroup on the host, holding the VM's host processes, with limits from the VM's size |
//! | [`child`] | running helper programs (`ip`, `tc`) in the CLI and under the shim's reaper |
//! | [`logging`] | `--log`, `--log-format`, `--debug` in runc's shape |
//! | [`signal`] | signal names, and forwarding for `run` |
//! | [`shim`] | the containerd shim v2 (`containerd-shim-husk-v2`) |

pub mod bundle;
pub mod child;
pub mod cli;
pub mod docs;
pub mod hooks;
pub mod host_cgroup;
pub mod logging;
pub mod monitor;
pub mod mountpoints;
pub mod mounts;
pub mod network;
pub mod ops;
pub mod policy;
pub mod portforward;
pub mod resources;
pub mod settings;
pub mod shim;
pub mod signal;
pub mod sizing;
pub mod state;
pub mod unsupported;

pub use husk_protocol::error_chain;
