//! The connections between the guest and host Unix sockets, and the
//! credit-based flow control between them; no virtqueues here (see
//! `backend.rs`), so this is testable with socket pairs alone.
//!
//! * Host-initiated (the hybrid convention): a client connects to
//!   `--uds-path`, writes `CONNECT <port>\n`; the guest gets a `REQUEST` to
//!   that port from a fresh host port, and on its `RESPONSE` the client
//!   reads `OK <host port>\n` and the stream is the connection. A `RST`
//!   (nobody listens) closes the client's socket.
//! * Guest-initiated: a `REQUEST` to host port P connects to the Unix
//!   socket `<uds-path>_P`; `RESPONSE` on success, `RST` otherwise.
//!
//! Flow control: the guest may have at most [`BUF_ALLOC`] bytes in flight
//! to a connection (we advertise that `buf_alloc` and count what reached
//! the host stream in `fwd_cnt`), and a guest that sends past it is reset,
//! so per-connection buffering towards the host is bounded by what we
//! advertised. Towards the guest we read from the host stream only as much
//! as the guest's credit allows, and at most [`STAGE_CAP`] at a time.
//!
//! Half-close: a guest `SHUTDOWN` with `SEND` becomes `shutdown(SHUT_WR)`
//! once its data reached the host, with `RCV` `shutdown(SHUT_RD)`; both
//! together (the guest closed) finish the connection with a `RST`. EOF on
//! the host stream becomes `SHUTDOWN(SEND)` once the data read before it
//! reached the guest.
//!
//! Everything the guest sends is validated: CIDs, socket type, op, and a
//! connection's state; a packet that does not fit is dropped or answered
//! with `RST`, never trusted. Memory is bounded: per connection by the
//! buffers above, the connections by [`MAX_CONNS`], and the queue of
//! replies to unknown connections by [`MAX_RST_QUEUE`].

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::packet::{
    op, Header, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The receive buffer we advertise to the guest, per connection: the most
/// guest data we hold for a host stream that is not reading.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Bytes consumed since the last advertised `fwd_cnt` that trigger an
/// unsolicited `CREDIT_UPDATE` (see [`Muxer`]'s flow-control notes).
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// The most host data read ahead for the guest, per connection.
pub const STAGE_CAP: usize = 64 * 1024;
/// The most connections (plus host sockets still sending `CONNECT`).
pub const MAX_CONNS: usize = 1024;
/// The most queued `RST`s for packets that match no connection.
pub const MAX_RST_QUEUE: usize = 256;
/// The longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 64;
/// First host port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll token of the `--uds-path` listener.
const LISTENER_TOKEN: u64 = 0;
/// `Conn::interest` of a stream taken out of epoll after a hang-up.
const DETACHED: u32 = u32::MAX;

/// Setting up the muxer failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Binding `--uds-path`.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating or using the epoll instance.
    #[error("epoll: {0}")]
    Epoll(std::io::Error),
}

/// (host port, guest port).
type Key = (u32, u32);

/// Host data read ahead for the guest: taken from the front, read into at
/// the back, compacted only when read into (not once per packet).
#[derive(Debug, Default)]
struct Stage {
    buf: Vec<u8>,
    off: usize,
}

impl Stage {
    fn from_vec(buf: Vec<u8>) -> Self {
        Stage { buf, off: 0 }
    }

    fn len(&self) -> usize {
        self.buf.len() - self.off
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.off = 0;
    }

    /// The first `n` bytes (at most `len()`), removed.
    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.len());
        let v = self.buf[self.off..self.off + n].to_vec();
        self.off += n;
        if self.off == self.buf.len() {
            self.clear();
        }
        v
    }

    /// `room` writable bytes at the back, for [`Stage::commit`].
    fn spare(&mut self, room: usize) -> &mut [u8] {
        if self.off > 0 {
            self.buf.drain(..self.off);
            self.off = 0;
        }
        let start = self.buf.len();
        self.buf.resize(start + room, 0);
        &mut self.buf[start..]
    }

    /// Keeps `n` of the `room` bytes [`Stage::spare`] offered.
    fn commit(&mut self, room: usize, n: usize) {
        let len = self.buf.len();
        self.buf.truncate(len - room + n.min(room));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated; `REQUEST` queued or sent, awaiting `RESPONSE`.
    Connecting,
    /// Data flows.
    Connected,
}

/// A host client that has not finished its `CONNECT` line.
#[derive(Debug)]
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    /// Guest data not yet written to the host stream (≤ BUF_ALLOC).
    to_host: VecDeque<u8>,
    /// Bytes written to the host stream, ever (wrapping).
    fwd_cnt: u32,
    /// `fwd_cnt` as last told the guest.
    adv_fwd_cnt: u32,
    /// Host data read but not yet sent to the guest (≤ STAGE_CAP).
    to_guest: Stage,
    /// Bytes sent to the guest, ever (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    need_request: bool,
    need_response: bool,
    need_credit_update: bool,
    need_rst: bool,
    /// Shutdown flags the guest sent.
    guest_shut: u32,
    /// The host stream reached EOF.
    host_eof: bool,
    /// Shutdown flags sent to the guest.
    shut_sent: u32,
    /// We did `shutdown(SHUT_WR)` on the host stream.
    host_write_closed: bool,
    /// The epoll events registered.
    interest: u32,
    /// In the muxer's ready queue.
    queued: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Conn {
            stream,
            token,
            state,
            to_host: VecDeque::new(),
            fwd_cnt: 0,
            adv_fwd_cnt: 0,
            to_guest: Stage::default(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            need_request: false,
            need_response: false,
            need_credit_update: false,
            need_rst: false,
            guest_shut: 0,
            host_eof: false,
            shut_sent: 0,
            host_write_closed: false,
            interest: 0,
            queued: false,
        }
    }

    /// Bytes the guest can still take (its credit), never negative.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the host stream should be read now.
    fn wants_read(&self) -> bool {
        self.state == State::Connected
            && !self.host_eof
            && self.guest_shut & SHUTDOWN_RCV == 0
            && self.to_guest.len() < STAGE_CAP
            && (self.peer_credit() as usize) > self.to_guest.len()
    }

    /// Whether a packet for the guest is due.
    fn has_packet(&self) -> bool {
        self.need_rst
            || self.need_request
            || self.need_response
            || (self.state == State::Connected
                && ((!self.to_guest.is_empty() && self.peer_credit() > 0)
                    || self.eof_due()
                    || self.need_credit_update))
    }

    /// EOF from the host is to be passed on as `SHUTDOWN(SEND)`.
    fn eof_due(&self) -> bool {
        self.host_eof && self.to_guest.is_empty() && self.shut_sent & SHUTDOWN_SEND == 0
    }
}

/// What an epoll token stands for.
#[derive(Debug, Clone, Copy)]
enum Target {
    Pending,
    Conn(Key),
}

/// The connections of one guest.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Conn>,
    pending: HashMap<u64, Pending>,
    targets: HashMap<u64, Target>,
    ready: VecDeque<Key>,
    rst_queue: VecDeque<Header>,
    next_token: u64,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` for host clients of guest `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let listen_err = |source| MuxerError::Listen {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            pending: HashMap::new(),
            targets: HashMap::new(),
            ready: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The epoll fd that becomes readable when a host socket needs service
    /// ([`Muxer::host_events`]).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of open connections (guest-visible ones, any state).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Drops every connection and pending client (the driver went away:
    /// nothing of the old guest state is valid).
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove(k);
        }
        let tokens: Vec<u64> = self.pending.keys().copied().collect();
        for t in tokens {
            self.drop_pending(t);
        }
        self.rst_queue.clear();
        self.ready.clear();
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn reply_header(&self, key: Key, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Queues an `RST` for a packet that matches no connection.
    fn queue_rst(&mut self, hdr: &Header) {
        if hdr.op == op::RST || self.rst_queue.len() >= MAX_RST_QUEUE {
            return;
        }
        let mut h = self.reply_header((hdr.dst_port, hdr.src_port), op::RST);
        h.buf_alloc = BUF_ALLOC;
        self.rst_queue.push_back(h);
    }

    fn schedule(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.queued && c.has_packet() {
                c.queued = true;
                self.ready.push_back(key);
            }
        }
    }

    /// Closes the host side of `key` and forgets it (no packet to the guest).
    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            self.targets.remove(&c.token);
        }
    }

    /// Closes the host side of `key` and resets the guest side.
    fn reset_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            let _ = c.stream.shutdown(Shutdown::Both);
            c.to_host.clear();
            c.to_guest.clear();
            c.need_rst = true;
            c.need_request = false;
            c.need_response = false;
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            c.interest = 0;
            self.targets.remove(&c.token);
        }
        self.schedule(key);
    }

    /// Re-registers `key`'s epoll interest to match its state and queues it
    /// when a packet is due.
    fn refresh(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.need_rst || c.interest == DETACHED {
            return self.schedule(key);
        }
        let mut want = 0u32;
        match c.state {
            // Only to notice a client that gives up.
            State::Connecting => want |= EventSet::READ_HANG_UP.bits(),
            State::Connected => {
                if c.wants_read() {
                    want |= EventSet::IN.bits();
                }
                if !c.to_host.is_empty() {
                    want |= EventSet::OUT.bits();
                }
            }
        }
        if want != c.interest {
            let ev = EpollEvent::new(EventSet::from_bits_truncate(want), c.token);
            let res = self
                .epoll
                .ctl(ControlOperation::Modify, c.stream.as_raw_fd(), ev);
            match res {
                Ok(()) => c.interest = want,
                Err(e) => {
                    tracing::warn!(host_port = key.0, guest_port = key.1, "epoll: {e}");
                    return self.reset_conn(key);
                }
            }
        }
        self.schedule(key);
    }

    fn register(&mut self, stream: &UnixStream, token: u64, events: EventSet) -> bool {
        self.epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(events, token),
            )
            .is_ok()
    }

    // ------------------------------------------------------------ guest side

    /// Handles one packet the guest sent.
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "dropping a packet with foreign CIDs"
            );
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            tracing::debug!(type_ = hdr.type_, "resetting a non-stream packet");
            return self.queue_rst(hdr);
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            return self.guest_request(key, hdr);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return self.queue_rst(hdr);
        };
        if c.need_rst {
            // Already being reset; the guest learns it soon.
            return;
        }
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        match (hdr.op, c.state) {
            (op::RST, _) => self.remove(key),
            (op::RESPONSE, State::Connecting) if !c.need_request => {
                c.state = State::Connected;
                let ok = format!("OK {}\n", key.0);
                // The first bytes on a fresh stream: they fit its buffer.
                match c.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => self.refresh(key),
                    _ => self.reset_conn(key),
                }
            }
            (op::SHUTDOWN, State::Connected) => {
                let flags = hdr.flags & SHUTDOWN_BOTH;
                c.guest_shut |= flags;
                if flags & SHUTDOWN_RCV != 0 {
                    let _ = c.stream.shutdown(Shutdown::Read);
                    c.to_guest.clear();
                }
                self.after_write(key);
            }
            (op::RW, State::Connected) => {
                if c.guest_shut & SHUTDOWN_SEND != 0 {
                    tracing::debug!(host_port = key.0, "data after the guest's SHUTDOWN(SEND)");
                    return self.reset_conn(key);
                }
                if c.to_host.len() + payload.len() > BUF_ALLOC as usize {
                    tracing::debug!(
                        host_port = key.0,
                        held = c.to_host.len(),
                        len = payload.len(),
                        "the guest sent past its credit"
                    );
                    return self.reset_conn(key);
                }
                let detached = c.interest == DETACHED;
                c.to_host.extend(payload);
                self.flush(key);
                if detached {
                    self.fill(key);
                }
            }
            (op::CREDIT_UPDATE, State::Connected) => self.fill(key),
            (op::CREDIT_REQUEST, State::Connected) => {
                c.need_credit_update = true;
                self.refresh(key);
            }
            (o, s) => {
                tracing::debug!(op = o, state = ?s, host_port = key.0, "unexpected op");
                self.reset_conn(key);
            }
        }
    }

    fn guest_request(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) {
            // The guest forgot the old connection; so do we.
            self.remove(key);
            return self.queue_rst(hdr);
        }
        if self.conns.len() + self.pending.len() >= MAX_CONNS {
            return self.queue_rst(hdr);
        }
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(path, "guest connect: {e}");
                return self.queue_rst(hdr);
            }
        };
        if stream.set_nonblocking(true).is_err() {
            return self.queue_rst(hdr);
        }
        let token = self.token();
        if !self.register(&stream, token, EventSet::empty()) {
            return self.queue_rst(hdr);
        }
        let mut c = Conn::new(stream, token, State::Connected);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        c.need_response = true;
        self.targets.insert(token, Target::Conn(key));
        self.conns.insert(key, c);
        self.refresh(key);
    }

    /// Writes guest data to the host stream, as much as it takes.
    fn flush(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while !c.to_host.is_empty() {
            let (a, _) = c.to_host.as_slices();
            match c.stream.write(a) {
                Ok(0) => return self.reset_conn(key),
                Ok(n) => {
                    c.to_host.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(host_port = key.0, "host stream write: {e}");
                    return self.reset_conn(key);
                }
            }
        }
        if c.fwd_cnt.wrapping_sub(c.adv_fwd_cnt) >= CREDIT_UPDATE_THRESHOLD {
            c.need_credit_update = true;
        }
        self.after_write(key);
    }

    /// Passes the guest's shutdowns on once its data reached the host.
    fn after_write(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.to_host.is_empty() {
            if c.guest_shut == SHUTDOWN_BOTH {
                // The guest closed: finish with a RST (what it waits for).
                let _ = c.stream.shutdown(Shutdown::Write);
                return self.reset_conn(key);
            }
            if c.guest_shut & SHUTDOWN_SEND != 0 && !c.host_write_closed {
                let _ = c.stream.shutdown(Shutdown::Write);
                c.host_write_closed = true;
            }
        }
        self.refresh(key);
    }

    /// Reads host data for the guest, as much as its credit allows.
    fn fill(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while c.wants_read() {
            let room =
                (STAGE_CAP - c.to_guest.len()).min(c.peer_credit() as usize - c.to_guest.len());
            let r = c.stream.read(c.to_guest.spare(room));
            let n = match &r {
                Ok(n) => *n,
                Err(_) => 0,
            };
            c.to_guest.commit(room, n);
            match r {
                Ok(0) => c.host_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(host_port = key.0, "host stream read: {e}");
                    return self.reset_conn(key);
                }
            }
        }
        self.refresh(key);
    }

    /// Whether [`Muxer::next_packet`] has something to send.
    pub fn has_packet(&self) -> bool {
        !self.rst_queue.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for the guest, with at most `max_payload` payload
    /// bytes; `None` when nothing is due.
    pub fn next_packet(&mut self, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some((h, Vec::new()));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            if let Some(p) = self.packet_of(key, max_payload) {
                return Some(p);
            }
        }
        None
    }

    fn packet_of(&mut self, key: Key, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        let mut h = self.reply_header(key, 0);
        let c = self.conns.get_mut(&key)?;
        let mut payload = Vec::new();
        if c.need_rst {
            h.op = op::RST;
        } else if c.need_request {
            c.need_request = false;
            h.op = op::REQUEST;
        } else if c.need_response {
            c.need_response = false;
            h.op = op::RESPONSE;
        } else if c.state != State::Connected {
            return None;
        } else if !c.to_guest.is_empty() && c.peer_credit() > 0 {
            let n = c
                .to_guest
                .len()
                .min(c.peer_credit() as usize)
                .min(max_payload);
            if n == 0 {
                return None;
            }
            payload = c.to_guest.take(n);
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            h.op = op::RW;
        } else if c.eof_due() {
            c.shut_sent |= SHUTDOWN_SEND;
            h.op = op::SHUTDOWN;
            h.flags = SHUTDOWN_SEND;
        } else if c.need_credit_update {
            h.op = op::CREDIT_UPDATE;
        } else {
            return None;
        }
        h.buf_alloc = BUF_ALLOC;
        h.fwd_cnt = c.fwd_cnt;
        c.adv_fwd_cnt = c.fwd_cnt;
        c.need_credit_update = false;
        if h.op == op::RST {
            self.remove(key);
        } else if h.op == op::RW {
            // Room in the stage: read on.
            self.fill(key);
        } else {
            self.refresh(key);
        }
        Some((h, payload))
    }

    // ------------------------------------------------------------- host side

    /// Services the host sockets epoll reported ready; never blocks.
    pub fn host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let set = ev.event_set();
            match ev.data() {
                LISTENER_TOKEN => self.accept(),
                token => match self.targets.get(&token).copied() {
                    Some(Target::Pending) => self.read_connect(token),
                    Some(Target::Conn(key)) => self.conn_event(key, set),
                    None => {}
                },
            }
        }
    }

    fn conn_event(&mut self, key: Key, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == State::Connecting {
            if set.intersects(EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR) {
                // The client gave up before the guest answered.
                return self.reset_conn(key);
            }
            return;
        }
        let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::OUT) || (hup && !c.to_host.is_empty()) {
            self.flush(key);
        }
        if set.contains(EventSet::IN) || hup {
            self.fill(key);
        }
        if hup {
            // Reported whatever the interest: stop watching; from now on
            // the stream is only read when the guest makes room.
            if let Some(c) = self.conns.get_mut(&key) {
                if !c.need_rst && c.to_host.is_empty() && !c.wants_read() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        c.stream.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    c.interest = DETACHED;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::warn!("accept: {e}");
                    }
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= MAX_CONNS {
                tracing::warn!("too many connections; closing a new host client");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            if !self.register(&stream, token, EventSet::IN) {
                continue;
            }
            self.targets.insert(token, Target::Pending);
            self.pending.insert(
                token,
                Pending {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    fn drop_pending(&mut self, token: u64) {
        if let Some(p) = self.pending.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.targets.remove(&token);
    }

    fn read_connect(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let room = MAX_CONNECT_LINE - p.line.len();
        match p.stream.read(&mut buf[..room]) {
            Ok(0) => return self.drop_pending(token),
            Ok(n) => p.line.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(_) => return self.drop_pending(token),
        }
        let Some(nl) = p.line.iter().position(|&b| b == b'\n') else {
            if p.line.len() >= MAX_CONNECT_LINE {
                tracing::debug!("CONNECT line too long");
                self.drop_pending(token);
            }
            return;
        };
        let port = parse_connect(&p.line[..nl]);
        let rest = p.line[nl + 1..].to_vec();
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let Some(port) = port else {
            tracing::debug!(line = %String::from_utf8_lossy(&p.line[..nl]), "bad CONNECT line");
            return self.drop_pending(token);
        };
        let local = self.local_port(port);
        let key = (local, port);
        let mut c = Conn::new(p.stream, token, State::Connecting);
        c.need_request = true;
        // Anything the client sent after the line goes to the guest first.
        c.to_guest = Stage::from_vec(rest);
        // Registered with IN; refresh() sets the Connecting interest.
        c.interest = EventSet::IN.bits();
        self.targets.insert(token, Target::Conn(key));
        self.conns.insert(key, c);
        self.refresh(key);
    }

    /// A host port not in use with guest port `peer`.
    fn local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }
}

/// `CONNECT <port>` (without the newline) to the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
