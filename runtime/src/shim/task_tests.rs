//! The task service's locking, called through ttrpc as containerd calls it,
//! with the pod VM's boot faked and its agent a fake on a Unix socket: a
//! create, start or delete that waits (for the VM to boot, or for the
//! agent) holds up no call about the pod's other tasks, and leaves no VM
//! behind; a failed start can be tried again; a failed create leaves no
//! rootfs mounted.

use std::fs;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_sync::{create_events, create_task, Events, TaskClient};
use containerd_shim::protos::ttrpc::{self, context, Client, Code, Server};
use husk_protocol::client::AgentAddr;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{ErrorCode, Hello, ProcessRef, ProtocolError, RequestFrame, ResponseFrame};
use husk_test_support::{require, root, skip};

use super::*;

/// How long a call may take before the test fails: the calls checked
/// answer at once unless they wait for a create that the test holds
/// until after them. Only a failure guard, never reached when they pass.
const GUARD: Duration = Duration::from_secs(20);

fn ctx() -> Context {
    context::with_duration(GUARD)
}

/// Why most of these tests need root.
const SHARE_IS_A_BIND_MOUNT: &str = "a container's share is a bind mount";

/// A `$t` about process `$exec_id` of task `$id` (its init when empty).
macro_rules! req {
    ($t:ty, $id:expr, $exec_id:expr) => {{
        let mut r = <$t>::new();
        r.id = $id.into();
        r.exec_id = $exec_id.into();
        r
    }};
}

/// The ttrpc status code of a failed call.
fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// containerd's event service, keeping the events published: their
/// topics, and the encoded events.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Vec<u8>)>>);

impl Events for Recorder {
    fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> TtrpcResult<Empty> {
        let event = req.envelope.event.value.clone();
        self.0
            .lock()
            .unwrap()
            .push((req.envelope.topic.clone(), event));
        Ok(Empty::new())
    }
}

/// A fake agent at `path` that answers each request with `answer`.
fn fake_agent(
    path: &Path,
    answer: impl Fn(Request) -> Response + Send + Sync + 'static,
) -> AgentAddr {
    fake_agent_with_errors(path, move |r| Ok(answer(r)))
}

/// A fake agent at `path`: acknowledges each control connection's hello
/// (and refuses stdio streams: it has none), then answers each request
/// with `answer` (on that connection's own thread).
fn fake_agent_with_errors(
    path: &Path,
    answer: impl Fn(Request) -> Result<Response, ProtocolError> + Send + Sync + 'static,
) -> AgentAddr {
    let listener = UnixListener::bind(path).unwrap();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let answer = answer.clone();
            thread::spawn(move || {
                let ack = match read_frame::<_, Hello>(&mut s) {
                    Ok(Hello::Control { .. }) => Ok(Response::Empty),
                    Ok(Hello::Stream { .. } | Hello::Port { .. }) => Err(ProtocolError::new(
                        ErrorCode::Internal,
                        "the fake agent has no stdio streams or ports",
                    )),
                    Err(_) => return,
                };
                let control = ack.is_ok();
                let _ = write_frame(&mut s, &ResponseFrame::new(0, ack));
                if !control {
                    return;
                }
                while let Ok(f) = read_frame::<_, RequestFrame>(&mut s) {
                    let r = answer(f.request);
                    if write_frame(&mut s, &ResponseFrame::new(f.id, r)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    AgentAddr::Unix(path.to_owned())
}

/// A boot that makes no VM: its directory and share, and `agent`.
fn fake_vm(agent: AgentAddr) -> Box<BootFn> {
    Box::new(
        move |dir: &Path, spec: &Spec, _vmm: &Path, env: &dyn Fn(&str) -> Option<String>| {
            fs::create_dir_all(dir.join("share")).map_err(ShimError::io("create the share"))?;
            Ok(PodVm {
                dir: dir.to_owned(),
                share: dir.join("share"),
                addr: agent.clone(),
                monitor_pid: 0,
                size: super::super::vm::size_pod(spec, env)?,
                network: None,
                port_forward: None,
                host_cgroup: None,
            })
        },
    )
}

/// A shim's task service served over ttrpc in a temporary directory.
struct Shim {
    dir: tempfile::TempDir,
    address: String,
    events: Arc<Recorder>,
    exit: Arc<ExitSignal>,
    stopping: Arc<Mutex<Option<Arc<PodVm>>>>,
    _servers: [Server; 2],
}

impl Shim {
    fn new(dir: tempfile::TempDir, boot: Box<BootFn>) -> Shim {
        Shim::with_mount(dir, boot, Box::new(mount_rootfs))
    }

    /// A shim whose VM (booted by [`fake_vm`]) has a [`fake_agent`] that
    /// answers each request with `answer`.
    fn with_agent(answer: impl Fn(Request) -> Response + Send + Sync + 'static) -> Shim {
        Shim::with_agent_errors(move |r| Ok(answer(r)))
    }

    /// [`Shim::with_agent`] for tasks a and b: the agent answers with
    /// `first` when it has an answer, else creates a (pid 10) and b (pid
    /// 20), lists pid 10, and signals and removes any.
    fn with_agent_for_a_and_b(
        first: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) -> Shim {
        Shim::with_agent(move |req| {
            first(&req).unwrap_or_else(|| match req {
                Request::CreateContainer(c) => Response::Process {
                    pid: if c.container_id == "b" { 20 } else { 10 },
                },
                Request::ListProcesses(_) => Response::Processes {
                    processes: vec![husk_protocol::ProcessInfo {
                        pid: 10,
                        exec_id: None,
                    }],
                },
                Request::SignalProcess(_) | Request::RemoveContainer(_) => Response::Empty,
                // No OOM kill, ever: the watch ends at once.
                Request::WaitOom(_) => Response::OomKills {
                    count: 0,
                    exited: true,
                },
                other => panic!("the fake agent got {other:?}"),
            })
        })
    }

    /// [`Shim::with_agent`] with a [`fake_agent_with_errors`].
    fn with_agent_errors(
        answer: impl Fn(Request) -> Result<Response, ProtocolError> + Send + Sync + 'static,
    ) -> Shim {
        let dir = tempfile::tempdir().unwrap();
        let agent = fake_agent_with_errors(&dir.path().join("agent.sock"), answer);
        Shim::new(dir, fake_vm(agent))
    }

    /// A shim whose rootfs mounts are made by `mount`.
    fn with_mount(dir: tempfile::TempDir, boot: Box<BootFn>, mount: Box<MountFn>) -> Shim {
        let events = Arc::new(Recorder::default());
        let events_sock = dir.path().join("events.sock");
        let mut events_server = Server::new()
            .bind(&format!("unix://{}", events_sock.display()))
            .unwrap()
            .register_service(create_events(events.clone()));
        events_server.start().unwrap();
        let publisher = RemotePublisher::new(events_sock.to_str().unwrap()).unwrap();
        let exit = Arc::new(ExitSignal::default());
        let stopping = Arc::default();
        let mut svc = TaskService::new(
            "test".into(),
            publisher,
            exit.clone(),
            Arc::clone(&stopping),
            dir.path().join("root"),
        );
        svc.boot = boot;
        svc.mount = mount;
        let address = format!("unix://{}", dir.path().join("task.sock").display());
        let mut server = Server::new()
            .bind(&address)
            .unwrap()
            .register_service(create_task(Arc::new(svc)));
        server.start().unwrap();
        Shim {
            dir,
            address,
            events,
            exit,
            stopping,
            _servers: [events_server, server],
        }
    }

    /// A client on a connection of its own.
    fn task(&self) -> TaskClient {
        TaskClient::new(Client::connect(&self.address).unwrap())
    }

    /// The request to create `id` from a new minimal bundle.
    fn create_req(&self, id: &str) -> CreateTaskRequest {
        self.create_req_with(id, |_| {})
    }

    /// [`Shim::create_req`] with its config.json changed by `edit`.
    fn create_req_with(
        &self,
        id: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> CreateTaskRequest {
        let bundle = self.dir.path().join("bundles").join(id);
        fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let mut config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                     {"type": "uts"}, {"type": "mount"}]},
        });
        edit(&mut config);
        fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let mut r = CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = bundle.to_string_lossy().into_owned();
        r
    }

    /// Runs `call` on a client of its own (connected here) on a thread of
    /// its own.
    fn in_background<T: Send + 'static>(
        &self,
        call: impl FnOnce(TaskClient) -> ttrpc::Result<T> + Send + 'static,
    ) -> thread::JoinHandle<ttrpc::Result<T>> {
        let task = self.task();
        thread::spawn(move || call(task))
    }

    /// Creates `id` from a new minimal bundle: its pid.
    fn create(&self, id: &str) -> ttrpc::Result<u32> {
        Ok(self.task().create(ctx(), &self.create_req(id))?.pid)
    }

    /// Creates `id` on a thread of its own.
    fn create_in_background(&self, id: &str) -> thread::JoinHandle<ttrpc::Result<u32>> {
        let req = self.create_req(id);
        self.in_background(move |task| Ok(task.create(ctx(), &req)?.pid))
    }

    fn state(&self, id: &str) -> ttrpc::Result<StateResponse> {
        self.state_of(id, "")
    }

    fn state_of(&self, id: &str, exec_id: &str) -> ttrpc::Result<StateResponse> {
        self.task().state(ctx(), &req!(StateRequest, id, exec_id))
    }

    /// The status and pid of process `exec_id` of `id`.
    fn status(&self, id: &str, exec_id: &str) -> ttrpc::Result<(Status, u32)> {
        let s = self.state_of(id, exec_id)?;
        Ok((s.status.enum_value_or_default(), s.pid))
    }

    /// Asks for the state of `id` on a thread of its own.
    fn state_in_background(&self, id: &str) -> thread::JoinHandle<ttrpc::Result<StateResponse>> {
        let r = req!(StateRequest, id, "");
        self.in_background(move |task| task.state(ctx(), &r))
    }

    fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        Ok(self
            .task()
            .start(ctx(), &req!(StartRequest, id, exec_id))?
            .pid)
    }

    /// Starts `id` on a thread of its own.
    fn start_in_background(&self, id: &str) -> thread::JoinHandle<ttrpc::Result<u32>> {
        let r = req!(StartRequest, id, "");
        self.in_background(move |task| Ok(task.start(ctx(), &r)?.pid))
    }

    /// Adds exec `exec_id` (`sh`) to `id`, its output to `stdout`.
    fn exec(&self, id: &str, exec_id: &str, stdout: &str) -> ttrpc::Result<Empty> {
        let process = serde_json::json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
        let mut spec = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        spec.value = process.to_string().into_bytes();
        let mut r = req!(ExecProcessRequest, id, exec_id);
        r.stdout = stdout.into();
        r.spec = MessageField::some(spec);
        self.task().exec(ctx(), &r)
    }

    /// The exit status of process `exec_id` of `id`, once it exited.
    fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        Ok(self
            .task()
            .wait(ctx(), &req!(WaitRequest, id, exec_id))?
            .exit_status)
    }

    fn pids(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let mut r = PidsRequest::new();
        r.id = id.into();
        let out = self.task().pids(ctx(), &r)?;
        Ok(out.processes.iter().map(|p| p.pid).collect())
    }

    /// SIGKILL to the init of `id`, or with `all` to all its processes.
    fn kill(&self, id: &str, all: bool) -> ttrpc::Result<Empty> {
        let mut r = req!(KillRequest, id, "");
        r.signal = 9;
        r.all = all;
        self.task().kill(ctx(), &r)
    }

    fn delete(&self, id: &str) -> ttrpc::Result<DeleteResponse> {
        self.delete_of(id, "")
    }

    fn delete_of(&self, id: &str, exec_id: &str) -> ttrpc::Result<DeleteResponse> {
        self.task().delete(ctx(), &req!(DeleteRequest, id, exec_id))
    }

    /// Deletes `id` on a thread of its own.
    fn delete_in_background(&self, id: &str) -> thread::JoinHandle<ttrpc::Result<DeleteResponse>> {
        let r = req!(DeleteRequest, id, "");
        self.in_background(move |task| task.delete(ctx(), &r))
    }

    fn shutdown_in_background(&self) -> thread::JoinHandle<ttrpc::Result<Empty>> {
        self.in_background(|task| task.shutdown(ctx(), &ShutdownRequest::new()))
    }

    /// Shuts the shim down (its last task is gone) and checks that it
    /// signalled its main thread to exit.
    fn shut_down(&self) {
        self.shutdown_in_background()
            .join()
            .unwrap()
            .expect("shutdown");
        assert!(self.exits());
    }

    /// Whether the shim signalled its main thread to exit (waits at most
    /// [`GUARD`]).
    fn exits(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        let exit = self.exit.clone();
        thread::spawn(move || {
            exit.wait();
            let _ = tx.send(());
        });
        rx.recv_timeout(GUARD).is_ok()
    }

    fn topics(&self) -> Vec<String> {
        let events = self.events.0.lock().unwrap();
        events.iter().map(|(t, _)| t.clone()).collect()
    }

    /// The container ids of the `TaskOOM` events published.
    fn oom_ids(&self) -> Vec<String> {
        use containerd_shim::protos::protobuf::Message;
        let events = self.events.0.lock().unwrap();
        events
            .iter()
            .filter(|(t, _)| t == topics::TASK_OOM_EVENT_TOPIC)
            .map(|(_, e)| TaskOOM::parse_from_bytes(e).unwrap().container_id)
            .collect()
    }

    /// Waits (at most [`GUARD`]) until a `topic` event was published.
    fn published(&self, topic: &str) -> bool {
        let deadline = std::time::Instant::now() + GUARD;
        while std::time::Instant::now() < deadline {
            if self.topics().iter().any(|t| t == topic) {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // A failed test leaves its shares mounted: not into the directory's
        // removal.
        let mut points = crate::mounts::mounts_under(self.dir.path());
        points.reverse();
        if let Err(e) = crate::bundle::unmount_all(&points) {
            eprintln!("cannot unmount {points:?}: {e}");
        }
    }
}

/// A call held in a fake until the test lets it go.
struct Hold {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Hold {
    /// Tells the test the call arrived, then waits until it lets it go.
    fn hold(&self) {
        self.entered.lock().unwrap().send(()).unwrap();
        let _ = self.release.lock().unwrap().recv();
    }
}

/// The test's side of a [`Hold`].
struct Held {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Held {
    /// Waits (at most [`GUARD`]) until the held call arrived.
    fn entered(&self, what: &str) {
        if self.entered.recv_timeout(GUARD).is_err() {
            panic!("{what} never reached the fake");
        }
    }

    fn release(&self) {
        self.release.send(()).unwrap();
    }
}

fn hold() -> (Hold, Held) {
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    (
        Hold {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        },
        Held { entered, release },
    )
}

/// The VM left to the shim's main thread once it exits: nothing is left
/// mounted in it, and it is stopped.
fn stop_the_vm(shim: &Shim) {
    shim.shut_down();
    let vm = shim
        .stopping
        .lock()
        .unwrap()
        .take()
        .expect("the VM is left to the shim's main thread");
    assert_eq!(crate::mounts::mounts_under(&vm.dir), Vec::<PathBuf>::new());
    vm.shutdown();
    assert!(!vm.dir.exists(), "{} is left", vm.dir.display());
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// While another call waits: the calls about a (created, pid 10) answer.
fn calls_about_a_answer(shim: &Shim, meanwhile: &str) {
    let st = shim.status("a", "");
    let st = st.unwrap_or_else(|e| panic!("state of a while {meanwhile}: {e:?}"));
    assert_eq!(st, (Status::CREATED, 10));
    assert_eq!(shim.pids("a").expect("pids of a"), [10]);
    shim.kill("a", false).expect("kill a");
}

#[test]
fn calls_about_other_tasks_answer_while_a_create_waits_for_the_agent() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (create_hold, create) = hold();
    let shim = Shim::with_agent_for_a_and_b(move |req| match req {
        Request::CreateContainer(c) if c.container_id == "b" => {
            // Held until the test has made its other calls.
            create_hold.hold();
            Some(Response::Process { pid: 20 })
        }
        _ => None,
    });
    assert_eq!(shim.create("a").unwrap(), 10);

    let b = shim.create_in_background("b");
    create.entered("b's CreateContainer");
    // b's create now waits in the agent's CreateContainer, past the boot
    // and the share: the calls about a answer meanwhile.
    calls_about_a_answer(&shim, "b is created");
    assert_eq!(code(shim.create("b")), Code::ALREADY_EXISTS);
    assert_eq!(code(shim.state("c")), Code::NOT_FOUND);
    shim.delete("a").expect("delete a");
    assert!(
        !b.is_finished(),
        "b's create ended before the agent answered"
    );

    // Shutdown once a is gone waits for b's create: b is created, and the
    // shim keeps its VM.
    let shutdown = shim.shutdown_in_background();
    create.release();
    assert_eq!(b.join().unwrap().expect("create b"), 20);
    shutdown.join().unwrap().expect("shutdown");
    assert!(shim.stopping.lock().unwrap().is_none());
    let st = shim.status("b", "").expect("state of b");
    assert_eq!(st, (Status::CREATED, 20));

    shim.delete("b").expect("delete b");
    stop_the_vm(&shim);
    assert_eq!(
        shim.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
}

#[test]
fn a_create_booting_the_vm_holds_up_only_its_own_task() {
    let dir = tempfile::tempdir().unwrap();
    let (boot_hold, boot) = hold();
    let boot_fn: Box<BootFn> = Box::new(
        move |_: &Path, _: &Spec, _: &Path, _: &dyn Fn(&str) -> Option<String>| {
            boot_hold.hold();
            Err(ShimError::Invalid("the fake VM failed to start".into()))
        },
    );
    let shim = Shim::new(dir, boot_fn);
    let a = shim.create_in_background("a");
    boot.entered("a's create's VM boot");

    // While the VM boots: a second create of a is refused, calls about
    // other tasks answer, and no agent call waits for the VM.
    assert_eq!(code(shim.create("a")), Code::ALREADY_EXISTS);
    assert_eq!(code(shim.state("b")), Code::NOT_FOUND);
    assert_eq!(code(shim.pids("a")), Code::NOT_FOUND);
    let mut req = ConnectRequest::new();
    req.id = "b".into();
    let connected = shim.task().connect(ctx(), &req).expect("connect");
    assert_eq!(connected.shim_pid, std::process::id());
    // a's state, and a shutdown, wait for a's create to end.
    let state = shim.state_in_background("a");
    let shutdown = shim.shutdown_in_background();
    assert!(!a.is_finished(), "a's create ended before its boot did");

    boot.release();
    let e = a.join().unwrap().expect_err("the boot failed");
    assert!(e.to_string().contains("the fake VM failed to start"), "{e}");
    // Never a task a's failed create did not make.
    assert_eq!(code(state.join().unwrap()), Code::NOT_FOUND);
    shutdown.join().unwrap().expect("shutdown");
    assert!(shim.exits(), "a pod left without a task lets the shim go");
    assert!(shim.stopping.lock().unwrap().is_none(), "no VM was made");
    // Nothing boots a VM the exiting shim would leave behind.
    assert_eq!(code(shim.create("c")), Code::INVALID_ARGUMENT);
    assert!(shim.topics().is_empty());
}

#[test]
fn calls_about_other_tasks_answer_while_a_start_waits_for_the_agent() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (start_hold, start) = hold();
    let (exit_hold, exit) = hold();
    let shim = Shim::with_agent_for_a_and_b(move |req| match req {
        Request::StartContainer(c) if c.container_id == "b" => {
            // Held until the test has made its other calls.
            start_hold.hold();
            Some(Response::Empty)
        }
        Request::WaitProcess(p) if p.container_id == "b" => {
            exit_hold.hold();
            Some(Response::Exited { exit_status: 0 })
        }
        _ => None,
    });
    shim.create("a").unwrap();
    shim.create("b").unwrap();

    let started = shim.start_in_background("b");
    start.entered("b's StartContainer");
    // b's start now waits in the agent: the calls about a answer, and b
    // is created until the agent started it.
    calls_about_a_answer(&shim, "b starts");
    let st = shim.status("b", "").expect("state of b while it starts");
    assert_eq!(st, (Status::CREATED, 20));
    // Neither started twice nor deleted under its start.
    assert_eq!(code(shim.start("b", "")), Code::INVALID_ARGUMENT);
    assert_eq!(code(shim.delete("b")), Code::INVALID_ARGUMENT);
    shim.delete("a").expect("delete a while b starts");
    assert!(
        !started.is_finished(),
        "b's start ended before the agent answered"
    );

    start.release();
    assert_eq!(started.join().unwrap().expect("start b"), 20);
    exit.entered("b's WaitProcess");
    let st = shim.status("b", "").expect("state of b");
    assert_eq!(st, (Status::RUNNING, 20));
    assert_eq!(code(shim.start("b", "")), Code::INVALID_ARGUMENT);
    exit.release();
    assert_eq!(shim.wait("b", "").expect("wait b"), 0);
    shim.delete("b").expect("delete b");
    stop_the_vm(&shim);
    assert_eq!(
        sorted(shim.topics()),
        sorted(
            [
                topics::TASK_CREATE_EVENT_TOPIC,
                topics::TASK_CREATE_EVENT_TOPIC,
                topics::TASK_DELETE_EVENT_TOPIC,
                topics::TASK_START_EVENT_TOPIC,
                topics::TASK_EXIT_EVENT_TOPIC,
                topics::TASK_DELETE_EVENT_TOPIC,
            ]
            .map(String::from)
            .to_vec()
        )
    );
}

#[test]
fn calls_about_other_tasks_answer_while_a_delete_waits_for_the_agent() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (remove_hold, remove) = hold();
    let removals_of_b = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let removals = removals_of_b.clone();
    let shim = Shim::with_agent_for_a_and_b(move |req| match req {
        Request::RemoveContainer(c) if c.container_id == "b" => {
            removals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Held until the test has made its other calls.
            remove_hold.hold();
            Some(Response::Empty)
        }
        _ => None,
    });
    shim.create("a").unwrap();
    shim.create("b").unwrap();

    let deleted = shim.delete_in_background("b");
    remove.entered("b's RemoveContainer");
    // b's delete now waits in the agent: the calls about a answer.
    calls_about_a_answer(&shim, "b is deleted");
    // b's id stays reserved until its share is torn down: no new b, and
    // the calls about b (a second delete too) wait for the delete.
    assert_eq!(code(shim.create("b")), Code::ALREADY_EXISTS);
    let state_of_b = shim.state_in_background("b");
    let deleted_again = shim.delete_in_background("b");
    shim.delete("a").expect("delete a while b is deleted");
    // The last task's delete still uses the VM: a shutdown waits for it.
    let shutdown = shim.shutdown_in_background();
    assert!(
        !deleted.is_finished(),
        "b's delete ended before the agent answered"
    );
    assert!(!state_of_b.is_finished(), "b's state answered mid-delete");
    assert!(!deleted_again.is_finished(), "b deleted twice at once");
    assert!(!shutdown.is_finished(), "shutdown under a delete");

    remove.release();
    assert_eq!(deleted.join().unwrap().expect("delete b").pid, 20);
    assert_eq!(code(state_of_b.join().unwrap()), Code::NOT_FOUND);
    assert_eq!(code(deleted_again.join().unwrap()), Code::NOT_FOUND);
    shutdown.join().unwrap().expect("shutdown");
    assert_eq!(
        removals_of_b.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "b removed once"
    );
    stop_the_vm(&shim);
    assert_eq!(
        shim.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
}

#[test]
fn a_failed_exec_start_is_tried_again_as_an_exec() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    // The agent's requests, but the waiters' (made when they like).
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = calls.clone();
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let shim = Shim::with_agent_errors(move |req| {
        let name = match &req {
            Request::ExecProcess(e) => format!("ExecProcess {}", e.exec_id),
            Request::SignalProcess(s) => format!("SignalProcess {:?} {}", s.exec_id, s.signal),
            Request::WaitProcess(_) => String::new(),
            other => other.name().into(),
        };
        if !name.is_empty() {
            seen.lock().unwrap().push(name);
        }
        match req {
            Request::CreateContainer(_) => Ok(Response::Process { pid: 10 }),
            Request::ExecProcess(e)
                if e.exec_id == "e1"
                    && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) =>
            {
                Err(ProtocolError::new(
                    ErrorCode::Internal,
                    "the fake exec failed",
                ))
            }
            Request::ExecProcess(e) => Ok(Response::Process {
                pid: if e.exec_id == "e1" { 30 } else { 31 },
            }),
            Request::WaitProcess(ProcessRef { exec_id, .. }) => Ok(Response::Exited {
                exit_status: if exec_id.as_deref() == Some("e2") {
                    137
                } else {
                    0
                },
            }),
            Request::StartContainer(_)
            | Request::SignalProcess(_)
            | Request::RemoveContainer(_) => Ok(Response::Empty),
            other => panic!("the fake agent got {other:?}"),
        }
    });
    shim.create("a").unwrap();

    // The agent fails e1's ExecProcess: e1 stays created, with its process,
    // and its next start is an ExecProcess again.
    shim.exec("a", "e1", "").expect("exec e1");
    assert_eq!(code(shim.start("a", "e1")), Code::UNKNOWN);
    let st = shim.status("a", "e1").expect("state of e1");
    assert_eq!(st, (Status::CREATED, 0));
    assert_eq!(shim.start("a", "e1").expect("start e1 again"), 30);
    assert_eq!(shim.wait("a", "e1").expect("wait e1"), 0);
    assert_eq!(
        *calls.lock().unwrap(),
        ["CreateContainer", "ExecProcess e1", "ExecProcess e1"]
    );

    // e2 is started but its stdio cannot be attached: it is killed, and
    // waited for, never started again.
    shim.exec("a", "e2", "out-fifo").expect("exec e2");
    assert_eq!(code(shim.start("a", "e2")), Code::UNKNOWN);
    assert_eq!(shim.wait("a", "e2").expect("wait e2"), 137);
    let st = shim.status("a", "e2").expect("state of e2");
    assert_eq!(st, (Status::STOPPED, 31));
    assert_eq!(code(shim.start("a", "e2")), Code::INVALID_ARGUMENT);
    assert_eq!(
        calls.lock().unwrap()[3..],
        ["ExecProcess e2", "SignalProcess Some(\"e2\") 9"]
    );

    assert_eq!(shim.delete_of("a", "e1").expect("delete e1").pid, 30);
    let e2 = shim.delete_of("a", "e2").expect("delete e2");
    assert_eq!((e2.pid, e2.exit_status), (31, 137));
    shim.delete("a").expect("delete a");
    stop_the_vm(&shim);
    assert!(!calls.lock().unwrap().iter().any(|c| c == "StartContainer"));
}

/// How many mounts are stacked on `point`.
fn mounts_on(point: &Path) -> usize {
    crate::mounts::own_mountinfo()
        .iter()
        .filter(|m| m.mount_point == point)
        .count()
}

#[test]
fn a_create_leaves_no_rootfs_mount_behind() {
    require!(root(), "the rootfs mounts are tmpfs mounts");
    let dir = tempfile::tempdir().unwrap();
    let agent = fake_agent(&dir.path().join("agent.sock"), |req| match req {
        Request::CreateContainer(_) => Response::Process { pid: 20 },
        Request::RemoveContainer(_) => Response::Empty,
        other => panic!("the fake agent got {other:?}"),
    });
    // A tmpfs for "tmpfs", a failure for anything else.
    let mount: Box<MountFn> = Box::new(|m: &Mount, rootfs: &Path| {
        if m.type_ != "tmpfs" {
            return Err(ShimError::Invalid("the fake mount failed".into()));
        }
        nix::mount::mount(
            Some("tmpfs"),
            rootfs,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| ShimError::io("mount a tmpfs")(e.into()))
    });
    let shim = Shim::with_mount(dir, fake_vm(agent), mount);
    let with_rootfs = |id: &str, types: &[&str]| {
        let mut req = shim.create_req(id);
        req.rootfs = types
            .iter()
            .map(|t| {
                let mut m = Mount::new();
                m.type_ = (*t).into();
                m.source = "none".into();
                m
            })
            .collect();
        let rootfs = Path::new(&req.bundle).join("rootfs");
        (req, rootfs)
    };

    // The second mount fails: the first is undone.
    let (req, rootfs) = with_rootfs("a", &["tmpfs", "fail"]);
    let e = shim
        .task()
        .create(ctx(), &req)
        .expect_err("a's mount fails");
    assert!(e.to_string().contains("the fake mount failed"), "{e}");
    assert_eq!(mounts_on(&rootfs), 0, "a's first rootfs mount is left");

    // Both are undone by the delete.
    let (req, rootfs) = with_rootfs("b", &["tmpfs", "tmpfs"]);
    assert_eq!(shim.task().create(ctx(), &req).expect("create b").pid, 20);
    assert_eq!(mounts_on(&rootfs), 2);
    shim.delete("b").expect("delete b");
    assert_eq!(mounts_on(&rootfs), 0, "b's rootfs mounts are left");
    stop_the_vm(&shim);
}

/// A pod that asks for the host's network, IPC or PID namespace
/// (hostNetwork, hostIPC, hostPID: the sandbox's spec has no entry of that
/// type) ran with the VM's instead, silently. It is refused at create,
/// naming the field, before any VM is booted.
#[test]
fn a_pod_asking_for_a_host_namespace_is_refused_before_its_vm_boots() {
    let dir = tempfile::tempdir().unwrap();
    let boots = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = boots.clone();
    let boot: Box<BootFn> = Box::new(
        move |_: &Path, _: &Spec, _: &Path, _: &dyn Fn(&str) -> Option<String>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(ShimError::Invalid("no VM may be booted".into()))
        },
    );
    let shim = Shim::new(dir, boot);
    for (missing, k8s) in [
        ("network", "hostNetwork"),
        ("ipc", "hostIPC"),
        ("pid", "hostPID"),
    ] {
        let req = shim.create_req(&format!("pod-{missing}"));
        let config = Path::new(&req.bundle).join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != missing);
        fs::write(&config, v.to_string()).unwrap();
        let e = shim.task().create(ctx(), &req).expect_err(missing);
        let ttrpc::Error::RpcStatus(st) = &e else {
            panic!("{missing}: {e:?}");
        };
        assert_eq!(st.code(), Code::INVALID_ARGUMENT, "{missing}: {e:?}");
        let msg = &st.message;
        assert!(
            msg.contains(&format!("linux.namespaces has no {missing} namespace")),
            "{msg}"
        );
        assert!(msg.contains(k8s), "{msg}");
    }
    assert_eq!(boots.load(std::sync::atomic::Ordering::SeqCst), 0);
    shim.shut_down();
    assert!(shim.stopping.lock().unwrap().is_none(), "no VM was made");
    assert!(shim.topics().is_empty());
}

/// A kill that reaches the agent after the process exited there (the
/// shim still waits for its output to drain, so it still says running)
/// is NotFound: containerd ignores NotFound on kill, and StopPodSandbox
/// goes on.
#[test]
fn a_kill_of_a_process_that_just_exited_is_not_found() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (exit_hold, exit) = hold();
    let shim = Shim::with_agent_errors(move |req| match req {
        Request::CreateContainer(_) => Ok(Response::Process { pid: 10 }),
        Request::StartContainer(_) | Request::RemoveContainer(_) => Ok(Response::Empty),
        Request::WaitProcess(_) => {
            exit_hold.hold();
            Ok(Response::Exited { exit_status: 0 })
        }
        // What the agent answers once the init was reaped.
        Request::SignalProcess(s) if !s.all => Err(ProtocolError::new(
            ErrorCode::NotFound,
            "the init of container \"a\" has exited",
        )),
        Request::SignalProcess(_) => Ok(Response::Empty),
        Request::WaitOom(_) => Ok(Response::OomKills {
            count: 0,
            exited: true,
        }),
        other => panic!("the fake agent got {other:?}"),
    });
    shim.create("a").unwrap();
    shim.start("a", "").unwrap();
    exit.entered("a's WaitProcess");
    let st = shim.status("a", "").expect("state of a");
    assert_eq!(st, (Status::RUNNING, 10));
    assert_eq!(code(shim.kill("a", false)), Code::NOT_FOUND);
    shim.kill("a", true).expect("kill --all");
    exit.release();
    assert_eq!(shim.wait("a", "").expect("wait a"), 0);
    // Stopped in the shim too: NotFound without asking the agent.
    assert_eq!(code(shim.kill("a", false)), Code::NOT_FOUND);
    shim.delete("a").expect("delete a");
    stop_the_vm(&shim);
}

/// An init's exit, as the fake agent tells it: set once `WaitProcess`
/// answers; `WaitOom`s for a later count wait for it.
#[derive(Default)]
struct InitExit(Mutex<bool>, std::sync::Condvar);

impl InitExit {
    fn set(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }

    fn wait(&self) {
        let mut g = self.0.lock().unwrap();
        while !*g {
            g = self.1.wait(g).unwrap();
        }
    }
}

/// A fake agent for task a (pid 10) whose init the OOM killer kills
/// (137, one OOM kill), once the test releases `exit_hold`: `oom_wait`
/// answers the `WaitOom`s (the nth one, after what count).
/// Deletes task a and stops the VM, then checks a's events: one
/// `TaskOOM`, published before its `TaskExit`.
fn delete_a_expecting_one_oom_before_its_exit(shim: &Shim) {
    shim.delete("a").expect("delete a");
    stop_the_vm(shim);
    assert_eq!(
        shim.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_OOM_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
    assert_eq!(shim.oom_ids(), ["a"]);
}

fn oom_killed_a(
    exit_hold: Hold,
    exit: Arc<InitExit>,
    oom_wait: impl Fn(usize, u64) -> Response + Send + Sync + 'static,
) -> Shim {
    let waits = std::sync::atomic::AtomicUsize::new(0);
    Shim::with_agent(move |req| match req {
        Request::CreateContainer(_) => Response::Process { pid: 10 },
        Request::StartContainer(_) | Request::RemoveContainer(_) => Response::Empty,
        Request::WaitProcess(_) => {
            exit_hold.hold();
            exit.set();
            Response::Exited { exit_status: 137 }
        }
        Request::WaitOom(w) => {
            assert_eq!(w.container_id, "a");
            let n = waits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            oom_wait(n, w.after)
        }
        other => panic!("the fake agent got {other:?}"),
    })
}

/// An init killed by the OOM killer: its `TaskOOM` is published before
/// its `TaskExit` (CRI then reports the container `OOMKilled`), even when
/// the container's OOM watch learns of it only after the exit: the exit
/// waiter asks the agent for the count first. Published once.
#[test]
fn an_oom_killed_init_has_its_task_oom_before_its_task_exit() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (exit_hold, held) = hold();
    let exit = Arc::new(InitExit::default());
    let exited = exit.clone();
    let shim = oom_killed_a(exit_hold, exit, move |n, _after| {
        // The watch's wait (the first) is answered late: after the exit,
        // and later than the exit waiter's.
        exited.wait();
        if n == 0 {
            // Not synchronisation: the late answer is what is tested.
            thread::sleep(Duration::from_millis(500));
        }
        Response::OomKills {
            count: 1,
            exited: true,
        }
    });
    shim.create("a").unwrap();
    shim.start("a", "").unwrap();
    held.entered("a's WaitProcess");
    held.release();
    assert_eq!(shim.wait("a", "").expect("wait a"), 137);
    // The watch's late answer publishes nothing more. Not synchronisation:
    // a while past that answer (500 ms above) in which a second event
    // would be published; an absence gives nothing to poll for.
    thread::sleep(Duration::from_millis(800));
    delete_a_expecting_one_oom_before_its_exit(&shim);
}

/// An OOM kill of another process of a running container is published as
/// it happens (the watch's `WaitOom` answers), once: the exit waiter,
/// finding the same count at the exit, publishes no second one.
#[test]
fn an_oom_kill_in_a_running_container_is_published_as_it_happens() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let (exit_hold, held) = hold();
    let exit = Arc::new(InitExit::default());
    let exited = exit.clone();
    let shim = oom_killed_a(exit_hold, exit, move |_n, after| {
        // One kill while it runs; nothing more until the exit.
        if after == 0 && !*exited.0.lock().unwrap() {
            return Response::OomKills {
                count: 1,
                exited: false,
            };
        }
        exited.wait();
        Response::OomKills {
            count: 1,
            exited: true,
        }
    });
    shim.create("a").unwrap();
    shim.start("a", "").unwrap();
    held.entered("a's WaitProcess");
    assert!(
        shim.published(topics::TASK_OOM_EVENT_TOPIC),
        "no TaskOOM while the container runs"
    );
    assert_eq!(shim.status("a", "").unwrap(), (Status::RUNNING, 10));
    held.release();
    assert_eq!(shim.wait("a", "").expect("wait a"), 137);
    delete_a_expecting_one_oom_before_its_exit(&shim);
}

/// The agent's requests that name container `a`, by name (the waiters'
/// `WaitProcess` left out: they come when they like).
type Seen = Arc<Mutex<Vec<Request>>>;

/// A fake agent for task a (pid 10) that records its requests in `seen`,
/// answers them, holds the init's `WaitProcess` on `exit`, and refuses
/// what `refuse` says.
fn recording_agent(
    seen: &Seen,
    exit: Hold,
    refuse: impl Fn(&Request) -> Option<ProtocolError> + Send + Sync + 'static,
) -> Shim {
    let seen = seen.clone();
    Shim::with_agent_errors(move |req| {
        if !matches!(req, Request::WaitProcess(_)) {
            seen.lock().unwrap().push(req.clone());
        }
        if let Some(e) = refuse(&req) {
            return Err(e);
        }
        match req {
            Request::CreateContainer(_) => Ok(Response::Process { pid: 10 }),
            Request::WaitProcess(_) => {
                exit.hold();
                Ok(Response::Exited { exit_status: 137 })
            }
            Request::StartContainer(_)
            | Request::PauseContainer(_)
            | Request::ResumeContainer(_)
            | Request::UpdateContainer(_)
            | Request::SignalProcess(_)
            | Request::RemoveContainer(_) => Ok(Response::Empty),
            // No OOM kill: the container's OOM watch ends at once.
            Request::WaitOom(_) => Ok(Response::OomKills {
                count: 0,
                exited: true,
            }),
            other => panic!("the fake agent got {other:?}"),
        }
    })
}

fn pause(shim: &Shim, id: &str) -> ttrpc::Result<Empty> {
    let mut r = PauseRequest::new();
    r.id = id.into();
    shim.task().pause(ctx(), &r)
}

fn resume(shim: &Shim, id: &str) -> ttrpc::Result<Empty> {
    let mut r = ResumeRequest::new();
    r.id = id.into();
    shim.task().resume(ctx(), &r)
}

/// containerd waits on an exec before it starts it; when the start is
/// refused (a paused task here) and the exec deleted, that `Wait` must end,
/// or the shim's ttrpc server never shuts down and the shim never exits
/// (seen in `shim-ctr.sh`: `ctr task exec` into a paused task).
#[test]
fn a_wait_on_an_exec_deleted_before_it_started_ends() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let seen = Seen::default();
    let (exit_hold, exit) = hold();
    let shim = recording_agent(&seen, exit_hold, |req| {
        matches!(req, Request::ExecProcess(_))
            .then(|| ProtocolError::new(ErrorCode::FailedPrecondition, "container a is paused"))
    });
    shim.create("a").unwrap();
    shim.start("a", "").unwrap();
    exit.entered("a's WaitProcess");
    shim.exec("a", "x1", "").unwrap();
    let r = req!(WaitRequest, "a", "x1");
    let waiting = shim.in_background(move |task| task.wait(ctx(), &r));
    // The Wait must be blocked in the shim before the delete (one that
    // arrives after it is rightly NOT_FOUND), and a blocked Wait shows
    // nothing a client can see: give its connection and call the time they
    // take (milliseconds) many times over. Seen racing once in a full run.
    thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(code(shim.start("a", "x1")), Code::FAILED_PRECONDITION);
    shim.delete_of("a", "x1").expect("delete x1");
    let waited = waiting.join().unwrap().expect("the wait on x1 ends");
    assert_eq!(waited.exit_status, 0);
    shim.kill("a", false).unwrap();
    exit.release();
    shim.wait("a", "").unwrap();
    shim.delete("a").unwrap();
    stop_the_vm(&shim);
}

/// `Pause` freezes the one container's cgroup in the pod's VM (the agent's
/// `PauseContainer`), `State` says PAUSED until `Resume`, and both publish
/// their event; a task that is not running cannot be paused, one that is
/// not paused cannot be resumed, and a pause the agent refuses leaves the
/// task running.
#[test]
fn pause_and_resume_freeze_the_container_in_the_guest_and_publish_events() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let seen = Seen::default();
    let (exit_hold, exit) = hold();
    let refuse_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refusing = refuse_next.clone();
    let shim = recording_agent(&seen, exit_hold, move |req| {
        (matches!(req, Request::PauseContainer(_))
            && refusing.swap(false, std::sync::atomic::Ordering::SeqCst))
        .then(|| ProtocolError::new(ErrorCode::Internal, "the fake cgroup did not freeze"))
    });
    shim.create("a").unwrap();
    assert_eq!(
        code(pause(&shim, "a")),
        Code::FAILED_PRECONDITION,
        "created"
    );
    shim.start("a", "").unwrap();
    exit.entered("a's WaitProcess");

    pause(&shim, "a").expect("pause a");
    assert_eq!(shim.status("a", "").unwrap(), (Status::PAUSED, 10));
    assert_eq!(code(pause(&shim, "a")), Code::FAILED_PRECONDITION);
    resume(&shim, "a").expect("resume a");
    assert_eq!(shim.status("a", "").unwrap(), (Status::RUNNING, 10));
    assert_eq!(code(resume(&shim, "a")), Code::FAILED_PRECONDITION);
    assert_eq!(code(pause(&shim, "b")), Code::NOT_FOUND);

    refuse_next.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(code(pause(&shim, "a")), Code::UNKNOWN);
    assert_eq!(shim.status("a", "").unwrap(), (Status::RUNNING, 10));

    let names: Vec<(&str, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| match r {
            Request::PauseContainer(c) | Request::ResumeContainer(c) => {
                Some((r.name(), c.container_id.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            ("PauseContainer", "a".to_string()),
            ("ResumeContainer", "a".to_string()),
            ("PauseContainer", "a".to_string()),
        ]
    );

    pause(&shim, "a").expect("pause a again");
    shim.kill("a", false).expect("kill the paused a");
    exit.release();
    assert_eq!(shim.wait("a", "").expect("wait a"), 137);
    assert_eq!(shim.status("a", "").unwrap().0, Status::STOPPED);
    shim.delete("a").expect("delete a");
    stop_the_vm(&shim);
    assert_eq!(
        shim.topics(),
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC,
            topics::TASK_PAUSED_EVENT_TOPIC,
            topics::TASK_RESUMED_EVENT_TOPIC,
            topics::TASK_PAUSED_EVENT_TOPIC,
            topics::TASK_EXIT_EVENT_TOPIC,
            topics::TASK_DELETE_EVENT_TOPIC,
        ]
    );
}

/// An `UpdateTaskRequest` as containerd sends it: `resources` an `Any`
/// of the runtime spec's `LinuxResources` JSON.
fn update(shim: &Shim, id: &str, type_url: &str, json: serde_json::Value) -> ttrpc::Result<Empty> {
    let mut any = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
    any.type_url = type_url.into();
    any.value = json.to_string().into_bytes();
    let mut r = UpdateTaskRequest::new();
    r.id = id.into();
    r.resources = MessageField::some(any);
    shim.task().update(ctx(), &r)
}

/// The status message of a failed call.
fn message<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> String {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.message,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// `Update` decodes containerd's `LinuxResources`, checks them against the
/// pod's VM, and the agent gets them for the container (`UpdateContainer`)
/// with its cpuset as it was fitted to the VM at create when containerd
/// sends it unchanged; an update past the VM is refused with the field,
/// the value and the VM's size, and reaches no agent; bad input is
/// refused naming what is wrong.
#[test]
fn update_reaches_the_agent_and_past_the_vm_is_refused() {
    require!(root(), SHARE_IS_A_BIND_MOUNT);
    let host_cpus = crate::policy::Host::read().cpus;
    if host_cpus < 2 {
        skip!("update: the cpuset fitted to a 1-vCPU VM needs a host with 2 CPUs");
    }
    let seen = Seen::default();
    let (exit_hold, exit) = hold();
    let shim = recording_agent(&seen, exit_hold, |req| match req {
        Request::UpdateContainer(u)
            if u.resources.memory().and_then(|m| m.limit()) == Some(200 << 20) =>
        {
            Some(ProtocolError::new(
                ErrorCode::InvalidArgument,
                "linux.resources.memory.limit 209715200: more than the guest's memory",
            ))
        }
        _ => None,
    });
    let req = shim.create_req_with("a", |c| {
        c["annotations"] = serde_json::json!({"husk.vcpus": "1", "husk.memory_mib": "256"});
        c["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 64 << 20}, "cpu": {"cpus": "1"}});
    });
    shim.task().create(ctx(), &req).expect("create a");
    shim.start("a", "").unwrap();
    exit.entered("a's WaitProcess");
    let url = crate::resources::LINUX_RESOURCES_TYPE_URL;
    let updates = || -> Vec<serde_json::Value> {
        seen.lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                Request::UpdateContainer(u) => {
                    assert_eq!(u.container_id, "a");
                    Some(serde_json::to_value(&u.resources).unwrap())
                }
                _ => None,
            })
            .collect()
    };

    // CRI's shape: the whole set, the cpuset as at create.
    update(
        &shim,
        "a",
        url,
        serde_json::json!({"memory": {"limit": 128 << 20}, "cpu": {"cpus": "1", "shares": 512},
            "pids": {"limit": 20}}),
    )
    .expect("update a");
    assert_eq!(
        updates(),
        [
            serde_json::json!({"memory": {"limit": 128 << 20}, "cpu": {"cpus": "0", "shares": 512},
            "pids": {"limit": 20}})
        ],
        "the agent gets the update, its cpuset fitted to the 1-vCPU VM"
    );

    for (json, want) in [
        (
            serde_json::json!({"memory": {"limit": 1u64 << 30}, "cpu": {"cpus": "1"}}),
            "linux.resources.memory.limit \"1073741824\": asks for 1024 MiB, and the VM has 256 MiB of RAM: the VM was sized at create and cannot grow",
        ),
        (
            serde_json::json!({"cpu": {"cpus": "0-1"}}),
            "linux.resources.cpu.cpus \"0-1\": names CPU 1, and the VM has vCPUs 0-0: the VM was sized at create and cannot grow",
        ),
        (
            serde_json::json!({"cpu": {"cpus": "1", "quota": 200000, "period": 100000}}),
            "linux.resources.cpu.quota \"200000\": 2 CPUs' worth (period 100000), and the VM has 1 vCPU",
        ),
    ] {
        let r = update(&shim, "a", url, json);
        let msg = message(r);
        assert!(msg.contains(want), "{msg}");
    }
    assert_eq!(
        code(update(
            &shim,
            "a",
            url,
            serde_json::json!({"memory": {"limit": 1u64 << 30}})
        )),
        Code::INVALID_ARGUMENT
    );
    // The agent's own refusal (the guest's MemTotal) reaches containerd.
    let msg = message(update(
        &shim,
        "a",
        url,
        serde_json::json!({"memory": {"limit": 200 << 20}}),
    ));
    assert!(msg.contains("more than the guest's memory"), "{msg}");
    // Bad input, named.
    let msg = message(update(
        &shim,
        "a",
        "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources",
        serde_json::json!({}),
    ));
    assert!(msg.contains("WindowsResources"), "{msg}");
    let msg = message(update(
        &shim,
        "a",
        url,
        serde_json::json!({"pids": {"limit": "many"}}),
    ));
    assert!(msg.contains("pids.limit"), "{msg}");
    let mut none = UpdateTaskRequest::new();
    none.id = "a".into();
    let msg = message(shim.task().update(ctx(), &none));
    assert!(msg.contains("the update has no resources"), "{msg}");
    assert_eq!(
        code(update(&shim, "b", url, serde_json::json!({}))),
        Code::NOT_FOUND
    );
    assert_eq!(
        updates().len(),
        2,
        "only the first update and the agent's refusal reached it"
    );

    // What was kept is what the agent took last: the next update starts
    // from it (an unchanged cpuset is still fitted).
    update(
        &shim,
        "a",
        url,
        serde_json::json!({"memory": {"limit": 96 << 20}, "cpu": {"cpus": "1"}}),
    )
    .expect("update a again");
    assert_eq!(
        updates()[2],
        serde_json::json!({"memory": {"limit": 96 << 20}, "cpu": {"cpus": "0"}})
    );

    shim.kill("a", false).unwrap();
    exit.release();
    shim.wait("a", "").unwrap();
    shim.delete("a").unwrap();
    stop_the_vm(&shim);
}

/// Removes what a failed pod-cgroup test left: its cgroups (killing what
/// is in them) and the VM directory's mounts.
struct PodCgroupCleanup(PathBuf, Option<crate::host_cgroup::HostCgroupState>);

impl Drop for PodCgroupCleanup {
    fn drop(&mut self) {
        if let Some(st) = &self.1 {
            crate::host_cgroup::remove(st);
        }
        super::super::vm::cleanup_dead(&self.0, "cleanup");
    }
}

/// The pod path, through the real boot of a pod's VM with a stand-in
/// monitor (a script that leaves a child behind, reports ready and
/// sleeps): the sandbox's `linux.cgroupsPath`, as containerd's CRI writes
/// it with `SystemdCgroup` (`slice:prefix:id`), becomes the pod's host
/// cgroup on every hierarchy, expanded as systemd would; the monitor and
/// its child are in it from the start, with the memory limit derived from
/// the VM's size. When the shim dies, containerd's cleanup (`cleanup_dead`)
/// kills the child left in it and removes it, parents made for it too. A
/// sandbox whose path climbs out with `..` boots nothing, naming the field.
#[test]
fn the_pod_vm_runs_in_the_sandbox_host_cgroup_and_cleanup_removes_it() {
    use crate::host_cgroup::{Layout, HOST_MEMORY_OVERHEAD_MIB};
    require!(root(), "a host cgroup, and the share's bind mount,");
    let layout = Layout::probe().unwrap();
    if let Err(e) = layout.place(&crate::host_cgroup::CgroupPath::parse("/x", false).unwrap()) {
        skip!("{e}");
    }
    let t = tempfile::tempdir().unwrap();
    let fake = t.path().join("husk-vmm");
    fs::write(
        &fake,
        "#!/bin/sh\nsleep 600 &\necho '{\"ok\":true}' >&3\nexec sleep 600\n",
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let slice = format!("huskunit{}-pod1.slice", std::process::id());
    let spec = |cgroups_path: &str| -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {
                "cgroupsPath": cgroups_path,
                "resources": {"memory": {"limit": 134_217_728i64}},
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}],
            },
        }))
        .unwrap()
    };

    let dir = t.path().join("vm");
    let mut cleanup = PodCgroupCleanup(dir.clone(), None);
    let vm = PodVm::boot(
        &dir,
        &spec(&format!("{slice}:cri-containerd:sb1")),
        &fake,
        |_| None,
    )
    .unwrap();
    let st = vm.host_cgroup.clone().expect("the pod has a host cgroup");
    cleanup.1 = Some(st.clone());
    let n = std::process::id();
    let want = format!("/huskunit{n}.slice/huskunit{n}-pod1.slice/cri-containerd-sb1.scope");
    assert_eq!(st.path, want);
    assert_eq!(st.dirs.len(), layout.hierarchies.len());
    let recorded: crate::host_cgroup::HostCgroupState =
        serde_json::from_slice(&fs::read(dir.join("host-cgroup.json")).unwrap()).unwrap();
    assert_eq!(recorded, st);
    let cgroups = fs::read_to_string(format!("/proc/{}/cgroup", vm.monitor_pid)).unwrap();
    for line in cgroups.lines() {
        assert!(line.ends_with(&want), "{line} (of {cgroups})");
    }
    for (h, d) in layout.hierarchies.iter().zip(&st.dirs) {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap();
        assert_eq!(
            procs.lines().count(),
            2,
            "the monitor and its child: {procs}"
        );
        if h.controllers.iter().any(|c| c == "memory") {
            let f = if h.unified {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            let limit = fs::read_to_string(d.join(f)).unwrap();
            // 128 MiB + the guest's 64 MiB, + the host processes'.
            assert_eq!(
                limit.trim(),
                ((128 + 64 + HOST_MEMORY_OVERHEAD_MIB) << 20).to_string()
            );
        }
    }

    // The shim dies with its monitor; the monitor's child stays.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vm.monitor_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(vm.monitor_pid), None);
    super::super::vm::cleanup_dead(&dir, "sb1");
    for d in st.dirs.iter().chain(&st.parents) {
        assert!(!d.exists(), "{} is left", d.display());
    }
    assert!(!dir.exists());

    let bad = t.path().join("vm-bad");
    let e = PodVm::boot(&bad, &spec("/huskunit/../escape"), &fake, |_| None)
        .expect_err("a path climbing out with ..")
        .to_string();
    assert!(
        e.starts_with("linux.cgroupsPath \"/huskunit/../escape\": "),
        "{e}"
    );
    assert!(!bad.exists(), "{} is left", bad.display());
    for h in &layout.hierarchies {
        assert!(!h.mount.join("escape").exists() && !h.mount.join("huskunit").exists());
    }
}
