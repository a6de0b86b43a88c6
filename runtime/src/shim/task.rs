//! The ttrpc task service: containerd's task API on the VM's agent.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use husk_protocol::{
    ContainerRef, CreateContainer, ExecProcess, Request, ResizeTty, Response, SignalProcess,
};

use super::io::{attach, Pumps, StdioPaths};
use super::options::RuntimeOptions;
use super::vm::{PodVm, AGENT_TIMEOUT};
use super::{grouping, metrics, vm_dir, ShimError};
use crate::bundle::{Bundle, SHARE_TAG};

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

#[derive(Debug)]
struct Proc {
    pid: u32,
    stdio: StdioPaths,
    /// An exec's process, until it is started.
    pending: Option<oci_spec::runtime::Process>,
    status: Arc<ProcStatus>,
    pumps: Arc<Mutex<Pumps>>,
}

#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    share_mounts: Vec<PathBuf>,
    rootfs_mounted: bool,
    /// "" is the init process, else exec ids.
    procs: HashMap<String, Proc>,
}

#[derive(Debug, Default)]
struct Inner {
    vm: Option<PodVm>,
    containers: HashMap<String, Container>,
}

/// The task service of one shim.
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    exit: Arc<ExitSignal>,
    stopping: Arc<Mutex<Option<PodVm>>>,
    root: PathBuf,
    vmm_binary: PathBuf,
    inner: Arc<Mutex<Inner>>,
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
        stopping: Arc<Mutex<Option<PodVm>>>,
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
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, ev);
    }

    fn do_create(&self, req: &CreateTaskRequest) -> Result<u32, ShimError> {
        let id = req.id.clone();
        crate::state::validate_id(&id).map_err(|e| ShimError::Invalid(e.to_string()))?;
        let mut inner = self.lock();
        if inner.containers.contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!("task {id}")));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        let mut mounted = false;
        for m in &req.rootfs {
            containerd_shim::mount::mount_rootfs(
                Some(m.type_.as_str()).filter(|t| !t.is_empty()),
                Some(m.source.as_str()).filter(|s| !s.is_empty()),
                &m.options,
                &rootfs,
            )
            .map_err(|e| ShimError::Invalid(format!("cannot mount the rootfs: {e}")))?;
            mounted = true;
        }
        let undo_rootfs = |mounted: bool| {
            if mounted {
                let _ = crate::bundle::unmount_all(std::slice::from_ref(&rootfs));
            }
        };
        let r = self.create_in_vm(&mut inner, req, &bundle_dir);
        match r {
            Ok((pid, share_mounts, proc_)) => {
                inner.containers.insert(
                    id.clone(),
                    Container {
                        bundle: bundle_dir,
                        share_mounts,
                        rootfs_mounted: mounted,
                        procs: HashMap::from([(String::new(), proc_)]),
                    },
                );
                drop(inner);
                let mut ev = TaskCreate::new();
                ev.container_id = id;
                ev.bundle = req.bundle.clone();
                ev.pid = pid;
                self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
                Ok(pid)
            }
            Err(e) => {
                undo_rootfs(mounted);
                if inner.containers.is_empty() {
                    if let Some(mut vm) = inner.vm.take() {
                        vm.shutdown();
                    }
                }
                Err(e)
            }
        }
    }

    fn create_in_vm(
        &self,
        inner: &mut Inner,
        req: &CreateTaskRequest,
        bundle_dir: &std::path::Path,
    ) -> Result<(u32, Vec<PathBuf>, Proc), ShimError> {
        let id = &req.id;
        let bundle = Bundle::load(bundle_dir).map_err(crate::ops::OpError::from)?;
        if inner.vm.is_none() {
            let dir = vm_dir(&self.root, &self.namespace, &grouping(bundle_dir, id));
            let opts = RuntimeOptions::from_any(
                req.options
                    .as_ref()
                    .map(|a| a.value.as_slice())
                    .unwrap_or_default(),
            )?;
            let vmm = opts
                .env("HUSK_VMM")
                .map_or_else(|| self.vmm_binary.clone(), PathBuf::from);
            inner.vm = Some(PodVm::boot(&dir, &bundle.spec, &vmm, |k| opts.env(k))?);
        }
        let vm = inner.vm.as_ref().expect("booted above");
        // The pod's first container was checked when its VM was sized;
        // every later one answers to the same operator rules.
        vm.size
            .policy
            .check(&bundle.spec)
            .map_err(crate::ops::OpError::from)?;
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
        Ok((
            pid,
            mounts.points,
            Proc {
                pid,
                stdio,
                pending: None,
                status: Arc::new(ProcStatus {
                    life: Mutex::new(Life::Created),
                    cv: Condvar::new(),
                }),
                pumps: Arc::new(Mutex::new(pumps)),
            },
        ))
    }

    fn do_start(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let mut inner = self.lock();
        let vm = inner
            .vm
            .as_ref()
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
        let mut agent = vm.agent()?;
        let addr = vm.addr.clone();
        let p = inner
            .containers
            .get_mut(id)
            .and_then(|c| c.procs.get_mut(&key(exec_id)))
            .ok_or_else(|| ShimError::NotFound(format!("process {id}/{exec_id}")))?;
        if !matches!(p.status.get(), Life::Created) {
            return Err(ShimError::Invalid(format!(
                "process {id}/{exec_id} was already started"
            )));
        }
        match p.pending.take() {
            None => agent.start(id)?,
            Some(process) => {
                let r = agent.call(Request::ExecProcess(Box::new(ExecProcess {
                    container_id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                    process,
                    stdio: p.stdio.spec(),
                    cgroup: None,
                })))?;
                if let Response::Process { pid } = r {
                    p.pid = pid as u32;
                }
                let pumps = attach(&addr, id, Some(exec_id), &p.stdio)?;
                *p.pumps.lock().unwrap_or_else(|e| e.into_inner()) = pumps;
            }
        }
        p.status.set(Life::Running);
        let pid = p.pid;
        self.spawn_waiter(addr, id, exec_id, p);
        drop(inner);
        let mut ev = TaskStart::new();
        ev.container_id = id.to_owned();
        ev.pid = pid;
        if exec_id.is_empty() {
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        }
        tracing::info!(id, exec_id, pid, "started");
        Ok(pid)
    }

    fn spawn_waiter(
        &self,
        addr: husk_protocol::client::AgentAddr,
        id: &str,
        exec_id: &str,
        p: &Proc,
    ) {
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        let (status, pumps, pid) = (p.status.clone(), p.pumps.clone(), p.pid);
        let publisher = self.publisher.clone();
        let ns = self.namespace.clone();
        std::thread::spawn(move || {
            // WaitProcess blocks its connection: one per waiter.
            let code = husk_protocol::client::AgentClient::connect(&addr, AGENT_TIMEOUT)
                .and_then(|mut a| a.wait(&id, opt(&exec_id)))
                .unwrap_or_else(|e| {
                    tracing::error!(id, exec_id, error = %crate::error_chain(&e), "lost the process");
                    LOST_STATUS
                });
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

    fn do_delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, ShimError> {
        let mut inner = self.lock();
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("task {id}")))?;
        let p = c
            .procs
            .get(&key(exec_id))
            .ok_or_else(|| ShimError::NotFound(format!("process {id}/{exec_id}")))?;
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
        r.exited_at = MessageField::some(at);
        if !exec_id.is_empty() {
            c.procs.remove(exec_id);
            return Ok(r);
        }
        let c = inner.containers.remove(id).expect("looked up above");
        if let Some(vm) = &inner.vm {
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
        if c.rootfs_mounted {
            let _ = crate::bundle::unmount_all(&[c.bundle.join("rootfs")]);
        }
        drop(inner);
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_owned();
        ev.pid = r.pid;
        ev.exit_status = r.exit_status;
        ev.exited_at = r.exited_at.clone();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        tracing::info!(id, "deleted");
        Ok(r)
    }

    fn agent_call(&self, req: Request) -> Result<Response, ShimError> {
        let inner = self.lock();
        let vm = inner
            .vm
            .as_ref()
            .ok_or_else(|| ShimError::NotFound("no VM".into()))?;
        let mut a = vm.agent()?;
        drop(inner);
        Ok(a.call(req)?)
    }

    fn proc_info<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&Container, &Proc) -> T,
    ) -> Result<T, ShimError> {
        let inner = self.lock();
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
        let mut inner = self.lock();
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
                Life::Running => Status::RUNNING,
                Life::Stopped { code, at } => {
                    r.exit_status = code as u32;
                    r.exited_at = MessageField::some(at);
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
        if let Some((stream, done)) = stdin {
            super::io::close_stdin(stream, done);
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let status = self.proc_info(&req.id, &req.exec_id, |_, p| p.status.clone())?;
        let (code, at) = status.wait_stopped();
        let mut r = WaitResponse::new();
        r.exit_status = code as u32;
        r.exited_at = MessageField::some(at);
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

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.proc_info(&req.id, "", |_, p| p.pid).unwrap_or(0);
        r.version = "2".into();
        Ok(r)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        let mut inner = self.lock();
        if !inner.containers.is_empty() {
            return Ok(Empty::new());
        }
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
