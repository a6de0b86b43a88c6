//! The hook the embedding process confines this crate's helper threads
//! with. husk-vmm installs its per-thread seccomp filters and drops the
//! thread's capabilities there; a test or the example passes
//! [`ThreadHook::none`] and the threads run unconfined.

use std::sync::Arc;

/// The kinds of thread this crate starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRole {
    /// A vCPU thread (`crate::vcpu`), before the guest runs an instruction.
    Vcpu,
    /// The virtio-net worker (`crate::virtio::net`), before it reads a
    /// descriptor.
    NetWorker,
}

type HookFn = dyn Fn(ThreadRole) -> Result<(), String> + Send + Sync;

/// Called first thing on every helper thread with its role; an `Err`
/// (already in words) stops that thread: a vCPU ends the VM with it, the
/// net worker stops its device.
#[derive(Clone, Default)]
pub struct ThreadHook(Option<Arc<HookFn>>);

impl ThreadHook {
    /// No confinement.
    pub fn none() -> Self {
        ThreadHook(None)
    }

    /// Confines each thread with `f`.
    pub fn new(f: impl Fn(ThreadRole) -> Result<(), String> + Send + Sync + 'static) -> Self {
        ThreadHook(Some(Arc::new(f)))
    }

    /// Runs the hook for the calling thread.
    pub fn enter(&self, role: ThreadRole) -> Result<(), String> {
        match &self.0 {
            Some(f) => f(role),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ThreadHook(set)"
        } else {
            "ThreadHook(none)"
        })
    }
}
