//! The ttrpc task service: containerd's task API on the VM's agent.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use husk_protocol::client::{AgentAddr, AgentClient, ClientError};
use husk_protocol::{
    ContainerRef, CreateContainer, ErrorCode, ExecProcess, Request, ResizeTty, Response,
    SignalProcess, UpdateContainer, WaitOom,
};
use oci_spec::runtime::{LinuxResources, Spec};

use super::io::{attach, Pumps, StdioPaths};
use super::options::RuntimeOptions;
use super::vm::PodVm;
use super::{grouping, metrics, vm_dir, ShimError};
use crate::bundle::{Bundle, SHARE_TAG};
use crate::ops::AGENT_TIMEOUT;

/// The exit status reported when the agent cannot tell (the VM died).
const LOST_STATUS: i32 = 255;

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

#[derive(Debug, Clone)]
enum Life {
    Created,
    Running,
    Stopped { code: i32, at: Timestamp },
}

/// The lifecycle of one process, waited on by `Wait`.
#[derive(Debug)]
struct ProcStatus {
    life: Mutex<Life>,
    cv: Condvar,
}

impl ProcStatus {
    fn get(&self) -> Life {
        self.life.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, l: Life) {
        *self.life.lock().unwrap_or_else(|e| e.into_inner()) = l;
        self.cv.notify_all();
    }
    fn wait_stopped(&self) -> (i32, Timestamp) {
        let mut g = self.life.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Life::Stopped { code, at } = &*g {
                return (*code, at.clone());
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Proc {
    /// Ends every `Wait` on a process that is forgotten before it stopped
    /// (an exec created and never started, whose start failed): containerd
    /// waits on an exec before starting it, and a `Wait` left blocked
    /// keeps the shim's ttrpc server, and so the shim, from ever exiting.
    fn release_waiters(&self, code: i32, at: &Timestamp) {
        if !matches!(self.status.get(), Life::Stopped { .. }) {
            self.status.set(Life::Stopped {
                code,
                at: at.clone(),
            });
        }
    }
}

#[derive(Debug)]
struct Proc {
    pid: u32,
    stdio: StdioPaths,
    /// An exec's process, kept until the agent started it: a failed start
    /// can be tried again. `None` for the init process.
    pending: Option<oci_spec::runtime::Process>,
    /// A `Start` of it is under way, without the state lock: another
    /// `Start` or a `Delete` of it is refused meanwhile, and it stays
    /// [`Life::Created`] until the agent started it.
    starting: bool,
    status: Arc<ProcStatus>,
    /// Held by the `Start` of an exec across the agent's `ExecProcess` and
    /// the attach: a `CloseIO` of it waits for its stdin.
    pumps: Arc<Mutex<Pumps>>,
}

#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    share_mounts: Vec<PathBuf>,
    /// How many of the request's rootfs mounts are stacked on the bundle's
    /// `rootfs`.
    rootfs_mounts: usize,
    /// "" is the init process, else exec ids.
    procs: HashMap<String, Proc>,
    /// The OOM kills published for it.
    oom: Arc<OomEvents>,
    /// Its resources (`linux.resources`) as containerd asked for them: its
    /// spec's, then each `Update`'s.
    asked: LinuxResources,
    /// Its resources as its guest cgroup has them: `asked` with the
    /// cpuset fitted to the pod's VM ([`crate::sizing::fit_cpuset`]).
    applied: LinuxResources,
    /// Its cgroup in the guest is frozen (`Pause`): its running processes
    /// are `PAUSED`.
    paused: bool,
}

/// The OOM kills of one container, published as `TaskOOM` events (CRI
/// marks the container `OOMKilled`). The agent counts them in the
/// container's cgroup; each count above the last published one is
/// published once, by whichever sees it first: the container's OOM
/// watcher (a `WaitOom` long-poll while it runs, for a kill of any of its
/// processes) or its init's exit waiter (which asks for the count before
/// it publishes `TaskExit`, so an init the OOM killer killed has its
/// `TaskOOM` first).
#[derive(Debug, Default)]
struct OomEvents {
    /// The count last published.
    published: Mutex<u64>,
}

impl OomEvents {
    /// Publishes a `TaskOOM` for container `id` if `count` is news. The
    /// lock is held across the publish: an exit waiter reporting the same
    /// count returns only once the event is out, before its `TaskExit`.
    fn report(&self, publisher: &RemotePublisher, ns: &str, id: &str, count: u64) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if count <= *published {
            return;
        }
        *published = count;
        tracing::info!(id, oom_kills = count, "OOM kill in the container");
        let mut ev = TaskOOM::new();
        ev.container_id = id.to_owned();
        publish(publisher, ns, topics::TASK_OOM_EVENT_TOPIC, Box::new(ev));
    }
}

/// The `linux.resources` of a spec (none: empty).
fn resources_of(spec: &Spec) -> LinuxResources {
    spec.linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default()
}

/// The resources of an `Update` (`new`) as the guest gets them: a cpuset
/// or memory-node list containerd sends as the container has it (CRI
/// sends the whole set every time) keeps the value it was fitted to at
/// create.
fn for_guest(
    asked: &LinuxResources,
    applied: &LinuxResources,
    new: &LinuxResources,
) -> LinuxResources {
    let mut out = new.clone();
    let (was, fitted) = (
        asked.cpu().clone().unwrap_or_default(),
        applied.cpu().clone().unwrap_or_default(),
    );
    if let Some(mut c) = out.cpu().clone() {
        if c.cpus() == was.cpus() {
            c.set_cpus(fitted.cpus().clone());
        }
        if c.mems() == was.mems() {
            c.set_mems(fitted.mems().clone());
        }
        out.set_cpu(Some(c));
    }
    out
}

/// What [`TaskService::create_in_vm`] made: the init's pid, the share's
/// mounts, the init, and the resources asked for and applied.
struct Created {
    pid: u32,
    share_mounts: Vec<PathBuf>,
    init: Proc,
    asked: LinuxResources,
    applied: LinuxResources,
}

#[derive(Debug, Default)]
struct Inner {
    /// The pod's VM, cloned by the calls that use it without this lock.
    vm: Option<Arc<PodVm>>,
    containers: HashMap<String, Container>,
    /// The ids whose `Create` is under way. Booking the id is all a create
    /// does under this lock: the VM boot and the agent's `CreateContainer`
    /// run under [`TaskService::create_lock`] only, so that the pod's other
    /// containers answer meanwhile.
    creating: HashSet<String>,
    /// The ids whose `Delete` is under way: the task is out of
    /// [`Inner::containers`], its agent's `RemoveContainer` and its share's
    /// teardown run without this lock. The id stays reserved meanwhile.
    deleting: HashSet<String>,
    /// `Shutdown` let the shim go: no VM may be booted any more (it would
    /// outlive the shim).
    closed: bool,
}

/// Boots the pod's VM in a directory, from the first container's spec,
/// with a monitor binary and the shim's settings: [`PodVm::boot`], a fake
/// in the tests.
type BootFn = dyn Fn(&Path, &Spec, &Path, &dyn Fn(&str) -> Option<String>) -> Result<PodVm, ShimError>
    + Send
    + Sync;

/// Mounts one of a create's rootfs mounts on the bundle's `rootfs`:
/// [`mount_rootfs`], a fake in the tests.
type MountFn = dyn Fn(&Mount, &Path) -> Result<(), ShimError> + Send + Sync;

fn mount_rootfs(m: &Mount, rootfs: &Path) -> Result<(), ShimError> {
    containerd_shim::mount::mount_rootfs(
        Some(m.type_.as_str()).filter(|t| !t.is_empty()),
        Some(m.source.as_str()).filter(|s| !s.is_empty()),
        &m.options,
        rootfs,
    )
    .map_err(|e| ShimError::Invalid(format!("cannot mount the rootfs: {e}")))
}

/// Unmounts the `n` mounts stacked on `rootfs`, the last made first.
fn unmount_rootfs(rootfs: &Path, n: usize) {
    if n == 0 {
        return;
    }
    if let Err(e) = crate::bundle::unmount_all(&vec![rootfs.to_owned(); n]) {
        tracing::warn!(rootfs = %rootfs.display(), error = %e, "cannot unmount the rootfs");
    }
}

fn boot_pod_vm(
    dir: &Path,
    spec: &Spec,
    vmm: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PodVm, ShimError> {
    PodVm::boot(dir, spec, vmm, env)
}

/// The task service of one shim.
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    stopping: Arc<Mutex<Option<Arc<PodVm>>>>,
    root: PathBuf,
    vmm_binary: PathBuf,
    /// The shim's state, held only to read or update it: never across a VM
    /// boot, a call to the agent or a share's teardown.
    inner: Mutex<Inner>,
    /// Signalled whenever an id leaves [`Inner::creating`] or
    /// [`Inner::deleting`].
    settle: Condvar,
    /// One create at a time: the first boots the pod's VM, the next ones
    /// find it; a failed first create stops its VM before the next one
    /// runs. Held across the boot (up to its timeout + 30 s) and the
    /// agent's `CreateContainer`.
    create_lock: Mutex<()>,
    /// One `Update` at a time: the agent's cgroup and the resources kept
    /// here change together.
    update_lock: Mutex<()>,
    boot: Box<BootFn>,
    mount: Box<MountFn>,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.namespace)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn key(exec_id: &str) -> String {
    exec_id.to_owned()
}

fn opt(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

impl TaskService {
    /// A service publishing events through `publisher`, keeping VM state
    /// under `root`; on `Shutdown` it leaves the VM in `stopping` and
    /// signals `exit`.
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        stopping: Arc<Mutex<Option<Arc<PodVm>>>>,
        root: PathBuf,
    ) -> Self {
        let vmm_binary = crate::ops::Runtime::new(root.clone()).vmm_binary;
        TaskService {
            namespace,
            publisher: Arc::new(publisher),
            exit,
            stopping,
            root,
            vmm_binary,
            inner: Mutex::new(Inner::default()),
            settle: Condvar::new(),
            create_lock: Mutex::new(()),
            update_lock: Mutex::new(()),
            boot: Box::new(boot_pod_vm),
            mount: Box::new(mount_rootfs),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state lock once `id` is not being created or deleted: a call
    /// about a task waits for that task's own `Create` or `Delete` to end
    /// (and then sees the task, or that there is none), never for another
    /// one's.
    fn settled(&self, id: &str) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        while inner.creating.contains(id) || inner.deleting.contains(id) {
            inner = self.settle.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, ev);
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Result<u32, ShimError> {
        let id = req.id.clone();
        crate::state::validate_id(&id).map_err(|e| ShimError::Invalid(e.to_string()))?;
        {
            let mut inner = self.lock();
            if inner.closed {
                return Err(ShimError::Invalid(format!(
                    "task {id}: the shim is shutting down"
                )));
            }
            // An id being deleted stays reserved until its teardown ended.
            if inner.containers.contains_key(&id)
                || inner.deleting.contains(&id)
                || !inner.creating.insert(id.clone())
            {
                return Err(ShimError::AlreadyExists(format!("task {id}")));
            }
        }
        let serial = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.create_booked(req);
        let mut inner = self.lock();
        let r = match r {
            Ok((pid, container)) => {
                inner.containers.insert(id.clone(), container);
                inner.creating.remove(&id);
                drop(inner);
                Ok(pid)
            }
            Err(e) => {
                // A pod whose first container failed keeps no VM, unless
                // another create waits to use it (or a delete still tears
                // down in it: `Shutdown` stops it after). The id stays
                // booked until the VM is gone: `Shutdown` waits for it, and
                // the next create (after the create lock) boots a VM of its
                // own.
                let vm = if inner.containers.is_empty()
                    && inner.creating.len() == 1
                    && inner.deleting.is_empty()
                {
                    inner.vm.take()
                } else {
                    None
                };
                drop(inner);
                if let Some(vm) = vm {
                    tracing::info!(id, "the pod's first container failed: stopping the VM");
                    vm.shutdown();
                }
                self.lock().creating.remove(&id);
                Err(e)
            }
        };
        self.settle.notify_all();
        drop(serial);
        let pid = r?;
        let mut ev = TaskCreate::new();
        ev.container_id = id;
        ev.bundle = req.bundle.clone();
        ev.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        Ok(pid)
    }

    /// The create of a booked id, under the create lock: the rootfs
    /// mounts (stacked on the bundle's `rootfs`, in order), then
    /// [`TaskService::create_in_vm`]; undone on failure.
    fn create_booked(&self, req: &CreateTaskRequest) -> Result<(u32, Container), ShimError> {
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        let mut mounted = 0;
        for m in &req.rootfs {
            if let Err(e) = (self.mount)(m, &rootfs) {
                unmount_rootfs(&rootfs, mounted);
                return Err(e);
            }
            mounted += 1;
        }
        match self.create_in_vm(req, &bundle_dir) {
            Ok(c) => Ok((
                c.pid,
                Container {
                    bundle: bundle_dir,
                    share_mounts: c.share_mounts,
                    rootfs_mounts: mounted,
                    procs: HashMap::from([(String::new(), c.init)]),
                    oom: Arc::default(),
                    asked: c.asked,
                    applied: c.applied,
                    paused: false,
                },
            )),
            Err(e) => {
                unmount_rootfs(&rootfs, mounted);
                Err(e)
            }
        }
    }

    /// The pod's VM, booted by its first container. Only a create boots
    /// it or stops it, under the create lock, and `Shutdown` waits for the
    /// creates under way: no one else sets or takes it meanwhile.
    fn pod_vm(
        &self,
        req: &CreateTaskRequest,
        bundle_dir: &Path,
        bundle: &Bundle,
    ) -> Result<Arc<PodVm>, ShimError> {
        let vm = self.lock().vm.clone();
        if let Some(vm) = vm {
            return Ok(vm);
        }
        let dir = vm_dir(&self.root, &self.namespace, &grouping(bundle_dir, &req.id));
        let opts = RuntimeOptions::from_any(
            req.options
                .as_ref()
                .map(|a| a.value.as_slice())
                .unwrap_or_default(),
        )?;
        let vmm = opts
            .env("HUSK_VMM")
            .map_or_else(|| self.vmm_binary.clone(), PathBuf::from);
        let vm = Arc::new((self.boot)(&dir, &bundle.spec, &vmm, &|k| opts.env(k))?);
        self.lock().vm = Some(vm.clone());
        Ok(vm)
    }

    fn create_in_vm(
        &self,
        req: &CreateTaskRequest,
        bundle_dir: &Path,
    ) -> Result<Created, ShimError> {
        let id = &req.id;
        let mut bundle = Bundle::load(bundle_dir).map_err(crate::ops::OpError::from)?;
        // Before a VM is booted for it: a pod asking for the host's
        // network, IPC or PID namespace (hostNetwork...) is refused.
        crate::bundle::check_namespaces(&bundle.spec)
            .map_err(|e| ShimError::Invalid(format!("task {id}: {e}")))?;
        crate::unsupported::warn_ignored(&crate::unsupported::ignored(&bundle.spec), id);
        crate::unsupported::warn_ignored(&crate::unsupported::host_hooks(&bundle.spec), id);
        let vm = self.pod_vm(req, bundle_dir, &bundle)?;
        // The pod's first container was checked when its VM was sized;
        // every later one answers to the same operator rules.
        vm.size
            .policy
            .check(&bundle.spec)
            .map_err(crate::ops::OpError::from)?;
        // Its cpuset names vCPUs the pod's VM has (which its first
        // container sized).
        let asked = resources_of(&bundle.spec);
        crate::sizing::fit_cpuset(&mut bundle.spec, &vm.size).map_err(crate::ops::OpError::from)?;
        let applied = resources_of(&bundle.spec);
        let (spec, mounts) = vm.share_bundle(&bundle, id)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let create = CreateContainer {
            container_id: id.clone(),
            spec,
            shares: vec![SHARE_TAG.into()],
            stdio: stdio.spec(),
        };
        let created = vm
            .agent()
            .and_then(|mut a| Ok(a.call(Request::CreateContainer(Box::new(create)))?));
        let pid = match created {
            Ok(Response::Process { pid }) => pid as u32,
            Ok(other) => {
                vm.unshare_bundle(id, &mounts.points);
                return Err(ShimError::Invalid(format!("agent answered {other:?}")));
            }
            Err(e) => {
                vm.unshare_bundle(id, &mounts.points);
                return Err(e);
            }
        };
        let pumps = match attach(&vm.addr, id, None, &stdio) {
            Ok(p) => p,
            Err(e) => {
                let _ = vm.agent().and_then(|mut a| {
                    Ok(a.call(Request::RemoveContainer(ContainerRef {
                        container_id: id.clone(),
                    }))?)
                });
                vm.unshare_bundle(id, &mounts.points);
                return Err(e);
            }
        };
        tracing::info!(id, pid, "container created");
        Ok(Created {
            pid,
            share_mounts: mounts.points,
            init: Proc {
                pid,
                stdio,
                pending: None,
                starting: false,
                status: Arc::new(ProcStatus {
                    life: Mutex::new(Life::Created),
                    cv: Condvar::new(),
                }),
                pumps: Arc::new(Mutex::new(pumps)),
            },
            asked,
            applied,
        })
    }

    /// `Start`: the process is marked starting under the state lock; the
    /// agent starts it (and an exec's stdio is attached) without the lock;
    /// the outcome is recorded under it again. Calls about other tasks and
    /// processes never wait for the agent here.
    fn do_start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let (vm, pending, stdio, pumps) = {
            let mut inner = self.settled(id);
            let vm = inner
                .vm
                .clone()
                .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
            let p = proc_mut(&mut inner, id, exec_id)?;
            if p.starting {
                return Err(ShimError::Invalid(format!(
                    "process {id}/{exec_id} is being started"
                )));
            }
            if !matches!(p.status.get(), Life::Created) {
                return Err(ShimError::Invalid(format!(
                    "process {id}/{exec_id} was already started"
                )));
            }
            p.starting = true;
            (vm, p.pending.clone(), p.stdio.clone(), p.pumps.clone())
        };
        let started = start_in_vm(&vm, id, exec_id, pending, &stdio, &pumps);
        let mut inner = self.lock();
        // The init's exit and OOM kills are the container's.
        let oom = exec_id
            .is_empty()
            .then(|| inner.containers.get(id).map(|c| c.oom.clone()))
            .flatten();
        // Still there: `Delete` refuses a process being started.
        let p = proc_mut(&mut inner, id, exec_id)?;
        p.starting = false;
        let (pid, error) = match started {
            Ok(pid) => (pid.unwrap_or(p.pid), None),
            // The exec's process is kept: a later `Start` tries again.
            Err(StartError::NotStarted(e)) => return Err(e),
            Err(StartError::Unattached { pid, error }) => (pid, Some(error)),
        };
        p.pid = pid;
        p.pending = None;
        p.status.set(Life::Running);
        self.spawn_waiter(vm.addr.clone(), id, exec_id, p, oom.clone());
        drop(inner);
        if let Some(oom) = oom {
            self.spawn_oom_watcher(vm.addr.clone(), id, oom);
        }
        if let Some(e) = error {
            return Err(e);
        }
        let mut ev = TaskStart::new();
        ev.container_id = id.to_owned();
        ev.pid = pid;
        if exec_id.is_empty() {
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        }
        tracing::info!(id, exec_id, pid, "started");
        Ok(pid)
    }

    /// Waits for process `exec_id` of `id` to exit, on a thread of its
    /// own, then publishes its `TaskExit`. For the init (`oom` given), the
    /// container's OOM kills are asked for first and any not yet published
    /// is published before the exit.
    fn spawn_waiter(
        &self,
        addr: AgentAddr,
        id: &str,
        exec_id: &str,
        p: &Proc,
        oom: Option<Arc<OomEvents>>,
    ) {
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        let (status, pumps, pid) = (p.status.clone(), p.pumps.clone(), p.pid);
        let publisher = self.publisher.clone();
        let ns = self.namespace.clone();
        std::thread::spawn(move || {
            // WaitProcess blocks its connection: one per waiter.
            let waited = AgentClient::connect(&addr, AGENT_TIMEOUT)
                .and_then(|mut a| Ok((a.wait(&id, opt(&exec_id))?, a)));
            let code = match waited {
                Ok((code, mut agent)) => {
                    if let Some(oom) = &oom {
                        match final_oom_count(&mut agent, &id) {
                            Ok(n) => oom.report(&publisher, &ns, &id, n),
                            Err(e) => {
                                tracing::warn!(id, error = %crate::error_chain(&e), "cannot ask the container's OOM kills")
                            }
                        }
                    }
                    code
                }
                Err(e) => {
                    tracing::error!(id, exec_id, error = %crate::error_chain(&e), "lost the process");
                    LOST_STATUS
                }
            };
            pumps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(Duration::from_secs(5));
            let at = now_timestamp();
            status.set(Life::Stopped {
                code,
                at: at.clone(),
            });
            tracing::info!(id, exec_id, code, "exited");
            let mut ev = TaskExit::new();
            ev.container_id = id.clone();
            ev.id = if exec_id.is_empty() { id } else { exec_id };
            ev.pid = pid;
            ev.exit_status = code as u32;
            ev.exited_at = MessageField::some(at);
            publish(&publisher, &ns, topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev));
        });
    }

    /// Publishes the OOM kills of container `id` while it runs, on a
    /// thread of its own: `WaitOom` long-polls on a connection of its own
    /// until the init has exited (the exit waiter reports the last count).
    fn spawn_oom_watcher(&self, addr: AgentAddr, id: &str, oom: Arc<OomEvents>) {
        let id = id.to_owned();
        let publisher = self.publisher.clone();
        let ns = self.namespace.clone();
        std::thread::spawn(move || {
            let mut agent = match AgentClient::connect(&addr, AGENT_TIMEOUT) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(id, error = %crate::error_chain(&e), "cannot watch the container's OOM kills");
                    return;
                }
            };
            let mut after = 0;
            loop {
                match agent.wait_oom(&id, after) {
                    Ok((count, exited)) => {
                        oom.report(&publisher, &ns, &id, count);
                        if exited {
                            return;
                        }
                        if count <= after {
                            // Would answer again at once, for ever.
                            tracing::warn!(id, count, after, "the agent answered an OOM wait with no new kill: no longer watched");
                            return;
                        }
                        after = count;
                    }
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                        tracing::debug!(id, "the container is gone: OOM watch ends");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(id, error = %crate::error_chain(&e), "the container's OOM watch ends");
                        return;
                    }
                }
            }
        });
    }

    /// `Delete`: an exec is forgotten under the state lock. A task leaves
    /// the state under it, its id reserved in [`Inner::deleting`] while
    /// the agent's `RemoveContainer` and the share's teardown run without
    /// it: calls about that id wait for them, a `Create` of it is refused.
    fn do_delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, ShimError> {
        let mut inner = self.settled(id);
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
        let p = c
            .procs
            .get(&key(exec_id))
            .ok_or_else(|| ShimError::NotFound(format!("process {id}/{exec_id}")))?;
        // A start under way records its outcome in its process: that
        // process, and its task, stay until then.
        if p.starting {
            return Err(ShimError::Invalid(format!(
                "process {id}/{exec_id} is being started"
            )));
        }
        if exec_id.is_empty() {
            if let Some(e) = c.procs.iter().find(|(_, p)| p.starting).map(|(e, _)| e) {
                return Err(ShimError::Invalid(format!(
                    "process {id}/{e} is being started"
                )));
            }
        }
        let (code, at) = match p.status.get() {
            Life::Running => {
                return Err(ShimError::Invalid(format!(
                    "process {id}/{exec_id} is running: kill it first"
                )))
            }
            Life::Stopped { code, at } => (code, at),
            Life::Created => (0, now_timestamp()),
        };
        let mut r = DeleteResponse::new();
        r.pid = p.pid;
        r.exit_status = code as u32;
        r.exited_at = MessageField::some(at.clone());
        if !exec_id.is_empty() {
            if let Some(p) = c.procs.remove(exec_id) {
                p.release_waiters(code, &at);
            }
            return Ok(r);
        }
        let c = inner.containers.remove(id).expect("looked up above");
        for p in c.procs.values() {
            p.release_waiters(code, &at);
        }
        inner.deleting.insert(id.to_owned());
        let vm = inner.vm.clone();
        drop(inner);
        if let Some(vm) = vm {
            let removed = vm.agent().and_then(|mut a| {
                Ok(a.call(Request::RemoveContainer(ContainerRef {
                    container_id: id.to_owned(),
                }))?)
            });
            if let Err(e) = removed {
                tracing::warn!(id, error = %crate::error_chain(&e), "agent RemoveContainer");
            }
            vm.unshare_bundle(id, &c.share_mounts);
        }
        unmount_rootfs(&c.bundle.join("rootfs"), c.rootfs_mounts);
        self.lock().deleting.remove(id);
        self.settle.notify_all();
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_owned();
        ev.pid = r.pid;
        ev.exit_status = r.exit_status;
        ev.exited_at = r.exited_at.clone();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        tracing::info!(id, "deleted");
        Ok(r)
    }

    /// `Pause` (`pause`) or `Resume` of task `id`: its cgroup in the guest
    /// is frozen or thawed by the agent (a pod's VM holds the pod's other
    /// containers too, which run on), without the state lock; then the
    /// task is marked and the event published. Only a running task can be
    /// paused (as with containerd's runc shim), only a paused one resumed.
    fn do_pause(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let vm = {
            let inner = self.settled(id);
            let c = inner
                .containers
                .get(id)
                .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
            let running = c
                .procs
                .get("")
                .is_some_and(|p| matches!(p.status.get(), Life::Running));
            let refuse = |why: &str| Err(ShimError::FailedPrecondition(format!("task {id} {why}")));
            match (pause, c.paused) {
                (true, true) => return refuse("is paused already"),
                (true, false) if !running => {
                    return refuse("is not running: only a running task can be paused")
                }
                (false, false) => return refuse("is not paused"),
                _ => {}
            }
            inner
                .vm
                .clone()
                .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?
        };
        let r = ContainerRef {
            container_id: id.to_owned(),
        };
        vm.agent()?.call(if pause {
            Request::PauseContainer(r)
        } else {
            Request::ResumeContainer(r)
        })?;
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.paused = pause;
        }
        if pause {
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_owned();
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_owned();
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        }
        tracing::info!(id, "{}", if pause { "paused" } else { "resumed" });
        Ok(())
    }

    /// `Update`: containerd's `linux.resources` (an `Any`, see
    /// [`crate::resources::from_any`]) for task `id`, checked against the
    /// pod's VM (changed values only: it cannot grow), applied by the
    /// agent to the container's guest cgroup, then kept. One at a time.
    fn do_update(&self, req: &UpdateTaskRequest) -> Result<(), ShimError> {
        let id = &req.id;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::Invalid(format!("task {id}: the update has no resources")))?;
        let new = crate::resources::from_any(&any.type_url, &any.value)
            .map_err(|e| ShimError::Invalid(format!("task {id}: {e}")))?;
        let _serial = self.update_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (vm, asked, applied) = {
            let inner = self.settled(id);
            let c = inner
                .containers
                .get(id)
                .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
            let vm = inner
                .vm
                .clone()
                .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
            (vm, c.asked.clone(), c.applied.clone())
        };
        crate::resources::check(&asked, &new, (&vm.size).into())
            .map_err(|e| ShimError::Invalid(format!("task {id}: {e}")))?;
        let guest = for_guest(&asked, &applied, &new);
        vm.agent()?
            .call(Request::UpdateContainer(Box::new(UpdateContainer {
                container_id: id.clone(),
                resources: guest.clone(),
            })))?;
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.asked = new;
            c.applied = guest;
        }
        tracing::info!(id, "resources updated");
        Ok(())
    }

    /// One call to the agent, on a connection of its own, without the
    /// state lock.
    fn agent_call(&self, req: Request) -> Result<Response, ShimError> {
        let vm = self.lock().vm.clone();
        let vm = vm.ok_or_else(|| ShimError::NotFound("no VM".into()))?;
        Ok(vm.agent()?.call(req)?)
    }

    fn proc_info<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&Container, &Proc) -> T,
    ) -> Result<T, ShimError> {
        let inner = self.settled(id);
        let c = inner
            .containers
            .get(id)
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
        let p = c
            .procs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("process {id}/{exec_id}")))?;
        Ok(f(c, p))
    }
}

/// The process `exec_id` ("" for the init) of task `id`.
fn proc_mut<'a>(inner: &'a mut Inner, id: &str, exec_id: &str) -> Result<&'a mut Proc, ShimError> {
    inner
        .containers
        .get_mut(id)
        .and_then(|c| c.procs.get_mut(&key(exec_id)))
        .ok_or_else(|| ShimError::NotFound(format!("process {id}/{exec_id}")))
}

/// The OOM kill count of container `id` once its init has exited: the
/// agent answers `WaitOom` at once then, so a silent agent is an error
/// after [`AGENT_TIMEOUT`], never a `TaskExit` held up for ever.
fn final_oom_count(agent: &mut AgentClient, id: &str) -> Result<u64, ClientError> {
    let req = Request::WaitOom(WaitOom {
        container_id: id.to_owned(),
        after: 0,
    });
    match agent.call_with_timeout(req, AGENT_TIMEOUT)? {
        Response::OomKills { count, .. } => Ok(count),
        other => Err(ClientError::Unexpected(format!("{other:?}"))),
    }
}

/// How the agent's side of a `Start` failed.
enum StartError {
    /// Nothing was started: the process can be started again.
    NotStarted(ShimError),
    /// The exec runs (as `pid`) but its stdio could not be attached: it was
    /// killed, and is waited for as a started process.
    Unattached { pid: u32, error: ShimError },
}

/// The agent's side of a `Start`, without the state lock: the init's
/// `StartContainer`, or an exec's `ExecProcess` (from its `pending`
/// process) and the attach of its stdio, under its `pumps` lock. The exec's
/// pid, if one was started.
fn start_in_vm(
    vm: &PodVm,
    id: &str,
    exec_id: &str,
    pending: Option<oci_spec::runtime::Process>,
    stdio: &StdioPaths,
    pumps: &Mutex<Pumps>,
) -> Result<Option<u32>, StartError> {
    let not_started = |e: ShimError| StartError::NotStarted(e);
    let mut agent = vm.agent().map_err(not_started)?;
    if exec_id.is_empty() {
        agent.start(id).map_err(|e| not_started(e.into()))?;
        return Ok(None);
    }
    let process = pending.ok_or_else(|| {
        not_started(ShimError::Invalid(format!(
            "exec {id}/{exec_id} has no process"
        )))
    })?;
    // A `CloseIO` of this exec waits for its stdin to be attached.
    let mut pumps = pumps.lock().unwrap_or_else(|e| e.into_inner());
    let r = agent
        .call(Request::ExecProcess(Box::new(ExecProcess {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process,
            stdio: stdio.spec(),
            cgroup: None,
        })))
        .map_err(|e| not_started(e.into()))?;
    let Response::Process { pid } = r else {
        return Err(not_started(ShimError::Invalid(format!(
            "agent answered {r:?}"
        ))));
    };
    let pid = pid as u32;
    match attach(&vm.addr, id, Some(exec_id), stdio) {
        Ok(p) => {
            *pumps = p;
            Ok(Some(pid))
        }
        Err(error) => {
            // Not left to run without its stdio, nor started again: the
            // agent knows the exec id now.
            let killed = agent.call(Request::SignalProcess(SignalProcess {
                container_id: id.to_owned(),
                exec_id: Some(exec_id.to_owned()),
                signal: nix::sys::signal::Signal::SIGKILL as i32,
                all: false,
            }));
            if let Err(e) = killed {
                tracing::warn!(id, exec_id, error = %crate::error_chain(&e), "cannot kill the unattached exec");
            }
            Err(StartError::Unattached { pid, error })
        }
    }
}

fn publish(p: &RemotePublisher, ns: &str, topic: &str, ev: Box<dyn MessageDyn>) {
    if let Err(e) = p.publish(Context::default(), topic, ns, ev) {
        tracing::warn!(topic, error = %e, "cannot publish the event");
    }
}

impl Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        tracing::debug!(id = %req.id, bundle = %req.bundle, terminal = req.terminal, "create");
        let pid = self.do_create(&req)?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self.do_start(&req.id, &req.exec_id)?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(&req.id, &req.exec_id)?)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        // parse_json: an error names the field (`capabilities.bounding[0]`).
        let process: oci_spec::runtime::Process = crate::bundle::parse_json(&req.spec.value)
            .map_err(|e| ShimError::Invalid(format!("bad exec process spec: {e}")))?;
        crate::unsupported::warn_ignored(
            &crate::unsupported::ignored_in_process(&process, ""),
            &req.id,
        );
        let mut inner = self.settled(&req.id);
        let c = inner
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| ShimError::NotFound(format!("task {}", req.id)))?;
        if req.exec_id.is_empty() || c.procs.contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!("exec {}", req.exec_id)).into());
        }
        c.procs.insert(
            req.exec_id.clone(),
            Proc {
                pid: 0,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                pending: Some(process),
                starting: false,
                status: Arc::new(ProcStatus {
                    life: Mutex::new(Life::Created),
                    cv: Condvar::new(),
                }),
                pumps: Arc::default(),
            },
        );
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.proc_info(&req.id, &req.exec_id, |c, p| {
            let mut r = StateResponse::new();
            r.id = req.id.clone();
            r.exec_id = req.exec_id.clone();
            r.bundle = c.bundle.to_string_lossy().into_owned();
            r.pid = p.pid;
            r.stdin = p.stdio.stdin.clone();
            r.stdout = p.stdio.stdout.clone();
            r.stderr = p.stdio.stderr.clone();
            r.terminal = p.stdio.terminal;
            r.status = match p.status.get() {
                Life::Created => Status::CREATED,
                Life::Running if c.paused => Status::PAUSED,
                Life::Running => Status::RUNNING,
                Life::Stopped { code, at } => {
                    r.exit_status = code as u32;
                    r.exited_at = MessageField::some(at.clone());
                    Status::STOPPED
                }
            }
            .into();
            r
        })?)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let r = self.agent_call(Request::ListProcesses(ContainerRef {
            container_id: req.id.clone(),
        }))?;
        let mut out = PidsResponse::new();
        if let Response::Processes { processes } = r {
            for p in processes {
                let mut i = ProcessInfo::new();
                i.pid = p.pid as u32;
                out.processes.push(i);
            }
        }
        Ok(out)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let stopped = self.proc_info(&req.id, &req.exec_id, |_, p| {
            matches!(p.status.get(), Life::Stopped { .. })
        })?;
        if stopped && !req.all {
            return Err(ShimError::NotFound(format!(
                "process {}/{} already finished",
                req.id, req.exec_id
            ))
            .into());
        }
        self.agent_call(Request::SignalProcess(SignalProcess {
            container_id: req.id.clone(),
            exec_id: opt(&req.exec_id).map(str::to_owned),
            signal: req.signal as i32,
            all: req.all,
        }))?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.agent_call(Request::ResizeTty(ResizeTty {
            container_id: req.id.clone(),
            exec_id: opt(&req.exec_id).map(str::to_owned),
            rows: u16::try_from(req.height).unwrap_or(u16::MAX),
            cols: u16::try_from(req.width).unwrap_or(u16::MAX),
        }))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if !req.stdin {
            return Ok(Empty::new());
        }
        let pumps = self.proc_info(&req.id, &req.exec_id, |_, p| p.pumps.clone())?;
        let stdin = pumps.lock().unwrap_or_else(|e| e.into_inner()).take_stdin();
        if let Some(stdin) = stdin {
            stdin.close();
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let status = self.proc_info(&req.id, &req.exec_id, |_, p| p.status.clone())?;
        let (code, at) = status.wait_stopped();
        let mut r = WaitResponse::new();
        r.exit_status = code as u32;
        r.exited_at = MessageField::some(at.clone());
        Ok(r)
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let r = self.agent_call(Request::Stats(ContainerRef {
            container_id: req.id.clone(),
        }))?;
        let Response::Stats(s) = r else {
            return Err(ShimError::Invalid(format!("agent answered {r:?}")).into());
        };
        let any = containerd_shim::util::convert_to_any(Box::new(metrics::to_metrics(&s)))
            .map_err(|e| ShimError::Invalid(e.to_string()))?;
        let mut out = StatsResponse::new();
        out.stats = MessageField::some(any);
        Ok(out)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.do_pause(&req.id, false)?;
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.do_update(&req)?;
        Ok(Empty::new())
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.proc_info(&req.id, "", |_, p| p.pid).unwrap_or(0);
        r.version = "2".into();
        Ok(r)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let mut inner = self.lock();
        loop {
            if !inner.containers.is_empty() {
                return Ok(Empty::new());
            }
            // A create under way may leave a container (the shim stays)
            // or fail and stop the VM it booted: its outcome decides. A
            // delete under way still uses the VM.
            if inner.creating.is_empty() && inner.deleting.is_empty() {
                break;
            }
            inner = self.settle.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner.closed = true;
        // Stopping the VM takes longer than containerd waits for this
        // call: the shim's main thread does it after the exit signal.
        if let Some(vm) = inner.vm.take() {
            tracing::info!("last task gone: stopping the VM");
            *self.stopping.lock().unwrap_or_else(|e| e.into_inner()) = Some(vm);
        }
        self.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
