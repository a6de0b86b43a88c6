//! The container engine: turns a `CreateContainer` into a built, waiting
//! init process, starts it, and execs further processes into it.
//!
//! The spec-to-syscall mapping lives in one small module per area; this
//! module forks the child ([`child`]) and speaks to it over a sync socket
//! ([`sync`]) until it is built, started or failed.

pub mod capabilities;
pub mod cgroups;
pub mod child;
pub mod devices;
pub mod hooks;
pub mod mounts;
pub mod namespaces;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod stdio;
pub mod sync;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::{
    ContainerStatus, CreateContainer, ErrorCode, ExecProcess, ProtocolError, StreamKind,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

use self::cgroups::CgroupRoot;
use self::stdio::AgentStdio;
use self::sync::{send_msg, ChildMsg, ParentMsg, SyncError};

/// A failed step of building or starting a container (in the child).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A syscall failed; `what` names the step and the thing.
    #[error("{what}")]
    Sys {
        /// The step, e.g. "mount proc on /r/proc".
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The spec asks for something impossible.
    #[error("{0}")]
    Invalid(String),
    /// The exec itself failed.
    #[error("{0}")]
    Exec(String),
    /// An in-container OCI hook failed or timed out.
    #[error("{0}")]
    Hook(String),
}

impl SetupError {
    /// The protocol code this failure is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            SetupError::Sys { .. } => ErrorCode::Internal,
            SetupError::Invalid(_) => ErrorCode::InvalidArgument,
            SetupError::Exec(_) => ErrorCode::ExecFailed,
            SetupError::Hook(_) => ErrorCode::FailedPrecondition,
        }
    }

    /// The message with its cause chain.
    pub fn to_message(&self) -> String {
        match self {
            SetupError::Sys { what, source } => format!("{what}: {source}"),
            other => other.to_string(),
        }
    }
}

/// Maps a failed call to a [`SetupError::Sys`] naming `what`.
pub fn sys<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> SetupError {
    let what = what.into();
    move |e| SetupError::Sys {
        what,
        source: e.into(),
    }
}

/// One process of a container, as the agent tracks it.
#[derive(Debug)]
pub struct ProcessState {
    /// Its pid in the agent's pid namespace.
    pub pid: i32,
    /// Set once reaped.
    pub exit_status: Option<i32>,
    /// The agent's ends of its stdio, until a stream attaches to them.
    pub stdio: AgentStdio,
    /// Streams already attached (each at most once).
    pub attached: HashSet<StreamKind>,
}

/// A container in the VM.
#[derive(Debug)]
pub struct Container {
    /// Its id.
    pub id: String,
    /// Its spec.
    pub spec: Spec,
    /// Lifecycle state.
    pub status: ContainerStatus,
    /// The init process.
    pub init: ProcessState,
    /// Exec'd processes by exec id.
    pub execs: HashMap<String, ProcessState>,
    /// Its cgroup, where the agent has cgroup2.
    pub cgroup: Option<PathBuf>,
    /// Its cgroup is frozen, or freezing ([`set_paused`]).
    pub paused: bool,
    sync: Option<OwnedFd>,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, msg)
}

/// Checks what can be checked before forking.
pub fn validate(req: &CreateContainer) -> Result<PathBuf, ProtocolError> {
    let id = &req.container_id;
    if id.is_empty() || id.contains('/') || id == "." || id == ".." || id.len() > 128 {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("invalid container id {id:?}"),
        ));
    }
    let root = req
        .spec
        .root()
        .as_ref()
        .ok_or_else(|| err(ErrorCode::InvalidArgument, "spec has no root"))?
        .path()
        .clone();
    if !root.is_absolute() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "root.path {} must be an absolute guest path",
                root.display()
            ),
        ));
    }
    if !root.is_dir() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "rootfs {} does not exist or is not a directory",
                root.display()
            ),
        ));
    }
    let Some(process) = req.spec.process() else {
        return Err(err(ErrorCode::InvalidArgument, "spec has no process"));
    };
    capabilities::check(process.capabilities()).map_err(|e| err(e.code(), e.to_message()))?;
    process::dedup_env(process.env().as_deref().unwrap_or_default())
        .map_err(|e| err(e.code(), e.to_message()))?;
    let has_ns = |t: LinuxNamespaceType| {
        req.spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    if !has_ns(LinuxNamespaceType::Mount) {
        return Err(err(
            ErrorCode::InvalidArgument,
            "spec has no mount namespace",
        ));
    }
    let names_host = req.spec.hostname().is_some() || req.spec.domainname().is_some();
    if names_host && !has_ns(LinuxNamespaceType::Uts) {
        return Err(err(
            ErrorCode::InvalidArgument,
            "hostname or domainname set without a uts namespace",
        ));
    }
    Ok(root)
}

/// Builds a container: cgroup, then the forked init, which waits for
/// [`start`] once built.
pub fn create(
    cg_root: Option<&CgroupRoot>,
    req: &CreateContainer,
) -> Result<Container, ProtocolError> {
    let rootfs = validate(req)?;
    let spec = &req.spec;
    let linux = spec.linux().clone().unwrap_or_default();
    // Compiled again in the child; here for an early error and the warning.
    if let Some(profile) = linux.seccomp() {
        let (_, unknown) = seccomp::compile(profile)
            .map_err(|e| err(ErrorCode::InvalidArgument, e.to_message()))?;
        if !unknown.is_empty() {
            tracing::warn!(id = %req.container_id, ?unknown, "seccomp: unknown syscalls skipped");
        }
    }
    let cgroup = match cg_root {
        Some(root) => {
            let dir = root
                .path_for(&req.container_id, linux.cgroups_path().as_deref())
                .map_err(|e| err(ErrorCode::InvalidArgument, e.to_string()))?;
            root.create(&dir)
                .map_err(|e| err(ErrorCode::Internal, chain(&e)))?;
            if let Some(r) = linux.resources() {
                if let Err(e) = cgroups::apply(&dir, r) {
                    let _ = root.remove(&dir);
                    return Err(err(ErrorCode::InvalidArgument, chain(&e)));
                }
            }
            Some(dir)
        }
        None => {
            if linux.resources().is_some() {
                tracing::warn!(id = %req.container_id, "no cgroup2 hierarchy: linux.resources ignored");
            }
            None
        }
    };
    let user_ns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let missing = devices::left_out(linux.devices().as_deref().unwrap_or_default(), user_ns);
    if !missing.is_empty() {
        tracing::warn!(
            id = %req.container_id,
            ?missing,
            "linux.devices: left out (a user namespace cannot mknod, and the guest has no such \
             device to bind)"
        );
    }
    let process = spec.process().clone().unwrap_or_default();
    let mode = child::Mode::Create { rootfs: &rootfs };
    let id = &req.container_id;
    match spawn(mode, id, spec, &process, cgroup.as_deref(), req.stdio, true) {
        Ok((pid, stdio, sync)) => Ok(Container {
            id: req.container_id.clone(),
            spec: spec.clone(),
            status: ContainerStatus::Created,
            init: ProcessState {
                pid,
                exit_status: None,
                stdio,
                attached: HashSet::new(),
            },
            execs: HashMap::new(),
            cgroup,
            paused: false,
            sync: Some(sync),
        }),
        Err(e) => {
            if let (Some(dir), Some(root)) = (&cgroup, cg_root) {
                let _ = root.remove(dir);
            }
            Err(e)
        }
    }
}

/// How long a created container's init may take from `Start` to its
/// exec (or its error) before the start fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Tells a created container's init to exec; returns its sync socket,
/// which becomes readable with the outcome (an error message, or EOF once
/// the exec closed it). The server does not wait for it: it polls the
/// socket (for up to [`START_TIMEOUT`]) and calls [`start_finish`], so a
/// slow init holds up no other container.
pub fn start_begin(c: &mut Container) -> Result<OwnedFd, ProtocolError> {
    if c.paused {
        return Err(paused(c));
    }
    if c.status != ContainerStatus::Created {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {} is {:?}, not created", c.id, c.status),
        ));
    }
    let sync = c
        .sync
        .take()
        .ok_or_else(|| err(ErrorCode::Internal, "init sync socket lost"))?;
    send_msg(&sync, &ParentMsg::Start).map_err(|e| err(ErrorCode::Internal, chain(&e)))?;
    Ok(sync)
}

/// Records the outcome of a start [`start_begin`] began: what its sync
/// socket said (`Ok(None)`: EOF, it exec'd; an error message from the
/// child, e.g. ExecFailed with the errno for a missing program).
pub fn start_finish(
    c: &mut Container,
    reply: Result<Option<ChildMsg>, SyncError>,
) -> Result<(), ProtocolError> {
    match reply {
        Ok(None) => {
            c.status = ContainerStatus::Running;
            Ok(())
        }
        Ok(Some(ChildMsg::Error { code, message })) => Err(err(code, message)),
        Ok(Some(other)) => Err(err(
            ErrorCode::Internal,
            format!("unexpected {other:?} from init"),
        )),
        Err(e) => Err(err(ErrorCode::Internal, chain(&e))),
    }
}

/// Starts a further process in a running container.
pub fn exec(c: &Container, req: &ExecProcess) -> Result<ProcessState, ProtocolError> {
    // It would join a frozen cgroup before it reports (the agent would
    // wait on it).
    if c.paused {
        return Err(paused(c));
    }
    if c.status != ContainerStatus::Running {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!("container {} is {:?}, not running", c.id, c.status),
        ));
    }
    let process = capabilities::for_exec(&req.process, &c.spec);
    capabilities::check(process.capabilities()).map_err(|e| err(e.code(), e.to_message()))?;
    process::dedup_env(process.env().as_deref().unwrap_or_default())
        .map_err(|e| err(e.code(), e.to_message()))?;
    let cgroup = match (&req.cgroup, &c.cgroup) {
        (None, base) => base.clone(),
        (Some(sub), Some(base)) => Some(
            cgroups::sub_cgroup(base, sub)
                .map_err(|e| err(ErrorCode::InvalidArgument, chain(&e)))?,
        ),
        (Some(sub), None) => {
            return Err(err(
                ErrorCode::FailedPrecondition,
                format!(
                    "container {} has no cgroup (the guest has no cgroup2 hierarchy): \
                     cannot run the exec in sub-cgroup {sub:?}",
                    c.id
                ),
            ))
        }
    };
    let mode = child::Mode::Exec {
        init_pid: c.init.pid,
    };
    let (pid, stdio, _sync) = spawn(
        mode,
        &c.id,
        &c.spec,
        &process,
        cgroup.as_deref(),
        req.stdio,
        false,
    )?;
    Ok(ProcessState {
        pid,
        exit_status: None,
        stdio,
        attached: HashSet::new(),
    })
}

fn paused(c: &Container) -> ProtocolError {
    err(
        ErrorCode::FailedPrecondition,
        format!("container {} is paused: resume it first", c.id),
    )
}

/// The container's cgroup, for what needs one (`what`: "paused").
fn cgroup_for<'a>(c: &'a Container, what: &str) -> Result<&'a Path, ProtocolError> {
    c.cgroup.as_deref().ok_or_else(|| {
        err(
            ErrorCode::FailedPrecondition,
            format!(
                "container {} has no cgroup (the guest has no cgroup2 hierarchy): it cannot be {what}",
                c.id
            ),
        )
    })
}

/// Freezes (`true`: `PauseContainer`) or thaws a container's cgroup;
/// returns the cgroup, whose `cgroup.events` says when the kernel is done
/// ([`cgroups::is_frozen`]). A created or running container can be
/// paused, a paused one resumed.
pub fn set_paused(c: &mut Container, paused: bool) -> Result<PathBuf, ProtocolError> {
    let dir = cgroup_for(c, if paused { "paused" } else { "resumed" })?.to_path_buf();
    let refuse = |why: &str| {
        err(
            ErrorCode::FailedPrecondition,
            format!("container {} {why}", c.id),
        )
    };
    if paused {
        if c.paused {
            return Err(refuse("is paused already"));
        }
        if !matches!(
            c.status,
            ContainerStatus::Created | ContainerStatus::Running
        ) {
            return Err(refuse(&format!(
                "is {:?}: only a created or running container can be paused",
                c.status
            )));
        }
    } else if !c.paused {
        return Err(refuse("is not paused"));
    }
    cgroups::set_frozen(&dir, paused).map_err(|e| err(ErrorCode::Internal, chain(&e)))?;
    c.paused = paused;
    Ok(dir)
}

/// Applies new resources to a created, running or paused container's
/// cgroup (`UpdateContainer`): checked against the guest
/// ([`cgroups::check_update`]: a VM cannot grow), written with the
/// create's translation (all or nothing, [`cgroups::update`]), and kept
/// in the container's spec.
pub fn update(c: &mut Container, resources: &LinuxResources) -> Result<(), ProtocolError> {
    if c.status == ContainerStatus::Stopped {
        return Err(err(
            ErrorCode::FailedPrecondition,
            format!(
                "container {} has stopped: its resources cannot be updated",
                c.id
            ),
        ));
    }
    let dir = cgroup_for(c, "updated")?;
    let old = c.spec.linux().as_ref().and_then(|l| l.resources().clone());
    let cap = cgroups::Capacity::read().map_err(|e| err(ErrorCode::Internal, chain(&e)))?;
    cgroups::check_update(old.as_ref(), resources, &cap)
        .map_err(|e| err(ErrorCode::InvalidArgument, chain(&e)))?;
    cgroups::update(dir, resources).map_err(|e| err(ErrorCode::InvalidArgument, chain(&e)))?;
    let mut linux = c.spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.clone()));
    c.spec.set_linux(Some(linux));
    Ok(())
}

/// Forks the child and follows it until it is built (`Ready`) or exec'd.
fn spawn(
    mode: child::Mode<'_>,
    id: &str,
    spec: &Spec,
    process: &Process,
    cgroup: Option<&Path>,
    stdio_spec: husk_protocol::StdioSpec,
    create: bool,
) -> Result<(i32, AgentStdio, OwnedFd), ProtocolError> {
    let internal = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| err(ErrorCode::Internal, format!("{what}: {e}"))
    };
    let size = process
        .console_size()
        .as_ref()
        .map(|b| (b.height() as u16, b.width() as u16));
    let (mut agent_stdio, child_stdio) =
        stdio::make(stdio_spec, process.terminal().unwrap_or(false)).map_err(internal("stdio"))?;
    let (ours, theirs) = sync::pair().map_err(internal("sync socketpair"))?;
    let c1 = match crate::sys::fork().map_err(internal("fork"))? {
        ForkResult::Child => {
            drop(ours);
            child::run(child::ChildArgs {
                mode,
                id,
                spec,
                process,
                cgroup,
                stdio: child_stdio,
                sync: theirs,
            })
        }
        ForkResult::Parent { child } => child,
    };
    drop(theirs);
    drop(child_stdio);
    let linux = spec.linux().clone().unwrap_or_default();
    let mut pid: Option<i32> = None;
    // The init (forked by the intermediate child) may report Ready before
    // the intermediate child got to report its pid: wait for both.
    let mut ready = false;
    let fail = |pid: Option<i32>, e: ProtocolError| {
        let _ = kill(c1, Signal::SIGKILL);
        let _ = waitpid(c1, None);
        if let Some(p) = pid.filter(|p| *p != c1.as_raw()) {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(p), None);
        }
        Err(e)
    };
    loop {
        let (msg, fd) = match sync::recv_msg_fd::<ChildMsg>(&ours, Duration::from_secs(30)) {
            Ok(Some(m)) => m,
            Ok(None) if !create && pid.is_some() => break,
            Ok(None) => {
                return fail(
                    pid,
                    err(ErrorCode::Internal, "container process exited during setup"),
                )
            }
            Err(e) => return fail(pid, err(ErrorCode::Internal, chain(&e))),
        };
        match (msg, fd) {
            (ChildMsg::PtyMaster, Some(master)) => {
                if let Err(e) = stdio::adopt_master(&mut agent_stdio, master, size) {
                    return fail(pid, err(ErrorCode::Internal, format!("pty master: {e}")));
                }
            }
            (ChildMsg::MapIds, _) => {
                if let Err(e) = namespaces::write_id_maps(c1.as_raw(), &linux) {
                    let e = err(
                        ErrorCode::InvalidArgument,
                        format!("write uid/gid maps: {e}"),
                    );
                    return fail(pid, e);
                }
                if let Err(e) = send_msg(&ours, &ParentMsg::Continue) {
                    return fail(pid, err(ErrorCode::Internal, chain(&e)));
                }
            }
            (ChildMsg::Pid(p), _) => {
                if p != c1.as_raw() {
                    let _ = waitpid(c1, None);
                }
                pid = Some(p);
                if ready {
                    break;
                }
            }
            (ChildMsg::Ready, _) if create => {
                ready = true;
                if pid.is_some() {
                    break;
                }
            }
            (ChildMsg::Error { code, message }, _) => return fail(pid, err(code, message)),
            (other, _) => {
                let e = err(
                    ErrorCode::Internal,
                    format!("unexpected {other:?} from child"),
                );
                return fail(pid, e);
            }
        }
    }
    let pid = pid.ok_or_else(|| err(ErrorCode::Internal, "child sent no pid"))?;
    Ok((pid, agent_stdio, ours))
}

/// Formats an error with its sources.
pub use husk_protocol::error_chain as chain;

impl Container {
    /// A process by exec id (`None`: init).
    pub fn process(&self, exec_id: Option<&str>) -> Option<&ProcessState> {
        match exec_id {
            None => Some(&self.init),
            Some(e) => self.execs.get(e),
        }
    }

    /// A process by exec id, mutably.
    pub fn process_mut(&mut self, exec_id: Option<&str>) -> Option<&mut ProcessState> {
        match exec_id {
            None => Some(&mut self.init),
            Some(e) => self.execs.get_mut(e),
        }
    }

    /// Every live pid of the container: its cgroup's members, else the
    /// tracked processes, the members of their sessions (each made its
    /// own with setsid) and their descendants.
    pub fn pids(&self) -> Vec<i32> {
        if let Some(cg) = &self.cgroup {
            return cgroups::procs(cg);
        }
        let roots: Vec<i32> = std::iter::once(&self.init)
            .chain(self.execs.values())
            .filter(|p| p.exit_status.is_none())
            .map(|p| p.pid)
            .collect();
        members(&roots, &roots)
    }

    /// SIGKILLs what is left of the container once its init has exited
    /// (just reaped): runc's shim kills the rest of a container without a
    /// PID namespace of its own when its init exits (the kernel does it
    /// for one that has its own), so that nothing keeps the container's
    /// stdio open or runs on unseen. Through `cgroup.kill` where the
    /// kernel has it (it also catches processes forking meanwhile), else
    /// one signal per process of [`Container::pids`] and of the init's
    /// session (its orphans). Returns how many were signalled (`None`:
    /// the whole cgroup).
    pub fn kill_rest(&self) -> Option<usize> {
        if let Some(cg) = &self.cgroup {
            match fs::write(cg.join("cgroup.kill"), "1") {
                Ok(()) => return None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    container = %self.id,
                    error = %e,
                    "cgroup.kill failed: killing the container's processes one by one"
                ),
            }
        }
        let mut pids = self.pids();
        if self.cgroup.is_none() {
            // The init is reaped: its orphans are found by its session,
            // which stays theirs (its id is not reused while they live).
            let roots: Vec<i32> = self
                .execs
                .values()
                .filter(|p| p.exit_status.is_none())
                .map(|p| p.pid)
                .collect();
            let mut sessions = roots.clone();
            sessions.push(self.init.pid);
            pids.extend(members(&roots, &sessions));
        }
        pids.sort_unstable();
        pids.dedup();
        for p in &pids {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        Some(pids.len())
    }

    /// Drops the init's sync socket (an unstarted init then exits).
    pub fn drop_sync(&mut self) {
        self.sync = None;
    }

    /// Thaws a paused container, best effort: before its removal, so that
    /// its killed processes go at once (cgroup v2 delivers SIGKILL to
    /// frozen processes too), or when a pause did not take.
    pub fn thaw(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        if let Some(dir) = &self.cgroup {
            if let Err(e) = cgroups::set_frozen(dir, false) {
                tracing::warn!(container = %self.id, error = %chain(&e), "cannot thaw the container");
            }
        }
    }

    /// The status [`husk_protocol::Request::State`] reports: `Paused`
    /// while its cgroup is frozen, until its init has exited.
    pub fn reported_status(&self) -> ContainerStatus {
        if self.paused && self.status != ContainerStatus::Stopped {
            ContainerStatus::Paused
        } else {
            self.status
        }
    }
}

/// `/proc/PID/stat` of `pid`, parsed; `None` when it is gone.
pub fn proc_stat(pid: i32) -> Option<procfs_core::process::Stat> {
    use procfs_core::FromRead;
    let f = fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    procfs_core::process::Stat::from_read(f).ok()
}

/// `roots` and all their descendants, from /proc.
pub fn descendants(roots: &[i32]) -> Vec<i32> {
    members(roots, &[])
}

/// `roots`, the processes of the sessions `sessions` (ids in the agent's
/// PID namespace), and all their descendants, from /proc.
pub fn members(roots: &[i32], sessions: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut todo: Vec<i32> = roots.to_vec();
    if let Ok(rd) = fs::read_dir("/proc") {
        let pids = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
        // A process gone since the listing has no stat: skipped.
        for stat in pids.filter_map(proc_stat) {
            children.entry(stat.ppid).or_default().push(stat.pid);
            if sessions.contains(&stat.session) {
                todo.push(stat.pid);
            }
        }
    }
    let mut out = Vec::new();
    while let Some(p) = todo.pop() {
        if out.contains(&p) || !Path::new(&format!("/proc/{p}")).exists() {
            continue;
        }
        out.push(p);
        todo.extend(children.get(&p).into_iter().flatten());
    }
    out
}
