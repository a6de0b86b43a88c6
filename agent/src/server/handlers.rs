//! The requests of a control connection, and stream attachment.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use husk_protocol::{
    ContainerState, ErrorCode, ProcessInfo, ProtocolError, Request, Response, StreamKind,
    PROTOCOL_VERSION,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::pump::{Pump, PumpKey};
use super::{
    queue, Exit, PendingFreeze, PendingRemove, PendingStart, Server, FREEZE_TIMEOUT, REMOVE_TIMEOUT,
};
use crate::container::{self, cgroups, Container};

fn not_found(what: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::NotFound, what)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl Server {
    pub(super) fn container(&mut self, id: &str) -> Result<&mut Container, ProtocolError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| not_found(&format!("no container {id:?}")))
    }

    /// Answers one request; `None` when the answer is deferred (a wait).
    pub(super) fn dispatch(
        &mut self,
        conn: u64,
        req_id: u64,
        req: Request,
    ) -> Option<Result<Response, ProtocolError>> {
        Some(match req {
            Request::WaitProcess(r) => {
                let status = match self.container(&r.container_id) {
                    Err(e) => return Some(Err(e)),
                    Ok(c) => match c.process(r.exec_id.as_deref()) {
                        None => {
                            return Some(Err(no_process(&r.container_id, r.exec_id.as_deref())))
                        }
                        Some(p) => p.exit_status,
                    },
                };
                match status {
                    Some(s) => Ok(Response::Exited { exit_status: s }),
                    None => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.waiting = Some((req_id, r.container_id, r.exec_id));
                        }
                        return None;
                    }
                }
            }
            Request::WaitOom(r) => return self.wait_oom(conn, req_id, r),
            Request::StartContainer(r) => {
                // Answered from the poll loop once init has exec'd
                // (`on_start_sync`): a slow init holds up only this
                // connection, never the others or the stdio pumps.
                let begun = self
                    .container(&r.container_id)
                    .and_then(container::start_begin);
                match begun {
                    Err(e) => Err(e),
                    Ok(sync) => {
                        self.defer_start(conn, req_id, r.container_id, sync);
                        return None;
                    }
                }
            }
            Request::PauseContainer(r) => {
                return self.begin_freeze(conn, req_id, r.container_id, true)
            }
            Request::ResumeContainer(r) => {
                return self.begin_freeze(conn, req_id, r.container_id, false)
            }
            Request::RemoveContainer(r) => {
                // Its processes are killed now; the answer goes out from
                // the poll loop once they are reaped (`progress_removes`),
                // without holding up other connections.
                let id = r.container_id;
                match self.container(&id) {
                    Err(e) => Err(e),
                    Ok(c) => {
                        c.drop_sync();
                        c.thaw();
                        if !self.kill_remaining(&id) {
                            self.finish_remove(&id);
                            Ok(Response::Empty)
                        } else {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.parked = true;
                            }
                            self.removes.insert(
                                conn,
                                PendingRemove {
                                    req_id,
                                    container_id: id,
                                    deadline: Instant::now() + REMOVE_TIMEOUT,
                                },
                            );
                            return None;
                        }
                    }
                }
            }
            Request::Shutdown => {
                // The answer promises that what the containers wrote is on
                // the host: the monitor stops the VM as soon as it has it,
                // without waiting for the guest's reboot. write(2) on
                // virtio-fs without a writeback cache is on the host when
                // it returns; sync(2) writes back what a shared mapping
                // left dirty in the guest's page cache.
                // sync(2) also makes virtiofsd syncfs(2) the host's file
                // system (a disk flush runc never does): skip it when the
                // guest's page cache holds nothing dirty.
                let t = std::time::Instant::now();
                let dirty =
                    dirty_kib(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
                if dirty != Some(0) {
                    nix::unistd::sync();
                }
                tracing::debug!(
                    ?dirty,
                    ms = t.elapsed().as_secs_f64() * 1000.0,
                    "ready for shutdown"
                );
                self.exit = Some(Exit::Shutdown);
                Ok(Response::Empty)
            }
            other => self.handle(other),
        })
    }

    fn handle(&mut self, req: Request) -> Result<Response, ProtocolError> {
        match req {
            Request::Version => Ok(Response::Version {
                protocol: PROTOCOL_VERSION,
                agent: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            Request::CreateContainer(req) => {
                if self.containers.contains_key(&req.container_id) {
                    return Err(ProtocolError::new(
                        ErrorCode::AlreadyExists,
                        format!("container {:?} exists", req.container_id),
                    ));
                }
                if self.cfg.pid1 {
                    for tag in &req.shares {
                        crate::init::mount_share(tag)
                            .map_err(|e| io_err(&format!("mount virtio-fs share {tag:?}"), e))?;
                    }
                }
                let c = container::create(self.cfg.cgroup_root.as_ref(), &req)?;
                let pid = c.init.pid;
                tracing::info!(container = %req.container_id, pid, "created");
                self.pids.insert(pid, (req.container_id.clone(), None));
                self.containers.insert(req.container_id.clone(), c);
                Ok(Response::Process { pid })
            }
            Request::ConfigureNetwork(req) => {
                crate::network::configure(&req)?;
                Ok(Response::Empty)
            }
            Request::ExecProcess(r) => {
                let c = self.container(&r.container_id)?;
                if c.execs.contains_key(&r.exec_id) {
                    return Err(ProtocolError::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "exec {:?} exists in container {:?}",
                            r.exec_id, r.container_id
                        ),
                    ));
                }
                let p = container::exec(c, &r)?;
                let pid = p.pid;
                c.execs.insert(r.exec_id.clone(), p);
                self.pids
                    .insert(pid, (r.container_id.clone(), Some(r.exec_id.clone())));
                Ok(Response::Process { pid })
            }
            Request::SignalProcess(r) => {
                let sig = Signal::try_from(r.signal).map_err(|_| {
                    ProtocolError::new(
                        ErrorCode::InvalidArgument,
                        format!("bad signal {}", r.signal),
                    )
                })?;
                let c = self.container(&r.container_id)?;
                if r.all {
                    for pid in c.pids() {
                        let _ = kill(Pid::from_raw(pid), sig);
                    }
                    return Ok(Response::Empty);
                }
                let p = c
                    .process(r.exec_id.as_deref())
                    .ok_or_else(|| no_process(&r.container_id, r.exec_id.as_deref()))?;
                if p.exit_status.is_some() {
                    // NotFound, as runc answers for a gone process and as
                    // containerd expects (it ignores NotFound on kill; a
                    // FailedPrecondition failed StopPodSandbox).
                    let what = match r.exec_id.as_deref() {
                        Some(e) => format!("exec {e:?} of container {:?}", r.container_id),
                        None => format!("the init of container {:?}", r.container_id),
                    };
                    return Err(not_found(&format!("{what} has exited")));
                }
                kill(Pid::from_raw(p.pid), sig).map_err(|e| io_err("kill", e))?;
                Ok(Response::Empty)
            }
            Request::ResizeTty(r) => {
                let c = self.container(&r.container_id)?;
                let p = c
                    .process(r.exec_id.as_deref())
                    .ok_or_else(|| no_process(&r.container_id, r.exec_id.as_deref()))?;
                let master = p.stdio.pty.as_ref().ok_or_else(|| {
                    ProtocolError::new(ErrorCode::FailedPrecondition, "the process has no terminal")
                })?;
                crate::sys::set_winsize(master.as_fd(), r.rows, r.cols)
                    .map_err(|e| io_err("resize the pty", e))?;
                Ok(Response::Empty)
            }
            Request::State(r) => {
                let c = self.container(&r.container_id)?;
                Ok(Response::State(ContainerState {
                    container_id: c.id.clone(),
                    status: c.reported_status(),
                    pid: if c.init.exit_status.is_some() {
                        0
                    } else {
                        c.init.pid
                    },
                    exit_status: c.init.exit_status,
                }))
            }
            Request::ListProcesses(r) => {
                let c = self.container(&r.container_id)?;
                let processes = c
                    .pids()
                    .into_iter()
                    .map(|pid| ProcessInfo {
                        pid,
                        exec_id: c
                            .execs
                            .iter()
                            .find(|(_, p)| p.pid == pid)
                            .map(|(e, _)| e.clone()),
                    })
                    .collect();
                Ok(Response::Processes { processes })
            }
            Request::Stats(r) => {
                let c = self.container(&r.container_id)?;
                Ok(Response::Stats(
                    c.cgroup.as_deref().map(cgroups::stats).unwrap_or_default(),
                ))
            }
            Request::UpdateContainer(r) => {
                let c = self.container(&r.container_id)?;
                container::update(c, &r.resources)?;
                tracing::info!(container = %r.container_id, "resources updated");
                Ok(Response::Empty)
            }
            Request::WaitProcess(_)
            | Request::WaitOom(_)
            | Request::StartContainer(_)
            | Request::RemoveContainer(_)
            | Request::PauseContainer(_)
            | Request::ResumeContainer(_)
            | Request::Shutdown => {
                unreachable!("handled in dispatch")
            }
        }
    }

    /// Freezes (`frozen`: PauseContainer) or thaws container `id`'s
    /// cgroup; answers at once when `cgroup.events` already says so, else
    /// parks the connection until it does ([`Server::progress_freezes`]).
    fn begin_freeze(
        &mut self,
        conn: u64,
        req_id: u64,
        id: String,
        frozen: bool,
    ) -> Option<Result<Response, ProtocolError>> {
        let cgroup = match self
            .container(&id)
            .and_then(|c| container::set_paused(c, frozen))
        {
            Ok(dir) => dir,
            Err(e) => return Some(Err(e)),
        };
        if cgroups::is_frozen(&cgroup) == Some(frozen) {
            tracing::info!(container = %id, "{}", if frozen { "paused" } else { "resumed" });
            return Some(Ok(Response::Empty));
        }
        // Opened before the next read, so no notification is missed.
        let events = std::fs::File::open(cgroup.join("cgroup.events")).ok();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.parked = true;
        }
        self.freezes.insert(
            conn,
            PendingFreeze {
                req_id,
                container_id: id,
                cgroup,
                events,
                frozen,
                deadline: Instant::now() + FREEZE_TIMEOUT,
            },
        );
        None
    }

    /// Answers the pauses and resumes whose cgroup is frozen (thawed) now,
    /// or whose time is up: a pause is undone then (the container runs
    /// on, as it did before the request).
    pub(super) fn progress_freezes(&mut self) {
        let now = Instant::now();
        let conns: Vec<u64> = self.freezes.keys().copied().collect();
        for conn in conns {
            let Some(f) = self.freezes.get_mut(&conn) else {
                continue;
            };
            let Some(done) = f.outcome(now) else {
                continue;
            };
            let f = self.freezes.remove(&conn).expect("listed above");
            let what = if f.frozen { "paused" } else { "resumed" };
            let result = if done {
                tracing::info!(container = %f.container_id, "{what}");
                Ok(Response::Empty)
            } else {
                if f.frozen {
                    if let Some(c) = self.containers.get_mut(&f.container_id) {
                        c.thaw();
                    }
                }
                Err(ProtocolError::new(
                    ErrorCode::Internal,
                    format!(
                        "container {:?} was not {} within {FREEZE_TIMEOUT:?} (a process in an \
                         uninterruptible sleep holds a freeze up){}",
                        f.container_id,
                        if f.frozen { "frozen" } else { "thawed" },
                        if f.frozen { "; it runs on" } else { "" }
                    ),
                ))
            };
            self.answer_parked(conn, f.req_id, result);
        }
    }

    /// Answers the parked request `req_id` of connection `conn` and serves
    /// the frames that waited behind it.
    fn answer_parked(&mut self, conn: u64, req_id: u64, result: Result<Response, ProtocolError>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.parked = false;
            queue(c, req_id, result);
        }
        self.process_frames(conn);
        self.flush(conn);
    }

    /// Parks connection `conn` until the start its request `req_id` began
    /// is over.
    fn defer_start(&mut self, conn: u64, req_id: u64, container_id: String, sync: OwnedFd) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.parked = true;
        }
        self.starts.insert(
            conn,
            PendingStart {
                req_id,
                container_id,
                sync,
                deadline: Instant::now() + container::START_TIMEOUT,
            },
        );
    }

    /// The sync socket of a pending start is readable: init's error, or
    /// EOF once it exec'd.
    pub(super) fn on_start_sync(&mut self, conn: u64) {
        let Some(s) = self.starts.get(&conn) else {
            return;
        };
        // Readable now, so this does not wait.
        let reply = container::sync::recv_msg(&s.sync, Duration::from_millis(1));
        if matches!(reply, Err(container::sync::SyncError::Timeout)) {
            return;
        }
        self.finish_start(conn, reply);
    }

    /// Fails the starts whose init said nothing within the timeout.
    pub(super) fn expire_starts(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .starts
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for conn in late {
            self.finish_start(conn, Err(container::sync::SyncError::Timeout));
        }
    }

    fn finish_start(
        &mut self,
        conn: u64,
        reply: Result<Option<container::sync::ChildMsg>, container::sync::SyncError>,
    ) {
        let Some(s) = self.starts.remove(&conn) else {
            return;
        };
        let result = match self.containers.get_mut(&s.container_id) {
            Some(c) => container::start_finish(c, reply).map(|()| Response::Empty),
            None => Err(not_found(&format!(
                "container {:?} was removed",
                s.container_id
            ))),
        };
        match &result {
            Ok(_) => tracing::info!(container = %s.container_id, "started"),
            Err(e) => tracing::info!(container = %s.container_id, error = %e, "start failed"),
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.parked = false;
            queue(c, s.req_id, result);
        }
        // Frames that arrived meanwhile.
        self.process_frames(conn);
        self.flush(conn);
    }

    /// Kills what is left of a container and waits for it (the exit path:
    /// nothing else is served any more), then forgets it.
    pub(super) fn remove_container(&mut self, id: &str) {
        let Some(c) = self.containers.get_mut(id) else {
            return;
        };
        c.drop_sync();
        c.thaw();
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        while self.kill_remaining(id) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.finish_remove(id);
    }

    /// Reaps, then SIGKILLs every live process of container `id`; true
    /// when some were still alive.
    fn kill_remaining(&mut self, id: &str) -> bool {
        self.reap();
        let Some(c) = self.containers.get(id) else {
            return false;
        };
        let mut pids = c.pids();
        pids.extend(
            std::iter::once(&c.init)
                .chain(c.execs.values())
                .filter(|p| p.exit_status.is_none())
                .map(|p| p.pid),
        );
        let live: Vec<i32> = pids.into_iter().filter(|p| is_alive(*p)).collect();
        for p in &live {
            let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
        }
        !live.is_empty()
    }

    /// Answers the removals whose processes are gone (checked whenever
    /// the loop wakes: a SIGCHLD, say) or whose time is up.
    pub(super) fn progress_removes(&mut self) {
        let now = Instant::now();
        let conns: Vec<u64> = self.removes.keys().copied().collect();
        for conn in conns {
            let (id, late) = match self.removes.get(&conn) {
                Some(r) => (r.container_id.clone(), r.deadline <= now),
                None => continue,
            };
            if self.kill_remaining(&id) && !late {
                continue;
            }
            if late {
                tracing::warn!(container = %id, "processes survived SIGKILL");
            }
            let r = self.removes.remove(&conn).expect("listed above");
            self.finish_remove(&id);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.parked = false;
                queue(c, r.req_id, Ok(Response::Empty));
            }
            self.process_frames(conn);
            self.flush(conn);
        }
    }

    /// Forgets container `id` once its processes are gone: removes its
    /// cgroup, fails a start or waits still pending on it. Its mounts live
    /// in its own mount namespace and went with its last process.
    fn finish_remove(&mut self, id: &str) {
        self.reap();
        let Some(c) = self.containers.remove(id) else {
            return;
        };
        self.pids.retain(|_, (cid, _)| cid != id);
        self.pumps
            .retain(|_, p| p.key.as_ref().is_none_or(|k| k.container_id != id));
        // A start still pending fails: its container is gone.
        let starting: Vec<u64> = self
            .starts
            .iter()
            .filter(|(_, s)| s.container_id == id)
            .map(|(k, _)| *k)
            .collect();
        for k in starting {
            self.finish_start(k, Ok(None));
        }
        // Its memory.events is closed before its cgroup goes.
        self.forget_oom(id);
        // So does a pause or resume.
        let freezing: Vec<u64> = self
            .freezes
            .iter()
            .filter(|(_, f)| f.container_id == id)
            .map(|(k, _)| *k)
            .collect();
        for k in freezing {
            let f = self.freezes.remove(&k).expect("listed above");
            let gone = Err(not_found(&format!("container {id:?} was removed")));
            self.answer_parked(k, f.req_id, gone);
        }
        if let (Some(dir), Some(root)) = (&c.cgroup, &self.cfg.cgroup_root) {
            if let Err(e) = root.remove(dir) {
                tracing::warn!(container = %id, error = %container::chain(&e), "cgroup not removed");
            }
        }
        // Waiters on processes that were never reaped (cannot happen after
        // the kill loop, but a hung waiter would be worse than an error).
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.waiting.as_ref().is_some_and(|(_, cid, _)| cid == id))
            .map(|(k, _)| *k)
            .collect();
        for k in ids {
            if let Some(conn) = self.conns.get_mut(&k) {
                let (req, _, _) = conn.waiting.take().expect("filtered");
                queue(
                    conn,
                    req,
                    Err(not_found(&format!("container {id:?} was removed"))),
                );
            }
            self.flush(k);
        }
        tracing::info!(container = %id, "removed");
    }

    /// Turns a stream connection into pumps, after acknowledging it.
    pub(super) fn attach_stream(&mut self, conn: u64, key: PumpKey) {
        let result = self.take_stream_fds(&key);
        let Some((sock, leftover)) = self.acknowledge_stream(conn, result.as_ref().err()) else {
            return;
        };
        let Ok(fd) = result else { return };
        let mk = |src: OwnedFd, dst: OwnedFd, buf: Vec<u8>, shutdown_dst: bool| Pump {
            src,
            dst,
            buf,
            pos: 0,
            src_eof: false,
            // The process's output pipe into the stream's socket.
            splice: matches!(key.stream, StreamKind::Stdout | StreamKind::Stderr),
            dst_full: false,
            shutdown_dst,
            key: Some(key.clone()),
            peer: None,
        };
        match key.stream {
            StreamKind::Stdin => self.add_pump(mk(sock, fd, leftover, false)),
            StreamKind::Pty => {
                let (Ok(m2), Ok(s2)) = (fd.try_clone(), sock.try_clone()) else {
                    return;
                };
                self.add_pump(mk(fd, sock, Vec::new(), true));
                self.add_pump(mk(s2, m2, leftover, false));
            }
            _ => self.add_pump(mk(fd, sock, Vec::new(), true)),
        }
    }

    /// A `Port` hello: connects to `port` on the guest's loopback (the
    /// agent runs in the guest's root network namespace, the pod's) and
    /// pumps both ways until either direction ends (see [`Pump::peer`]).
    pub(super) fn attach_port(&mut self, conn: u64, port: u16) {
        let tcp = std::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| {
                ProtocolError::new(
                    ErrorCode::FailedPrecondition,
                    format!("cannot connect to 127.0.0.1:{port} in the guest: {e}"),
                )
            });
        let Some((sock, leftover)) = self.acknowledge_stream(conn, tcp.as_ref().err()) else {
            return;
        };
        let Ok(tcp) = tcp else { return };
        tracing::debug!(port, "port forward connected");
        let tcp = OwnedFd::from(tcp);
        let (Ok(tcp2), Ok(sock2)) = (tcp.try_clone(), sock.try_clone()) else {
            return;
        };
        // The ids `add_pump` gives the two, so each can name the other.
        let (up, down) = (self.next_id, self.next_id + 1);
        let mk = |src, dst, buf, peer| Pump {
            src,
            dst,
            buf,
            pos: 0,
            src_eof: false,
            splice: false,
            dst_full: false,
            shutdown_dst: true,
            key: None,
            peer: Some(peer),
        };
        self.add_pump(mk(tcp, sock, Vec::new(), down));
        self.add_pump(mk(sock2, tcp2, leftover, up));
    }

    fn add_pump(&mut self, p: Pump) {
        let id = self.next_id;
        self.next_id += 1;
        self.pumps.insert(id, p);
    }

    /// Answers the hello of stream connection `conn`: with `refusal`, the
    /// error (and the connection closes after it); else the acknowledgement,
    /// written before any stream byte, and the connection leaves the control
    /// connections: its socket and the bytes that followed the hello are
    /// returned for the pumps.
    fn acknowledge_stream(
        &mut self,
        conn: u64,
        refusal: Option<&ProtocolError>,
    ) -> Option<(OwnedFd, Vec<u8>)> {
        let mut c = self.conns.remove(&conn)?;
        if let Some(e) = refusal {
            queue(&mut c, 0, Err(e.clone()));
            c.closing = true;
            self.conns.insert(conn, c);
            return None;
        }
        queue(&mut c, 0, Ok(husk_protocol::Response::Empty));
        // A few dozen bytes into an empty socket buffer.
        let _ = crate::sys::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&c.fd), false);
        let ok = nix::unistd::write(&c.fd, &c.outbuf)
            .map(|n| n == c.outbuf.len())
            .unwrap_or(false);
        let _ = crate::sys::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&c.fd), true);
        if !ok {
            return None;
        }
        Some((c.fd, std::mem::take(&mut c.inbuf)))
    }

    fn take_stream_fds(&mut self, key: &PumpKey) -> Result<OwnedFd, ProtocolError> {
        let c = self.container(&key.container_id)?;
        let p = c
            .process_mut(key.exec_id.as_deref())
            .ok_or_else(|| no_process(&key.container_id, key.exec_id.as_deref()))?;
        if p.attached.contains(&key.stream) {
            return Err(ProtocolError::new(
                ErrorCode::AlreadyExists,
                format!("stream {:?} is already attached", key.stream),
            ));
        }
        let fd = match key.stream {
            StreamKind::Stdin => p.stdio.stdin.take(),
            StreamKind::Stdout => p.stdio.stdout.take(),
            StreamKind::Stderr => p.stdio.stderr.take(),
            StreamKind::Pty => p.stdio.pty.as_ref().and_then(|m| m.try_clone().ok()),
        };
        let fd = fd.ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the process has no {:?} stream to attach (see StdioSpec and terminal)",
                    key.stream
                ),
            )
        })?;
        p.attached.insert(key.stream);
        Ok(fd)
    }
}

/// `Dirty` + `Writeback` of a /proc/meminfo text, in KiB: page cache not
/// yet written back (tmpfs and ramfs pages are not counted). `None` when
/// either line is missing.
fn dirty_kib(meminfo: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(field("Dirty")? + field("Writeback")?)
}

fn no_process(cid: &str, exec: Option<&str>) -> ProtocolError {
    match exec {
        Some(e) => not_found(&format!("no exec {e:?} in container {cid:?}")),
        None => not_found(&format!("no container {cid:?}")),
    }
}

fn is_alive(pid: i32) -> bool {
    // A zombie still answers kill(0); look at its state instead.
    crate::container::proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

#[cfg(test)]
mod dirty_tests {
    #[test]
    fn dirty_page_cache_is_dirty_plus_writeback() {
        let m = "MemTotal: 1 kB\nDirty:  12 kB\nWriteback:   3 kB\nWritebackTmp: 9 kB\n";
        assert_eq!(super::dirty_kib(m), Some(15));
        assert_eq!(super::dirty_kib("Dirty: 0 kB\nWriteback: 0 kB\n"), Some(0));
        assert_eq!(super::dirty_kib("Dirty: 0 kB\n"), None);
    }
}
