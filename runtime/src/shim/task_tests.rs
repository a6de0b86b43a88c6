//! The task service's locking, called through ttrpc as containerd calls it,
//! with the pod VM's boot faked and its agent a fake on a Unix socket: a
//! create that waits (for the VM to boot, or for the agent) holds up no
//! call about the pod's other tasks, and leaves no VM behind.

use std::fs;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_sync::{create_events, create_task, Events, TaskClient};
use containerd_shim::protos::ttrpc::{self, context, Client, Code, Server};
use husk_protocol::client::AgentAddr;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{Hello, RequestFrame, ResponseFrame};

use super::*;

/// How long a call may take before the test fails: the calls checked
/// answer at once unless they wait for a create that the test holds
/// until after them. Only a failure guard, never reached when they pass.
const GUARD: Duration = Duration::from_secs(20);

fn ctx() -> Context {
    context::with_duration(GUARD)
}

/// The ttrpc status code of a failed call.
fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// containerd's event service, keeping the topics published.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Events for Recorder {
    fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> TtrpcResult<Empty> {
        self.0.lock().unwrap().push(req.envelope.topic.clone());
        Ok(Empty::new())
    }
}

/// A fake agent at `path`: acknowledges each connection's hello, then
/// answers each request with `answer` (on that connection's own thread).
fn fake_agent(
    path: &Path,
    answer: impl Fn(Request) -> Response + Send + Sync + 'static,
) -> AgentAddr {
    let listener = UnixListener::bind(path).unwrap();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let answer = answer.clone();
            thread::spawn(move || {
                if read_frame::<_, Hello>(&mut s).is_err() {
                    return;
                }
                let _ = write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty)));
                while let Ok(f) = read_frame::<_, RequestFrame>(&mut s) {
                    let r = answer(f.request);
                    if write_frame(&mut s, &ResponseFrame::new(f.id, Ok(r))).is_err() {
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
        let bundle = self.dir.path().join("bundles").join(id);
        fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        });
        fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let mut r = CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = bundle.to_string_lossy().into_owned();
        r
    }

    /// Creates `id` on a thread of its own.
    fn create_in_background(&self, id: &str) -> thread::JoinHandle<ttrpc::Result<u32>> {
        let (task, req) = (self.task(), self.create_req(id));
        thread::spawn(move || task.create(ctx(), &req).map(|r| r.pid))
    }

    fn state(&self, id: &str) -> ttrpc::Result<StateResponse> {
        let mut r = StateRequest::new();
        r.id = id.into();
        self.task().state(ctx(), &r)
    }

    fn pids(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let mut r = PidsRequest::new();
        r.id = id.into();
        let out = self.task().pids(ctx(), &r)?;
        Ok(out.processes.iter().map(|p| p.pid).collect())
    }

    fn kill(&self, id: &str) -> ttrpc::Result<Empty> {
        let mut r = KillRequest::new();
        r.id = id.into();
        r.signal = 9;
        self.task().kill(ctx(), &r)
    }

    fn delete(&self, id: &str) -> ttrpc::Result<DeleteResponse> {
        let mut r = DeleteRequest::new();
        r.id = id.into();
        self.task().delete(ctx(), &r)
    }

    fn shutdown_in_background(&self) -> thread::JoinHandle<ttrpc::Result<Empty>> {
        let task = self.task();
        thread::spawn(move || task.shutdown(ctx(), &ShutdownRequest::new()))
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
        self.events.0.lock().unwrap().clone()
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

fn status_and_pid(s: &StateResponse) -> (Status, u32) {
    (s.status.enum_value_or_default(), s.pid)
}

#[test]
fn calls_about_other_tasks_answer_while_a_create_waits_for_the_agent() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: a container's share is a bind mount: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let agent = fake_agent(&dir.path().join("agent.sock"), move |req| match req {
        Request::CreateContainer(c) if c.container_id == "b" => {
            entered_tx.lock().unwrap().send(()).unwrap();
            // Held until the test has made its other calls.
            let _ = release_rx.lock().unwrap().recv();
            Response::Process { pid: 20 }
        }
        Request::CreateContainer(_) => Response::Process { pid: 10 },
        Request::ListProcesses(_) => Response::Processes {
            processes: vec![husk_protocol::ProcessInfo {
                pid: 10,
                exec_id: None,
            }],
        },
        Request::SignalProcess(_) | Request::RemoveContainer(_) => Response::Empty,
        other => panic!("the fake agent got {other:?}"),
    });
    let shim = Shim::new(dir, fake_vm(agent));
    let a = shim.task().create(ctx(), &shim.create_req("a")).unwrap();
    assert_eq!(a.pid, 10);

    let b = shim.create_in_background("b");
    entered
        .recv_timeout(GUARD)
        .expect("b's create reaches the agent");
    // b's create now waits in the agent's CreateContainer, past the boot
    // and the share: the calls about a answer meanwhile.
    let st = shim.state("a").expect("state of a while b is created");
    assert_eq!(status_and_pid(&st), (Status::CREATED, 10));
    assert_eq!(shim.pids("a").expect("pids of a"), [10]);
    shim.kill("a").expect("kill a");
    assert_eq!(
        code(shim.task().create(ctx(), &shim.create_req("b"))),
        Code::ALREADY_EXISTS
    );
    assert_eq!(code(shim.state("c")), Code::NOT_FOUND);
    shim.delete("a").expect("delete a");
    assert!(
        !b.is_finished(),
        "b's create ended before the agent answered"
    );

    // Shutdown once a is gone waits for b's create: b is created, and the
    // shim keeps its VM.
    let shutdown = shim.shutdown_in_background();
    release.send(()).unwrap();
    assert_eq!(b.join().unwrap().expect("create b"), 20);
    shutdown.join().unwrap().expect("shutdown");
    assert!(shim.stopping.lock().unwrap().is_none());
    let st = shim.state("b").expect("state of b");
    assert_eq!(status_and_pid(&st), (Status::CREATED, 20));

    shim.delete("b").expect("delete b");
    shim.shutdown_in_background()
        .join()
        .unwrap()
        .expect("shutdown");
    assert!(shim.exits());
    let vm = shim
        .stopping
        .lock()
        .unwrap()
        .take()
        .expect("the VM is left to the shim's main thread");
    vm.shutdown();
    assert!(!vm.dir.exists(), "{} is left", vm.dir.display());
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
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
    let boot: Box<BootFn> = Box::new(
        move |_: &Path, _: &Spec, _: &Path, _: &dyn Fn(&str) -> Option<String>| {
            entered_tx.lock().unwrap().send(()).unwrap();
            let _ = release_rx.lock().unwrap().recv();
            Err(ShimError::Invalid("the fake VM failed to start".into()))
        },
    );
    let shim = Shim::new(dir, boot);
    let a = shim.create_in_background("a");
    entered
        .recv_timeout(GUARD)
        .expect("a's create boots the VM");

    // While the VM boots: a second create of a is refused, calls about
    // other tasks answer, and no agent call waits for the VM.
    assert_eq!(
        code(shim.task().create(ctx(), &shim.create_req("a"))),
        Code::ALREADY_EXISTS
    );
    assert_eq!(code(shim.state("b")), Code::NOT_FOUND);
    assert_eq!(code(shim.pids("a")), Code::NOT_FOUND);
    let mut req = ConnectRequest::new();
    req.id = "b".into();
    let connected = shim.task().connect(ctx(), &req).expect("connect");
    assert_eq!(connected.shim_pid, std::process::id());
    // a's state, and a shutdown, wait for a's create to end.
    let state = {
        let task = shim.task();
        thread::spawn(move || {
            let mut r = StateRequest::new();
            r.id = "a".into();
            task.state(ctx(), &r)
        })
    };
    let shutdown = shim.shutdown_in_background();
    assert!(!a.is_finished(), "a's create ended before its boot did");

    release.send(()).unwrap();
    let e = a.join().unwrap().expect_err("the boot failed");
    assert!(e.to_string().contains("the fake VM failed to start"), "{e}");
    // Never a task a's failed create did not make.
    assert_eq!(code(state.join().unwrap()), Code::NOT_FOUND);
    shutdown.join().unwrap().expect("shutdown");
    assert!(shim.exits(), "a pod left without a task lets the shim go");
    assert!(shim.stopping.lock().unwrap().is_none(), "no VM was made");
    // Nothing boots a VM the exiting shim would leave behind.
    assert_eq!(
        code(shim.task().create(ctx(), &shim.create_req("c"))),
        Code::INVALID_ARGUMENT
    );
    assert!(shim.topics().is_empty());
}
