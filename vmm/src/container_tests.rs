//! Container supervision against a fake agent on a Unix socket and a fake
//! guest: the protocol sequence, stdio, readiness, signals, exit status.

use super::*;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{ErrorCode, Hello, ProtocolError, RequestFrame, ResponseFrame, StreamKind};
use std::io::Read;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Condvar;

/// The ready line: the container's pid, and the boot stages the
/// supervisor passed (the guest was already started), in order.
fn assert_ready_with_stages(line: &str) {
    let Ok(husk_vmm_contract::ReadyReport::Ready { pid, boot }) =
        husk_vmm_contract::ReadyReport::parse(line)
    else {
        panic!("not a ready line: {line:?}")
    };
    assert_eq!(pid, Some(42));
    // Other tests in this process record stages too: these two, in order.
    let at = |stage: &str| boot.iter().position(|s| s.stage == stage);
    let (answered, created) = (at("agent answered"), at("container created"));
    assert!(
        answered.is_some() && answered < created,
        "no agent answered, then container created: {line}"
    );
}

#[derive(Default)]
struct State {
    out: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    err: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    out_rx: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    err_rx: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    exit: (Mutex<Option<i32>>, Condvar),
    log: Mutex<Vec<String>>,
    stopped: Mutex<Option<UnixStream>>,
}

impl State {
    /// The fake container's init ends: outputs close, status set.
    fn finish(&self, out: &[u8], status: i32) {
        if let Some(tx) = self.out.lock().unwrap().take() {
            let _ = tx.send(out.to_vec());
        }
        if let Some(tx) = self.err.lock().unwrap().take() {
            let _ = tx.send(b"to-stderr\n".to_vec());
        }
        *self.exit.0.lock().unwrap() = Some(status);
        self.exit.1.notify_all();
    }
}

fn serve_control(mut s: UnixStream, st: Arc<State>) {
    while let Ok(f) = read_frame::<_, RequestFrame>(&mut s) {
        let r = match f.request {
            Request::CreateContainer(c) if c.container_id == "bad" => Err(ProtocolError::new(
                ErrorCode::InvalidArgument,
                "process.args is empty",
            )),
            Request::CreateContainer(_) => Ok(Response::Process { pid: 42 }),
            Request::WaitProcess(_) => {
                let mut g = st.exit.0.lock().unwrap();
                while g.is_none() {
                    g = st.exit.1.wait(g).unwrap();
                }
                Ok(Response::Exited {
                    exit_status: g.unwrap(),
                })
            }
            Request::SignalProcess(sp) => {
                st.log.lock().unwrap().push(format!("signal {}", sp.signal));
                st.finish(b"", 128 + sp.signal);
                Ok(Response::Empty)
            }
            Request::Shutdown => {
                if let Some(mut w) = st.stopped.lock().unwrap().take() {
                    let _ = w.write_all(b"x");
                }
                Ok(Response::Empty)
            }
            _ => Ok(Response::Empty),
        };
        write_frame(&mut s, &ResponseFrame::new(f.id, r)).unwrap();
    }
}

fn serve(mut s: UnixStream, st: Arc<State>) {
    let hello: Hello = read_frame(&mut s).unwrap();
    st.log.lock().unwrap().push(format!("{hello:?}"));
    write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty))).unwrap();
    match hello {
        Hello::Control { .. } => serve_control(s, st),
        Hello::Stream {
            stream: StreamKind::Stdin,
            ..
        } => {
            let mut data = Vec::new();
            s.read_to_end(&mut data).unwrap();
            st.finish(&data, 7);
        }
        Hello::Stream { stream, .. } => {
            let rx = if stream == StreamKind::Stdout {
                &st.out_rx
            } else {
                &st.err_rx
            };
            let rx = rx.lock().unwrap().take().unwrap();
            if let Ok(data) = rx.recv() {
                s.write_all(&data).unwrap();
            }
        }
        // The monitor never forwards ports; the log shows it if it did.
        Hello::Port { .. } => {}
    }
}

struct FakeGuest {
    sock: PathBuf,
    stopped: UnixStream,
    exited: bool,
    shut_down: bool,
    /// What the supervisor asked of the guest, in order.
    events: Vec<&'static str>,
}

impl Guest for FakeGuest {
    fn agent_addr(&self) -> AgentAddr {
        AgentAddr::Unix(self.sock.clone())
    }
    fn try_wait(&mut self) -> Option<VmExit> {
        self.stopped.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        if (&self.stopped).read(&mut b).is_ok() {
            self.exited = true;
        }
        self.exited.then_some(VmExit::GuestStopped)
    }
    fn wait_timeout(&mut self, _: Option<Duration>) -> Option<VmExit> {
        self.stopped.set_nonblocking(false).unwrap();
        self.stopped
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        let _ = (&self.stopped).read(&mut b);
        self.exited = true;
        self.events.push("wait");
        Some(VmExit::GuestStopped)
    }
    fn exit_fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.stopped.as_fd()]
    }
    fn shutdown(&mut self) {
        self.shut_down = true;
        self.events.push("shutdown");
    }
    fn record_stopped(&mut self) {
        self.events.push("stopped");
    }
}

fn fake(dir: &std::path::Path) -> (FakeGuest, Arc<State>) {
    let sock = dir.join("agent.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let st = Arc::new(State::default());
    let (otx, orx) = mpsc::channel();
    let (etx, erx) = mpsc::channel();
    *st.out.lock().unwrap() = Some(otx);
    *st.err.lock().unwrap() = Some(etx);
    *st.out_rx.lock().unwrap() = Some(orx);
    *st.err_rx.lock().unwrap() = Some(erx);
    *st.stopped.lock().unwrap() = Some(a);
    let st2 = st.clone();
    thread::spawn(move || {
        for c in l.incoming() {
            let st = st2.clone();
            thread::spawn(move || serve(c.unwrap(), st));
        }
    });
    (
        FakeGuest {
            sock,
            stopped: b,
            exited: false,
            shut_down: false,
            events: vec![],
        },
        st,
    )
}

fn ccfg(id: &str) -> ContainerConfig {
    let req = format!(
        r#"{{"container_id":"{id}","spec":{{"ociVersion":"1.0.2","root":{{"path":"/r"}}}},
        "shares":[],"stdio":{{"stdin":true,"stdout":true,"stderr":true}}}}"#
    );
    ContainerConfig {
        create: serde_json::from_str(&req).unwrap(),
        ready_fd: None,
        network: None,
    }
}

/// Pipes standing in for the monitor's fds 0/1/2 and the ready fd.
struct Io {
    stdin_w: Option<std::fs::File>,
    out: thread::JoinHandle<Vec<u8>>,
    err: thread::JoinHandle<Vec<u8>>,
    ready_r: std::fs::File,
}

fn host_io() -> (HostStdio, ReadyFd, Io) {
    let (in_r, in_w) = nix::unistd::pipe().unwrap();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let (ready_r, ready_w) = nix::unistd::pipe().unwrap();
    let collect = |fd: OwnedFd| {
        thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::from(fd).read_to_end(&mut v).unwrap();
            v
        })
    };
    let io = Io {
        stdin_w: Some(in_w.into()),
        out: collect(out_r),
        err: collect(err_r),
        ready_r: ready_r.into(),
    };
    let ready = ReadyFd::from_inherited(ready_w.into_raw_fd()).unwrap();
    (
        HostStdio {
            stdin: in_r,
            stdout: out_w,
            stderr: err_w,
        },
        ready,
        io,
    )
}

#[test]
fn runs_a_container_end_to_end_against_a_fake_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guest, st) = fake(dir.path());
    let (host, ready, mut io) = host_io();
    let input: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut w = io.stdin_w.take().unwrap();
    let data = input.clone();
    thread::spawn(move || w.write_all(&data).unwrap());
    // Blocked in this thread only; the signalfd sees nothing here.
    let mut signals = Signals::block().unwrap();
    let status = supervise_container(
        &mut guest,
        &ccfg("c1"),
        Duration::from_secs(5),
        &mut signals,
        ready,
        host,
    );
    assert_eq!(status, 7);
    assert!(guest.shut_down);
    // The stop is recorded (for `husk state`) first; once the agent has
    // answered Shutdown the VM is stopped at once, without waiting for the
    // guest to stop by itself (seconds under emulation).
    assert_eq!(guest.events, ["stopped", "shutdown"]);
    let mut line = String::new();
    io.ready_r.read_to_string(&mut line).unwrap();
    assert_ready_with_stages(&line);
    assert!(io.out.join().unwrap() == input, "stdout differs from stdin");
    assert_eq!(io.err.join().unwrap(), b"to-stderr\n");
    let log = st.log.lock().unwrap().join("\n");
    assert_eq!(log.matches("Control").count(), 2, "{log}");
    for s in ["Stdin", "Stdout", "Stderr"] {
        assert!(log.contains(&format!("stream: {s}")), "{log}");
    }
}

/// The same under husk-vmm's filters: the supervising thread confined as
/// the main thread, the pumps and the waiter confining themselves. In a
/// child process (see `seccomp::testing`).
#[test]
fn runs_a_container_under_the_main_and_pump_filters() {
    if !crate::seccomp::testing::in_child_process(
        module_path!(),
        "runs_a_container_under_the_main_and_pump_filters",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut guest, st) = fake(dir.path());
    let (host, ready, mut io) = host_io();
    let input: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut w = io.stdin_w.take().unwrap();
    let data = input.clone();
    thread::spawn(move || w.write_all(&data).unwrap());
    let status = thread::spawn(move || {
        let mut signals = Signals::block().unwrap();
        crate::privileges::drop_thread_privileges(&[]).unwrap();
        crate::seccomp::install(
            crate::seccomp::ThreadKind::Main,
            &crate::seccomp::own_context(),
        )
        .unwrap();
        let status = supervise_container(
            &mut guest,
            &ccfg("c1"),
            Duration::from_secs(5),
            &mut signals,
            ready,
            host,
        );
        assert!(guest.shut_down);
        status
    })
    .join()
    .unwrap();
    assert_eq!(status, 7);
    let mut line = String::new();
    io.ready_r.read_to_string(&mut line).unwrap();
    assert_ready_with_stages(&line);
    assert!(io.out.join().unwrap() == input, "stdout differs from stdin");
    assert_eq!(io.err.join().unwrap(), b"to-stderr\n");
    assert_eq!(st.log.lock().unwrap().len(), 5);
}

#[test]
fn forwards_signals_to_init() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guest, st) = fake(dir.path());
    let (host, ready, mut io) = host_io();
    let mut signals = Signals::block().unwrap();
    let me = nix::sys::pthread::pthread_self();
    let mut ready_r = io.ready_r.try_clone().unwrap();
    // Keeps stdin open: only the signal ends the fake container.
    let _stdin = io.stdin_w.take();
    thread::spawn(move || {
        let mut b = [0u8; 1];
        ready_r.read_exact(&mut b).unwrap();
        nix::sys::pthread::pthread_kill(me, nix::sys::signal::Signal::SIGUSR1).unwrap();
    });
    let status = supervise_container(
        &mut guest,
        &ccfg("c2"),
        Duration::from_secs(5),
        &mut signals,
        ready,
        host,
    );
    assert_eq!(status, 128 + libc::SIGUSR1);
    assert!(st
        .log
        .lock()
        .unwrap()
        .contains(&format!("signal {}", libc::SIGUSR1)));
    assert!(guest.shut_down);
}

#[test]
fn agent_errors_and_dead_guests_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guest, _st) = fake(dir.path());
    let (host, ready, mut io) = host_io();
    let mut signals = Signals::block().unwrap();
    let status = supervise_container(
        &mut guest,
        &ccfg("bad"),
        Duration::from_secs(5),
        &mut signals,
        ready,
        host,
    );
    assert_eq!(status, EXIT_FAILURE);
    assert!(guest.shut_down);
    let mut line = String::new();
    io.ready_r.read_to_string(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], false);
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("cannot create the container") && e.contains("process.args is empty"),
        "{e}"
    );

    // No agent ever answers and the guest is gone.
    let (host, ready, mut io) = host_io();
    let mut guest = FakeGuest {
        sock: dir.path().join("nobody.sock"),
        stopped: UnixStream::pair().unwrap().0,
        exited: true,
        shut_down: false,
        events: vec![],
    };
    let status = supervise_container(
        &mut guest,
        &ccfg("c3"),
        Duration::from_secs(5),
        &mut signals,
        ready,
        host,
    );
    assert_eq!(status, EXIT_FAILURE);
    let mut line = String::new();
    io.ready_r.read_to_string(&mut line).unwrap();
    assert!(
        line.contains("the VM stopped before the agent answered"),
        "{line}"
    );
}
