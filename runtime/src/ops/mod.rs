//! The container operations behind the CLI commands (and, later, the shim's
//! task API). Each returns a typed [`OpError`]; the binary prints it once.

mod check;
mod create;
mod events;
mod exec;
mod info;
mod lifecycle;
mod stdio;
mod update;

use std::path::PathBuf;
use std::time::Duration;

use husk_protocol::client::{AgentAddr, AgentClient, ClientError};
use husk_protocol::ErrorCode;

pub use check::{check, Artifacts, ConfigReport, Report as CheckReport};
pub use create::{check as check_create, create, now_rfc3339, CreateOptions};
pub use events::{events, to_stats, Event, EventsOptions, Stats};
pub use exec::{exec, exec_attach, merge_env, process_from_flags, sub_cgroup, ExecOptions};
pub use info::{default_spec, features};
pub use lifecycle::{
    delete, kill, list, pause, ps, ps_table, resume, start, state, wait_monitor, OciState,
};
pub use update::{patch_from_flags, update};

use crate::bundle::BundleError;
use crate::hooks::HookError;
use crate::sizing::SizingError;
use crate::state::{ContainerState, StateError, StateRoot};

/// How long the CLI and the shim wait to connect to the agent of a running
/// VM (the shim also for the answer to a call that should not block).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `state` and `list` may ask the agent (connect and answer
/// together) before they answer from the recorded state and the monitor's
/// liveness instead.
pub const STATUS_DEADLINE: Duration = Duration::from_secs(2);

/// How long a short agent call from the CLI (`kill`, `ps`, `start`, exec
/// setup, shutdown) may take to be answered: the agent answers these
/// without blocking, so only a wedged or hostile guest takes longer.
pub const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the CLI waits on an agent; [`Default`] is the constants above.
/// Tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentDeadlines {
    /// See [`STATUS_DEADLINE`].
    pub status: Duration,
    /// Connecting to the agent of a running VM.
    pub connect: Duration,
    /// See [`AGENT_CALL_TIMEOUT`].
    pub call: Duration,
}

impl Default for AgentDeadlines {
    fn default() -> Self {
        AgentDeadlines {
            status: STATUS_DEADLINE,
            connect: AGENT_TIMEOUT,
            call: AGENT_CALL_TIMEOUT,
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// The bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// VM sizing.
    #[error(transparent)]
    Sizing(#[from] SizingError),
    /// A hook.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The container's host cgroup (`linux.cgroupsPath`).
    #[error(transparent)]
    HostCgroup(#[from] crate::host_cgroup::HostCgroupError),
    /// The agent refused or could not be reached. What it said is the
    /// source, not repeated here: a chain (`{:#}`, `error_chain`) printed
    /// it twice.
    #[error("container {id}")]
    Agent {
        /// The container.
        id: String,
        /// What the agent said.
        #[source]
        source: ClientError,
    },
    /// The monitor could not be started or reported a failure.
    #[error("container {id}: the VM failed to start: {reason}")]
    Monitor {
        /// The container.
        id: String,
        /// The monitor's report.
        reason: String,
    },
    /// The container is not in a state that allows this.
    #[error("container {id} is {status}: {what}")]
    BadState {
        /// The container.
        id: String,
        /// Its status.
        status: crate::state::Status,
        /// What cannot be done.
        what: &'static str,
    },
    /// The arguments are unusable.
    #[error("{0}")]
    Invalid(String),
    /// A host-side I/O failure.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OpError {
        let what = what.into();
        move |source| OpError::Io { what, source }
    }

    /// The agent's error code behind this error, if any.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            OpError::Agent { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// The runtime: a state root and where the helper binaries are.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `--root`.
    pub root: StateRoot,
    /// The `husk-vmm` binary (next to `husk`, else `$PATH`).
    pub vmm_binary: PathBuf,
    /// The `husk` binary itself (for detached exec).
    pub self_binary: PathBuf,
    /// How long to wait on agents.
    pub deadlines: AgentDeadlines,
}

impl Runtime {
    /// A runtime on `root`, finding `husk-vmm` next to the running binary,
    /// else via `HUSK_VMM`, else in `$PATH`.
    pub fn new(root: PathBuf) -> Self {
        let self_binary = std::env::current_exe().unwrap_or_else(|_| "husk".into());
        let vmm_binary = std::env::var_os("HUSK_VMM")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let sibling = self_binary.with_file_name("husk-vmm");
                if sibling.is_file() {
                    sibling
                } else {
                    "husk-vmm".into()
                }
            });
        Runtime {
            root: StateRoot::new(root),
            vmm_binary,
            self_binary,
            deadlines: AgentDeadlines::default(),
        }
    }

    fn agent_addr(st: &ContainerState) -> AgentAddr {
        AgentAddr::HybridVsock {
            uds: st.vsock_uds.clone(),
            port: st.agent_port,
        }
    }

    /// A control connection to the agent of container `st`, its calls
    /// bounded by [`AgentDeadlines::call`] (`WaitProcess` excepted).
    fn agent(&self, st: &ContainerState) -> Result<AgentClient, OpError> {
        let mut c = AgentClient::connect(&Self::agent_addr(st), self.deadlines.connect).map_err(
            |source| OpError::Agent {
                id: st.id.clone(),
                source,
            },
        )?;
        c.set_call_timeout(self.deadlines.call);
        Ok(c)
    }
}
