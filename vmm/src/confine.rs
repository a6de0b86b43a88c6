//! Confining husk-vmm's threads once their setup is done: capabilities
//! dropped and no_new_privs set (`crate::privileges`), then the thread's
//! seccomp filter (`crate::seccomp`). See the table in `vmm/README.md`.

use caps::Capability;

use crate::privileges::{self, PrivilegeError};
use crate::seccomp::{self, Context, SeccompError, ThreadKind};
use crate::vm::VmHandle;

/// A thread could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Capabilities or no_new_privs.
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Confines the main thread of a monitor whose VM has started: no child is
/// spawned after this. Keeps CAP_KILL (permitted only) when
/// there are children to stop, since qemu runs as another uid; its filter
/// lets `kill` reach those children only.
pub fn main_thread(vm: &VmHandle) -> Result<(), ConfineError> {
    let mut children: Vec<i32> = vm.daemon_pids().into_iter().map(|p| p as i32).collect();
    children.extend(vm.engine_pid().map(|p| p as i32));
    let keep: &[Capability] = if children.is_empty() {
        &[]
    } else {
        &[Capability::CAP_KILL]
    };
    privileges::drop_thread_privileges(keep)?;
    let ctx = Context {
        pid: std::process::id() as i32,
        children,
    };
    seccomp::install(ThreadKind::Main, &ctx)?;
    Ok(())
}

/// Confines the calling helper thread (vCPU, net worker, pump): no
/// capabilities, no_new_privs, its kind's filter.
pub fn this_thread(kind: ThreadKind) -> Result<(), ConfineError> {
    privileges::drop_thread_privileges(&[])?;
    seccomp::install(kind, &seccomp::own_context())?;
    Ok(())
}
