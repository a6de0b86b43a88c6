//! A blocking client for the agent, used by the runtime, the shim and the
//! monitor's tests.
//!
//! The agent is reached either directly on a Unix socket (agent tests on the
//! host, `husk-agent --listen unix:PATH`) or through the hybrid vsock socket
//! of `vhost-device-vsock`, where the host writes `CONNECT <port>\n` and reads
//! `OK <host port>\n` before the stream is the guest connection (the
//! Firecracker convention).
//!
//! Nothing here waits forever on the agent. `vhost-device-vsock` sometimes
//! never answers a `CONNECT` it accepted (a request queued while the guest's
//! driver was not ready is not always delivered), so each handshake (the
//! `OK` line and the hello's acknowledgement) has [`HANDSHAKE_TIMEOUT`] and
//! is retried on a fresh connection; every response but `WaitProcess`'s
//! and `WaitOom`'s (they last as long as the process, or until an OOM
//! kill) has [`CALL_TIMEOUT`] unless the caller asks for less
//! ([`AgentClient::call_with_timeout`], [`AgentClient::set_call_timeout`]);
//! a connect never outlives the timeout it was given by more than one
//! connection attempt. A caller holding a lock gets an error, not a hang.
//!
//! Pids in a response are checked ([`crate::check_guest_pid`]) before the
//! caller sees them.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::{
    check_guest_pid, check_version, BadGuestPid, ContainerRef, ErrorCode, Hello, ProcessRef,
    ProtocolError, Request, RequestFrame, Response, ResponseFrame, StreamKind, WaitOom,
    PROTOCOL_VERSION,
};

/// How long one connection handshake may take before it is given up and
/// tried again on a new connection. An agent that is up answers within
/// milliseconds, even under TCG.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a response may take, for every request but `WaitProcess` and
/// `WaitOom` (which last as long as the process, or until an OOM kill).
/// The agent answers everything else without blocking; this bounds a
/// wedged guest.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent listens, seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    /// A Unix socket the agent listens on itself.
    Unix(PathBuf),
    /// The host side of a hybrid vsock device, and the guest port.
    HybridVsock {
        /// The Unix socket `vhost-device-vsock --uds-path` listens on.
        uds: PathBuf,
        /// The agent's vsock port in the guest.
        port: u32,
    },
}

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection could not be made or broke.
    #[error("cannot reach the agent at {addr}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The last failure.
        #[source]
        source: io::Error,
    },
    /// A frame could not be sent or received.
    #[error("agent connection failed")]
    Frame(#[from] FrameError),
    /// The agent answered with an error.
    #[error(transparent)]
    Agent(#[from] ProtocolError),
    /// The agent did not answer in time.
    #[error("the agent did not answer {what} within {after:?}")]
    TimedOut {
        /// What was not answered (a request's name, or the handshake).
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The agent answered something this request cannot produce.
    #[error("unexpected response from agent: {0}")]
    Unexpected(String),
    /// The agent reported a pid no process can have.
    #[error(transparent)]
    BadPid(#[from] BadGuestPid),
}

impl ClientError {
    /// Whether the failure was the connection's (worth a new connection),
    /// not an answer from the agent.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::TimedOut { .. }
                | ClientError::Frame(FrameError::Io(_) | FrameError::Closed)
        )
    }

    /// The agent's error code, when the agent answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent(e) => Some(e.code),
            _ => None,
        }
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            AgentAddr::HybridVsock { uds, port } => write!(f, "vsock:{}:{port}", uds.display()),
        }
    }
}

impl AgentAddr {
    /// Opens one raw connection to the agent (no hello sent yet).
    pub fn connect(&self) -> io::Result<UnixStream> {
        match self {
            AgentAddr::Unix(p) => UnixStream::connect(p),
            AgentAddr::HybridVsock { uds, port } => connect_hybrid_vsock(uds, *port),
        }
    }

    /// [`AgentAddr::connect`] with `step` instead of [`HANDSHAKE_TIMEOUT`]
    /// on the vsock `CONNECT` reply.
    fn connect_step(&self, step: Duration) -> io::Result<UnixStream> {
        match self {
            AgentAddr::Unix(p) => UnixStream::connect(p),
            AgentAddr::HybridVsock { uds, port } => connect_hybrid_vsock_within(uds, *port, step),
        }
    }

    /// Like [`AgentAddr::connect`], retrying until `timeout` while the agent
    /// is not up yet (the socket is missing, refuses, or the guest port has no
    /// listener so the daemon closes the connection).
    pub fn connect_retry(&self, timeout: Duration) -> Result<UnixStream, ClientError> {
        self.connect_with(timeout, |_| Ok(()))
    }

    /// Connects and runs `handshake` on the new stream (with
    /// [`HANDSHAKE_TIMEOUT`], or the time left if less, on reads), retrying
    /// on a fresh connection until `timeout` while either fails for a
    /// connection reason. An error the agent answered is returned at once.
    fn connect_with(
        &self,
        timeout: Duration,
        handshake: impl Fn(&mut UnixStream) -> Result<(), ClientError>,
    ) -> Result<UnixStream, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            // A zero read timeout would mean none; a millisecond is the floor.
            let step = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), HANDSHAKE_TIMEOUT);
            let attempt = self
                .connect_step(step)
                .map_err(|e| ClientError::Connect {
                    addr: self.to_string(),
                    source: e,
                })
                .and_then(|mut s| {
                    s.set_read_timeout(Some(step)).map_err(FrameError::Io)?;
                    handshake(&mut s).map_err(|e| timed_out(e, "the handshake", step))?;
                    s.set_read_timeout(None).map_err(FrameError::Io)?;
                    Ok(s)
                });
            match attempt {
                Ok(s) => return Ok(s),
                Err(e) if !e.is_connection() || Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Opens a stdio stream connection for one process, already acknowledged.
    /// The agent is expected to be up: connection failures are retried for
    /// a few handshakes only.
    pub fn open_stream(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StreamKind,
    ) -> Result<UnixStream, ClientError> {
        let hello = Hello::Stream {
            version: PROTOCOL_VERSION,
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        };
        self.connect_with(HANDSHAKE_TIMEOUT * 3, |s| {
            write_frame(s, &hello)?;
            read_ack(s)
        })
    }

    /// Opens a connection to TCP `port` on the guest's loopback, already
    /// acknowledged: what is written to it reaches whatever listens there,
    /// and what that writes comes back. A refusal names the port.
    pub fn open_port(&self, port: u16) -> Result<UnixStream, ClientError> {
        let hello = Hello::Port {
            version: PROTOCOL_VERSION,
            port,
        };
        self.connect_with(HANDSHAKE_TIMEOUT * 3, |s| {
            write_frame(s, &hello)?;
            read_ack(s)
        })
    }
}

/// Connects to a hybrid vsock Unix socket and asks for guest port `port`.
pub fn connect_hybrid_vsock(uds: &Path, port: u32) -> io::Result<UnixStream> {
    connect_hybrid_vsock_within(uds, port, HANDSHAKE_TIMEOUT)
}

fn connect_hybrid_vsock_within(uds: &Path, port: u32, step: Duration) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    // The daemon may accept and then never answer (see the module doc).
    s.set_read_timeout(Some(step))?;
    s.set_write_timeout(Some(step))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    read_connect_reply(&mut s, port)?;
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// Reads the daemon's answer to `CONNECT <port>`: `OK <host port>\n`, or
/// anything else for a refusal. Reads a byte at a time: whatever follows
/// the newline is already the guest's data and must stay in the socket.
pub(crate) fn read_connect_reply(s: &mut impl Read, port: u32) -> io::Result<()> {
    let mut line = Vec::with_capacity(16);
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("no listener on guest vsock port {port}"),
                ))
            }
            _ if b[0] == b'\n' => break,
            _ if line.len() >= 64 => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "overlong CONNECT reply",
                ))
            }
            _ => line.push(b[0]),
        }
    }
    if line.starts_with(b"OK ") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "vsock CONNECT {port} refused: {}",
                crate::sanitize(&String::from_utf8_lossy(&line))
            ),
        ))
    }
}

/// Names a read that ran out of time as such, rather than as an I/O error.
fn timed_out(e: ClientError, what: &'static str, after: Duration) -> ClientError {
    match e {
        ClientError::Frame(FrameError::Io(io))
            if matches!(
                io.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::TimedOut { what, after }
        }
        e => e,
    }
}

/// Refuses a response whose pids no process can have.
fn check_pids(resp: Response) -> Result<Response, ClientError> {
    match &resp {
        Response::Process { pid } => {
            check_guest_pid(i64::from(*pid))?;
        }
        Response::Processes { processes } => {
            for p in processes {
                check_guest_pid(i64::from(p.pid))?;
            }
        }
        _ => {}
    }
    Ok(resp)
}

pub(crate) fn read_ack(s: &mut impl Read) -> Result<(), ClientError> {
    let ack: ResponseFrame = read_frame(s)?;
    check_version(ack.version)?;
    ack.result.map(|_| ())?;
    Ok(())
}

/// A control connection to the agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    next_id: u64,
    call_timeout: Duration,
}

impl AgentClient {
    /// Connects (retrying until `timeout`) and sends the control hello.
    pub fn connect(addr: &AgentAddr, timeout: Duration) -> Result<Self, ClientError> {
        let hello = Hello::Control {
            version: PROTOCOL_VERSION,
        };
        let stream = addr.connect_with(timeout, |s| {
            write_frame(s, &hello)?;
            read_ack(s)
        })?;
        Ok(AgentClient {
            stream,
            next_id: 1,
            call_timeout: CALL_TIMEOUT,
        })
    }

    /// Wraps an already-connected stream whose hello was acknowledged.
    pub fn from_stream(stream: UnixStream) -> Self {
        AgentClient {
            stream,
            next_id: 1,
            call_timeout: CALL_TIMEOUT,
        }
    }

    /// Changes how long responses may take (default [`CALL_TIMEOUT`]).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Sends one request and waits for its response (for as long as the
    /// client's call timeout, [`CALL_TIMEOUT`] unless changed).
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let timeout = match request {
            Request::WaitProcess(_) | Request::WaitOom(_) => None,
            _ => Some(self.call_timeout),
        };
        self.call_within(request, timeout)
    }

    /// Sends one request and waits at most `timeout` for its response,
    /// whatever the request (a `WaitProcess` too).
    pub fn call_with_timeout(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        // A zero read timeout would mean none.
        self.call_within(request, Some(timeout.max(Duration::from_millis(1))))
    }

    fn call_within(
        &mut self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let what = request.name();
        self.stream
            .set_read_timeout(timeout)
            .map_err(FrameError::Io)?;
        write_frame(
            &mut self.stream,
            &RequestFrame {
                version: PROTOCOL_VERSION,
                id,
                request,
            },
        )?;
        let resp: ResponseFrame = match read_frame(&mut self.stream) {
            Ok(r) => r,
            Err(e) => {
                // A late answer must not be read as the next call's.
                let _ = self.stream.shutdown(std::net::Shutdown::Both);
                let e = ClientError::from(e);
                return Err(match timeout {
                    Some(after) => timed_out(e, what, after),
                    None => e,
                });
            }
        };
        check_version(resp.version)?;
        if resp.id != id {
            return Err(ClientError::Unexpected(format!(
                "response id {} for request {id}",
                resp.id
            )));
        }
        check_pids(resp.result?)
    }

    /// Waits for a process to exit and returns its exit status.
    pub fn wait(&mut self, container_id: &str, exec_id: Option<&str>) -> Result<i32, ClientError> {
        let r = ProcessRef {
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
        };
        match self.call(Request::WaitProcess(r))? {
            Response::Exited { exit_status } => Ok(exit_status),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Waits until container `container_id` has had more OOM kills than
    /// `after`, or its init has exited: the count so far, and whether the
    /// init has exited ([`Request::WaitOom`]).
    pub fn wait_oom(&mut self, container_id: &str, after: u64) -> Result<(u64, bool), ClientError> {
        let r = WaitOom {
            container_id: container_id.to_owned(),
            after,
        };
        match self.call(Request::WaitOom(r))? {
            Response::OomKills { count, exited } => Ok((count, exited)),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Starts a created container.
    pub fn start(&mut self, container_id: &str) -> Result<(), ClientError> {
        self.call(Request::StartContainer(ContainerRef {
            container_id: container_id.to_owned(),
        }))
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn socket_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("vsock.sock")
    }

    /// Reads the `CONNECT <port>` line a hybrid vsock daemon gets.
    fn read_connect(s: &mut UnixStream) -> String {
        let mut line = String::new();
        io::BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }

    fn ack(s: &mut UnixStream) {
        let _hello: Hello = read_frame(s).unwrap();
        write_frame(s, &ResponseFrame::new(0, Ok(Response::Empty))).unwrap();
    }

    #[test]
    fn an_unanswered_connect_is_retried_on_a_new_connection() {
        let uds = socket_path("unanswered");
        let listener = UnixListener::bind(&uds).unwrap();
        let daemon = thread::spawn(move || {
            // The first CONNECT is accepted and never answered.
            let (mut first, _) = listener.accept().unwrap();
            assert_eq!(read_connect(&mut first), "CONNECT 1024\n");
            let (mut second, _) = listener.accept().unwrap();
            assert_eq!(read_connect(&mut second), "CONNECT 1024\n");
            second.write_all(b"OK 5\n").unwrap();
            ack(&mut second);
            let req: RequestFrame = read_frame(&mut second).unwrap();
            assert_eq!(req.request, Request::Version);
            write_frame(
                &mut second,
                &ResponseFrame::new(req.id, Ok(Response::Empty)),
            )
            .unwrap();
            drop(first);
        });
        let addr = AgentAddr::HybridVsock { uds, port: 1024 };
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let started = Instant::now();
            let r = AgentClient::connect(&addr, Duration::from_secs(30))
                .and_then(|mut c| c.call(Request::Version));
            let _ = tx.send((r, started.elapsed()));
        });
        // A client without the handshake timeout waits here forever.
        let (r, took) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the client hangs on the unanswered CONNECT");
        assert_eq!(r.unwrap(), Response::Empty);
        assert!(took >= HANDSHAKE_TIMEOUT);
        daemon.join().unwrap();
    }

    #[test]
    fn an_unacknowledged_hello_is_retried_and_a_refusal_is_not() {
        let uds = socket_path("hello");
        let listener = UnixListener::bind(&uds).unwrap();
        let daemon = thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            read_connect(&mut first);
            first.write_all(b"OK 5\n").unwrap();
            let _hello: Hello = read_frame(&mut first).unwrap();
            // No acknowledgement on the first; the second is refused.
            let (mut second, _) = listener.accept().unwrap();
            read_connect(&mut second);
            second.write_all(b"OK 6\n").unwrap();
            let _hello: Hello = read_frame(&mut second).unwrap();
            let refusal = ProtocolError::new(ErrorCode::NotFound, "no such process");
            write_frame(&mut second, &ResponseFrame::new(0, Err(refusal))).unwrap();
            drop(first);
        });
        let addr = AgentAddr::HybridVsock { uds, port: 1024 };
        let e = addr
            .open_stream("c", None, StreamKind::Stdout)
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e:?}");
        daemon.join().unwrap();
    }

    #[test]
    fn a_response_that_never_comes_is_an_error_but_a_wait_is_not_bounded() {
        let uds = socket_path("call");
        let listener = UnixListener::bind(&uds).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let daemon = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            ack(&mut s);
            // Version: never answered.
            let _: RequestFrame = read_frame(&mut s).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            ack(&mut s);
            // WaitProcess: answered well after the call timeout.
            let req: RequestFrame = read_frame(&mut s).unwrap();
            // Not synchronisation: the late answer is what is tested.
            thread::sleep(Duration::from_millis(600));
            let exited = Response::Exited { exit_status: 7 };
            write_frame(&mut s, &ResponseFrame::new(req.id, Ok(exited))).unwrap();
            let _ = rx.recv();
        });
        let addr = AgentAddr::Unix(uds);
        let mut c = AgentClient::connect(&addr, Duration::from_secs(5)).unwrap();
        c.set_call_timeout(Duration::from_millis(200));
        let e = c.call(Request::Version).expect_err("no answer");
        assert!(e.is_connection(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "the agent did not answer Version within 200ms"
        );
        let mut c = AgentClient::connect(&addr, Duration::from_secs(5)).unwrap();
        c.set_call_timeout(Duration::from_millis(200));
        assert_eq!(c.wait("c", None).unwrap(), 7);
        tx.send(()).unwrap();
        daemon.join().unwrap();
    }

    /// A listener that acknowledges hellos and then serves `answer` to
    /// each request on each connection (`None`: never answers).
    fn fake_agent(
        name: &str,
        answer: impl Fn(&Request) -> Option<Response> + Send + 'static,
    ) -> AgentAddr {
        let uds = socket_path(name);
        let listener = UnixListener::bind(&uds).unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                ack(&mut s);
                while let Ok(req) = read_frame::<_, RequestFrame>(&mut s) {
                    match answer(&req.request) {
                        Some(r) => {
                            let _ = write_frame(&mut s, &ResponseFrame::new(req.id, Ok(r)));
                        }
                        // Hold the connection open, silent.
                        None => thread::sleep(Duration::from_secs(3600)),
                    }
                }
            }
        });
        AgentAddr::Unix(uds)
    }

    #[test]
    fn call_with_timeout_bounds_any_request_and_names_it() {
        let addr = fake_agent("silent", |_| None);
        let mut c = AgentClient::connect(&addr, Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        let e = c
            .call_with_timeout(
                Request::WaitProcess(ProcessRef {
                    container_id: "c".into(),
                    exec_id: None,
                }),
                Duration::from_millis(300),
            )
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
        assert!(
            matches!(
                e,
                ClientError::TimedOut {
                    what: "WaitProcess",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_connect_never_outlives_its_timeout_by_a_handshake() {
        // Accepts, never acknowledges the hello.
        let uds = socket_path("mute-hello");
        let listener = UnixListener::bind(&uds).unwrap();
        thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let started = Instant::now();
        let e = AgentClient::connect(&AgentAddr::Unix(uds), Duration::from_millis(400))
            .expect_err("no acknowledgement");
        let took = started.elapsed();
        // Each handshake used to wait HANDSHAKE_TIMEOUT whatever was left.
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        assert!(
            matches!(
                e,
                ClientError::TimedOut {
                    what: "the handshake",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn impossible_guest_pids_are_refused() {
        let addr = fake_agent("pids", |r| match r {
            Request::ExecProcess(_) | Request::StartContainer(_) => {
                Some(Response::Process { pid: -1 })
            }
            Request::ListProcesses(_) => Some(Response::Processes {
                processes: vec![
                    crate::ProcessInfo {
                        pid: 1,
                        exec_id: None,
                    },
                    crate::ProcessInfo {
                        pid: MAX_PID_PLUS_ONE,
                        exec_id: None,
                    },
                ],
            }),
            _ => Some(Response::Process { pid: 42 }),
        });
        let mut c = AgentClient::connect(&addr, Duration::from_secs(5)).unwrap();
        assert_eq!(
            c.call(Request::Version).unwrap(),
            Response::Process { pid: 42 }
        );
        let e = c.start("c").expect_err("pid -1");
        assert!(matches!(e, ClientError::BadPid(BadGuestPid(-1))), "{e:?}");
        let e = c
            .call(Request::ListProcesses(ContainerRef {
                container_id: "c".into(),
            }))
            .expect_err("pid beyond pid_max");
        assert!(
            matches!(e, ClientError::BadPid(BadGuestPid(p)) if p == i64::from(MAX_PID_PLUS_ONE)),
            "{e:?}"
        );
    }

    const MAX_PID_PLUS_ONE: i32 = crate::MAX_GUEST_PID + 1;

    /// A `WaitOom` lasts until an OOM kill: not bounded by the call
    /// timeout, as a `WaitProcess` is not; any other answer is an error.
    #[test]
    fn an_oom_wait_is_not_bounded_by_the_call_timeout() {
        let addr = fake_agent("oom", |r| match r {
            Request::WaitOom(w) if w.container_id == "c" => {
                // Not synchronisation: the late answer is what is tested.
                thread::sleep(Duration::from_millis(600));
                Some(Response::OomKills {
                    count: w.after + 1,
                    exited: false,
                })
            }
            _ => Some(Response::Empty),
        });
        let mut c = AgentClient::connect(&addr, Duration::from_secs(5)).unwrap();
        c.set_call_timeout(Duration::from_millis(200));
        assert_eq!(c.wait_oom("c", 4).unwrap(), (5, false));
        let e = c.wait_oom("other", 0).expect_err("an Empty answer");
        assert!(matches!(e, ClientError::Unexpected(_)), "{e:?}");
    }

    #[test]
    fn an_agent_error_prints_escaped() {
        let e = ClientError::from(ProtocolError::new(
            ErrorCode::Internal,
            "no such file \x1b]0;owned\x07\x1b[2J",
        ));
        let shown = crate::error_chain(&e);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\x1b]0;owned\\x07"), "{shown}");
    }
}
