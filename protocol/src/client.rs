//! A blocking client for the agent, used by the runtime, the shim and the
//! monitor's tests.
//!
//! The agent is reached either directly on a Unix socket (agent tests on the
//! host, `husk-agent --listen unix:PATH`) or through the hybrid vsock socket
//! of `vhost-device-vsock`, where the host writes `CONNECT <port>\n` and reads
//! `OK <host port>\n` before the stream is the guest connection (the
//! Firecracker convention).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::{
    check_version, ContainerRef, ErrorCode, Hello, ProcessRef, ProtocolError, Request,
    RequestFrame, Response, ResponseFrame, StreamKind, PROTOCOL_VERSION,
};

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
    /// The agent answered something this request cannot produce.
    #[error("unexpected response from agent: {0}")]
    Unexpected(String),
}

impl ClientError {
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

    /// Like [`AgentAddr::connect`], retrying until `timeout` while the agent
    /// is not up yet (the socket is missing, refuses, or the guest port has no
    /// listener so the daemon closes the connection).
    pub fn connect_retry(&self, timeout: Duration) -> Result<UnixStream, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(5);
        loop {
            match self.connect() {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => {
                    return Err(ClientError::Connect {
                        addr: self.to_string(),
                        source: e,
                    })
                }
                Err(_) => {
                    thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Opens a stdio stream connection for one process, already acknowledged.
    pub fn open_stream(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        stream: StreamKind,
    ) -> Result<UnixStream, ClientError> {
        let mut s = self.connect().map_err(|e| ClientError::Connect {
            addr: self.to_string(),
            source: e,
        })?;
        let hello = Hello::Stream {
            version: PROTOCOL_VERSION,
            container_id: container_id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            stream,
        };
        write_frame(&mut s, &hello)?;
        read_ack(&mut s)?;
        Ok(s)
    }
}

/// Connects to a hybrid vsock Unix socket and asks for guest port `port`.
pub fn connect_hybrid_vsock(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // Read the reply a byte at a time: whatever follows the newline is
    // already the guest's data and must stay in the socket.
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
        Ok(s)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "vsock CONNECT {port} refused: {}",
                String::from_utf8_lossy(&line)
            ),
        ))
    }
}

fn read_ack(s: &mut UnixStream) -> Result<(), ClientError> {
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
}

impl AgentClient {
    /// Connects (retrying until `timeout`) and sends the control hello.
    pub fn connect(addr: &AgentAddr, timeout: Duration) -> Result<Self, ClientError> {
        let mut stream = addr.connect_retry(timeout)?;
        write_frame(
            &mut stream,
            &Hello::Control {
                version: PROTOCOL_VERSION,
            },
        )?;
        read_ack(&mut stream)?;
        Ok(AgentClient { stream, next_id: 1 })
    }

    /// Wraps an already-connected stream whose hello was acknowledged.
    pub fn from_stream(stream: UnixStream) -> Self {
        AgentClient { stream, next_id: 1 }
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(
            &mut self.stream,
            &RequestFrame {
                version: PROTOCOL_VERSION,
                id,
                request,
            },
        )?;
        let resp: ResponseFrame = read_frame(&mut self.stream)?;
        check_version(resp.version)?;
        if resp.id != id {
            return Err(ClientError::Unexpected(format!(
                "response id {} for request {id}",
                resp.id
            )));
        }
        Ok(resp.result?)
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

    /// Starts a created container.
    pub fn start(&mut self, container_id: &str) -> Result<(), ClientError> {
        self.call(Request::StartContainer(ContainerRef {
            container_id: container_id.to_owned(),
        }))
        .map(|_| ())
    }
}
