//! The agent's server: one thread, one poll(2) loop over the listener, the
//! control and stream connections, the stdio pipes and pty masters, and a
//! signalfd for SIGCHLD (and SIGTERM/SIGINT).
//!
//! Control connections are answered in order; a `WaitProcess` parks its
//! connection until the process exits (a `WaitOom` until an OOM kill or
//! the init's exit, see [`oom`]), while the others keep being served.

mod handlers;
mod listen;
mod oom;
pub mod pump;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use husk_protocol::frame::MAX_FRAME_LEN;
use husk_protocol::{
    check_version, ErrorCode, Hello, ProtocolError, RequestFrame, Response, ResponseFrame,
};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::container::cgroups::CgroupRoot;
use crate::container::Container;
pub use listen::{bind, Listen};
use pump::{Pump, PumpState};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be made.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The signalfd could not be made.
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    /// poll(2) failed.
    #[error("poll failed")]
    Poll(#[source] io::Error),
}

/// How the server was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A `Shutdown` request.
    Shutdown,
    /// SIGTERM or SIGINT.
    Signal,
}

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent is the guest's PID 1 (mount shares, reboot on shutdown).
    pub pid1: bool,
    /// The cgroup2 hierarchy for container cgroups, if any.
    pub cgroup_root: Option<CgroupRoot>,
}

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    hello_done: bool,
    /// (request id, container, exec) of a parked WaitProcess.
    waiting: Option<(u64, String, Option<String>)>,
    /// A parked WaitOom.
    oom_waiting: Option<oom::OomWaiting>,
    /// A StartContainer, RemoveContainer, PauseContainer or
    /// ResumeContainer in progress ([`PendingStart`], [`PendingRemove`],
    /// [`PendingFreeze`] in the server): later frames wait for its answer.
    parked: bool,
    /// Close once `outbuf` is flushed.
    closing: bool,
}

/// The most a connection buffers before it is read no further: one frame
/// of the largest size with its prefix, and one read more.
const MAX_BUFFERED: usize = MAX_FRAME_LEN as usize + 4;

impl Conn {
    /// Whether to read more from the peer. A connection whose frames wait
    /// (a parked `WaitProcess`, a close after an error) keeps its bytes; it
    /// used to keep reading them too, 64 KiB per poll round without limit,
    /// for as long as the host kept sending.
    fn wants_input(&self) -> bool {
        self.inbuf.len() < MAX_BUFFERED
    }
}

/// A StartContainer whose init has been told to exec: answered when its
/// sync socket says how that went (readable in the poll loop), or after
/// [`crate::container::START_TIMEOUT`]. Nothing blocks meanwhile.
#[derive(Debug)]
struct PendingStart {
    req_id: u64,
    container_id: String,
    sync: OwnedFd,
    deadline: Instant,
}

/// How long a RemoveContainer waits for the killed processes to be
/// reaped before it forgets them anyway.
pub(crate) const REMOVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A RemoveContainer whose processes were killed: answered once they are
/// reaped, or after [`REMOVE_TIMEOUT`].
#[derive(Debug)]
struct PendingRemove {
    req_id: u64,
    container_id: String,
    deadline: Instant,
}

/// How long a PauseContainer (ResumeContainer) waits for the kernel to
/// report the container's cgroup frozen (thawed). A process in an
/// uninterruptible sleep (a virtio-fs request, say) holds a freeze up
/// until it returns.
pub(crate) const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A PauseContainer or ResumeContainer whose `cgroup.freeze` is written:
/// answered once `cgroup.events` says so (the kernel notifies it with
/// POLLPRI; it is also read again every [`FREEZE_RECHECK`]), or after
/// [`FREEZE_TIMEOUT`], when a pause is undone.
#[derive(Debug)]
struct PendingFreeze {
    req_id: u64,
    container_id: String,
    /// The container's cgroup.
    cgroup: std::path::PathBuf,
    /// Its `cgroup.events`, polled for POLLPRI (`None`: read it on the
    /// recheck only).
    events: Option<std::fs::File>,
    /// Frozen (pause) or thawed (resume).
    frozen: bool,
    deadline: Instant,
}

impl PendingFreeze {
    /// `Some(true)` once `cgroup.events` says the cgroup is as asked,
    /// `Some(false)` once the deadline passed without it, `None` until
    /// then.
    fn outcome(&mut self, now: Instant) -> Option<bool> {
        // Reading the open file again is also what re-arms its POLLPRI.
        let read = self.events.as_mut().and_then(|events| {
            use std::io::{Read, Seek};
            let mut text = String::new();
            events.seek(std::io::SeekFrom::Start(0)).ok()?;
            events.read_to_string(&mut text).ok()?;
            crate::container::cgroups::frozen_in(&text)
        });
        let state = read.or_else(|| crate::container::cgroups::is_frozen(&self.cgroup));
        if state == Some(self.frozen) {
            Some(true)
        } else if self.deadline <= now {
            Some(false)
        } else {
            None
        }
    }
}

/// How often a pending freeze reads `cgroup.events` again, whatever the
/// kernel notified.
const FREEZE_RECHECK: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
enum Token {
    Listener,
    Signals,
    ConnFd(u64),
    PumpSrc(u64),
    PumpDst(u64),
    StartSync(u64),
    /// A watched `memory.events` ([`Server::oom_watches`]).
    OomEvents(u64),
    /// A pending pause's or resume's `cgroup.events`.
    FreezeEvents,
}

/// The server's state.
#[derive(Debug)]
pub struct Server {
    cfg: Config,
    listener: OwnedFd,
    signals: SignalFd,
    conns: HashMap<u64, Conn>,
    pumps: HashMap<u64, Pump>,
    next_id: u64,
    containers: HashMap<String, Container>,
    /// Starts in progress, by the connection that asked.
    starts: HashMap<u64, PendingStart>,
    /// Removals in progress, by the connection that asked.
    removes: HashMap<u64, PendingRemove>,
    /// Pauses and resumes in progress, by the connection that asked.
    freezes: HashMap<u64, PendingFreeze>,
    /// pid -> (container, exec id) for every tracked live process.
    pids: HashMap<i32, (String, Option<String>)>,
    /// The containers' `memory.events` opened for `WaitOom`s, by key.
    oom_watches: HashMap<u64, oom::OomWatch>,
    exit: Option<Exit>,
}

impl Server {
    /// A server on an already bound listener.
    pub fn new(cfg: Config, listener: OwnedFd) -> Result<Self, ServerError> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| ServerError::Signals(e.into()))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| ServerError::Signals(e.into()))?;
        // Orphaned grandchildren (a container init whose intermediate
        // parent exited) must come back to us to be reaped.
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| ServerError::Signals(e.into()))?;
        Ok(Server {
            cfg,
            listener,
            signals,
            conns: HashMap::new(),
            pumps: HashMap::new(),
            next_id: 1,
            containers: HashMap::new(),
            starts: HashMap::new(),
            removes: HashMap::new(),
            freezes: HashMap::new(),
            pids: HashMap::new(),
            oom_watches: HashMap::new(),
            exit: None,
        })
    }

    /// Serves until Shutdown or a terminating signal; every container
    /// process is killed before returning.
    pub fn run(&mut self) -> Result<Exit, ServerError> {
        loop {
            if let Some(exit) = self.exit {
                self.flush_all_blocking();
                self.kill_everything();
                return Ok(exit);
            }
            let mut pfds = Vec::new();
            let mut tokens = Vec::new();
            let mut add = |fd: i32, ev: i16, t: Token| {
                pfds.push(libc::pollfd {
                    fd,
                    events: ev,
                    revents: 0,
                });
                tokens.push(t);
            };
            add(self.listener.as_raw_fd(), libc::POLLIN, Token::Listener);
            add(
                self.signals.as_fd().as_raw_fd(),
                libc::POLLIN,
                Token::Signals,
            );
            for (id, c) in &self.conns {
                // Not readable while its buffer is full (see Conn::wants_input).
                let mut ev = if c.wants_input() { libc::POLLIN } else { 0 };
                if !c.outbuf.is_empty() {
                    ev |= libc::POLLOUT;
                }
                add(c.fd.as_raw_fd(), ev, Token::ConnFd(*id));
            }
            for (id, p) in &self.pumps {
                if p.wants_read() {
                    add(p.src.as_raw_fd(), libc::POLLIN, Token::PumpSrc(*id));
                }
                if p.wants_write() {
                    add(p.dst.as_raw_fd(), libc::POLLOUT, Token::PumpDst(*id));
                }
            }
            for (id, s) in &self.starts {
                add(s.sync.as_raw_fd(), libc::POLLIN, Token::StartSync(*id));
            }
            // Only while someone waits: a container at its memory limit
            // changes its memory.events (`max`) all the time.
            for (id, w) in &self.oom_watches {
                if self.oom_waited(&w.container_id) {
                    add(
                        w.file.as_fd().as_raw_fd(),
                        libc::POLLPRI,
                        Token::OomEvents(*id),
                    );
                }
            }
            for f in self.freezes.values() {
                if let Some(events) = &f.events {
                    add(events.as_raw_fd(), libc::POLLPRI, Token::FreezeEvents);
                }
            }
            let recheck = (!self.freezes.is_empty()).then(|| Instant::now() + FREEZE_RECHECK);
            let timeout = self
                .starts
                .values()
                .map(|s| s.deadline)
                .chain(self.removes.values().map(|r| r.deadline))
                .chain(self.freezes.values().map(|f| f.deadline))
                .chain(recheck)
                .min()
                .map_or(-1, |d| {
                    let left = d.saturating_duration_since(Instant::now());
                    // Rounded up: never wake before the deadline.
                    (left.as_millis() + 1).min(i32::MAX as u128) as i32
                });
            crate::sys::poll(&mut pfds, timeout).map_err(ServerError::Poll)?;
            self.expire_starts();
            for (pfd, tok) in pfds.iter().zip(tokens) {
                if pfd.revents == 0 {
                    continue;
                }
                match tok {
                    Token::Listener => self.accept(),
                    Token::Signals => self.on_signals(),
                    Token::ConnFd(id) => self.on_conn(id, pfd.revents),
                    Token::PumpSrc(id) | Token::PumpDst(id) => self.on_pump(id),
                    Token::StartSync(id) => self.on_start_sync(id),
                    Token::OomEvents(id) => self.on_oom_events(id),
                    // Read with the others below.
                    Token::FreezeEvents => {}
                }
            }
            self.progress_removes();
            self.progress_freezes();
        }
    }

    fn accept(&mut self) {
        loop {
            match crate::sys::accept(self.listener.as_fd()) {
                Ok(Some(fd)) => {
                    match listen::peer_allowed(fd.as_fd()) {
                        Ok((true, _)) => {}
                        Ok((false, peer)) => {
                            tracing::warn!(%peer, "refused a connection that is not from the host");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "refused a connection whose peer is unknown");
                            continue;
                        }
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    self.conns.insert(
                        id,
                        Conn {
                            fd,
                            inbuf: Vec::new(),
                            outbuf: Vec::new(),
                            hello_done: false,
                            waiting: None,
                            oom_waiting: None,
                            parked: false,
                            closing: false,
                        },
                    );
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = info.ssi_signo as i32;
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                tracing::info!(signal = sig, "terminating");
                self.exit = Some(Exit::Signal);
            }
        }
        self.reap();
    }

    /// Reaps every exited child, recording the statuses of tracked ones.
    pub fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            self.record_exit(pid.as_raw(), status);
        }
    }

    fn record_exit(&mut self, pid: i32, status: i32) {
        let Some((cid, exec)) = self.pids.remove(&pid) else {
            tracing::debug!(pid, status, "reaped an untracked process");
            return;
        };
        tracing::info!(pid, status, container = %cid, exec = ?exec, "process exited");
        if let Some(c) = self.containers.get_mut(&cid) {
            if let Some(p) = c.process_mut(exec.as_deref()) {
                p.exit_status = Some(status);
            }
            if exec.is_none() {
                c.status = husk_protocol::ContainerStatus::Stopped;
                // Before the exit is reported: the rest of the container
                // goes with its init, and with it the last writers of its
                // stdio, so the host's output streams end now.
                match c.kill_rest() {
                    None => tracing::debug!(container = %cid, "init exited: killed its cgroup"),
                    Some(0) => {}
                    Some(n) => {
                        tracing::info!(container = %cid, killed = n, "init exited: killed the container's other processes")
                    }
                }
            }
        }
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.waiting
                    .as_ref()
                    .is_some_and(|(_, wc, we)| *wc == cid && *we == exec)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(c) = self.conns.get_mut(&id) {
                let (req, _, _) = c.waiting.take().expect("filtered on waiting");
                queue(
                    c,
                    req,
                    Ok(Response::Exited {
                        exit_status: status,
                    }),
                );
            }
            self.process_frames(id);
            self.flush(id);
        }
        if exec.is_none() {
            self.oom_init_exited(&cid);
        }
    }

    fn on_conn(&mut self, id: u64, revents: i16) {
        if revents & libc::POLLOUT != 0 {
            self.flush(id);
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if !c.wants_input() {
                // A parked wait (or a close) with a full buffer behind it:
                // nothing is read until that is handled, but a peer that
                // hung up is gone for good.
                if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.conns.remove(&id);
                }
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            while c.wants_input() {
                match nix::unistd::read(c.fd.as_raw_fd(), &mut buf) {
                    Ok(0) => {
                        // Requests sent before the half-close still get
                        // answered (a parked wait is dropped).
                        self.process_frames(id);
                        self.flush(id);
                        self.conns.remove(&id);
                        return;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::EINTR) => {}
                    Err(_) => {
                        self.conns.remove(&id);
                        return;
                    }
                }
            }
            self.process_frames(id);
            self.flush(id);
        }
    }

    /// Handles the complete frames buffered on a connection, in order.
    fn process_frames(&mut self, id: u64) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.waiting.is_some() || c.oom_waiting.is_some() || c.parked || c.closing {
                return;
            }
            let body = match next_frame(&mut c.inbuf) {
                NextFrame::Incomplete => return,
                NextFrame::TooLarge(e) => {
                    queue(c, 0, Err(e));
                    c.closing = true;
                    return;
                }
                NextFrame::Body(body) => body,
            };
            if c.hello_done {
                self.on_request(id, &body);
            } else {
                self.on_hello(id, &body);
            }
        }
    }

    fn on_hello(&mut self, id: u64, body: &[u8]) {
        let hello = decode_hello(body);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match hello {
            Err(e) => {
                tracing::info!(error = %e, "refused a connection hello");
                queue(c, 0, Err(e));
                c.closing = true;
            }
            Ok(Hello::Control { .. }) => {
                c.hello_done = true;
                queue(c, 0, Ok(Response::Empty));
            }
            Ok(Hello::Stream {
                container_id,
                exec_id,
                stream,
                ..
            }) => {
                let key = pump::PumpKey {
                    container_id,
                    exec_id,
                    stream,
                };
                self.attach_stream(id, key);
            }
            Ok(Hello::Port { port, .. }) => self.attach_port(id, port),
        }
    }

    fn on_request(&mut self, id: u64, body: &[u8]) {
        let frame = decode_request(body);
        let (req_id, result) = match frame {
            Err((req_id, e)) => (req_id, Some(Err(e))),
            Ok(f) => (f.id, self.dispatch(id, f.id, f.request)),
        };
        if let (Some(r), Some(c)) = (result, self.conns.get_mut(&id)) {
            if let Err(e) = &r {
                tracing::info!(id = req_id, error = %e, "request failed");
            }
            queue(c, req_id, r);
        }
    }

    /// Writes what the socket takes now; drops a broken connection.
    fn flush(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while !c.outbuf.is_empty() {
            match nix::unistd::write(&c.fd, &c.outbuf) {
                Ok(n) => {
                    c.outbuf.drain(..n);
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(_) => {
                    self.conns.remove(&id);
                    return;
                }
            }
        }
        if c.closing {
            self.conns.remove(&id);
        }
    }

    fn flush_all_blocking(&mut self) {
        for c in self.conns.values_mut() {
            if c.outbuf.is_empty() {
                continue;
            }
            let _ = crate::sys::set_nonblocking(c.fd.as_raw_fd(), false);
            if let Ok(fd) = c.fd.try_clone() {
                let _ = std::fs::File::from(fd).write_all(&c.outbuf);
            }
            c.outbuf.clear();
        }
    }

    fn on_pump(&mut self, id: u64) {
        let Some(p) = self.pumps.get_mut(&id) else {
            return;
        };
        if p.service() == PumpState::Done {
            let peer = self.pumps.remove(&id).and_then(|p| p.peer);
            if let Some(peer) = peer {
                self.pumps.remove(&peer);
            }
        }
    }

    fn kill_everything(&mut self) {
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.remove_container(&id);
        }
    }
}

/// What the bytes buffered on a connection start with.
#[derive(Debug, PartialEq)]
enum NextFrame {
    /// Not a whole frame yet.
    Incomplete,
    /// A length prefix beyond [`MAX_FRAME_LEN`]: answered with this error,
    /// then the connection closes.
    TooLarge(ProtocolError),
    /// One frame's body, taken off the buffer.
    Body(Vec<u8>),
}

/// Takes the first frame off `inbuf` (the host's bytes, trusted no more
/// than the guest's: a length beyond the limit is refused before anything
/// is buffered for it).
fn next_frame(inbuf: &mut Vec<u8>) -> NextFrame {
    let Some(prefix) = inbuf.first_chunk::<4>() else {
        return NextFrame::Incomplete;
    };
    let len = u32::from_be_bytes(*prefix);
    if len > MAX_FRAME_LEN {
        return NextFrame::TooLarge(ProtocolError::new(
            ErrorCode::InvalidArgument,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME_LEN} bytes"),
        ));
    }
    let end = 4 + len as usize;
    if inbuf.len() < end {
        return NextFrame::Incomplete;
    }
    let body = inbuf[4..end].to_vec();
    inbuf.drain(..end);
    NextFrame::Body(body)
}

/// A connection's first frame: a hello of our version.
fn decode_hello(body: &[u8]) -> Result<Hello, ProtocolError> {
    match serde_json::from_slice::<Hello>(body) {
        Ok(h) => check_version(h.version()).map(|_| h),
        Err(e) => Err(bad_frame(body, "hello", &e).1),
    }
}

/// A request frame of our version; the error carries the id to answer
/// (the frame's, when it has one, else 0).
fn decode_request(body: &[u8]) -> Result<RequestFrame, (u64, ProtocolError)> {
    match serde_json::from_slice::<RequestFrame>(body) {
        Ok(f) => match check_version(f.version) {
            Ok(()) => Ok(f),
            Err(e) => Err((f.id, e)),
        },
        Err(e) => Err(bad_frame(body, "request", &e)),
    }
}

fn queue(c: &mut Conn, id: u64, result: Result<Response, ProtocolError>) {
    match serde_json::to_vec(&ResponseFrame::new(id, result)) {
        Ok(body) => {
            c.outbuf
                .extend_from_slice(&(body.len() as u32).to_be_bytes());
            c.outbuf.extend_from_slice(&body);
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a response"),
    }
}

/// The error for a frame that does not decode: the version is checked
/// first (another version may well have other fields), and the id is
/// echoed when it can be found.
fn bad_frame(body: &[u8], what: &str, e: &serde_json::Error) -> (u64, ProtocolError) {
    let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let id = v
        .as_ref()
        .and_then(|v| v.get("id"))
        .and_then(|i| i.as_u64())
        .unwrap_or(0);
    if let Some(ver) = v
        .as_ref()
        .and_then(|v| v.get("version"))
        .and_then(|x| x.as_u64())
    {
        if let Err(e) = check_version(ver as u32) {
            return (id, e);
        }
    }
    (
        id,
        ProtocolError::new(
            ErrorCode::InvalidArgument,
            format!("malformed {what} frame: {e}"),
        ),
    )
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    /// A pause or resume is answered once `cgroup.events` says so, read
    /// again through its open file; until then it waits, and past its
    /// deadline it is over unanswered (the server undoes the pause).
    #[test]
    fn a_pending_freeze_waits_for_cgroup_events_then_its_deadline() {
        let t = tempfile::tempdir().unwrap();
        let events = t.path().join("cgroup.events");
        std::fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        let now = Instant::now();
        let mut f = PendingFreeze {
            req_id: 1,
            container_id: "c".into(),
            cgroup: t.path().to_owned(),
            events: std::fs::File::open(&events).ok(),
            frozen: true,
            deadline: now + FREEZE_TIMEOUT,
        };
        assert_eq!(f.outcome(now), None);
        std::fs::write(&events, "populated 1\nfrozen 1\n").unwrap();
        assert_eq!(f.outcome(now), Some(true));
        // A resume waits for frozen 0, then times out.
        f.frozen = false;
        assert_eq!(f.outcome(now), None);
        assert_eq!(f.outcome(now + FREEZE_TIMEOUT), Some(false));
        // Without the open file, the path is read.
        f.events = None;
        std::fs::write(&events, "frozen 0\n").unwrap();
        assert_eq!(f.outcome(now), Some(true));
    }
}
