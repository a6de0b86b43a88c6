//! `WaitOom`: a wait parked until the container's cgroup has counted more
//! OOM kills than the host has seen, or until the container's init exits.
//!
//! The first wait on a container opens its cgroup's `memory.events`
//! ([`EventsFile`]); while a wait is parked on it, the file is in the poll
//! loop for `POLLPRI`, which the kernel raises when a count in it changes
//! (an `oom_kill`, but also `max` and `high` events). Each notification
//! reads it again, which arms it for the next; waits whose `after` is
//! below the new `oom_kill` count are answered. The kernel counts the kill
//! before it sends the victim its SIGKILL, so when a killed init is
//! reaped the count already holds its kill: the waits answered at its
//! exit (`exited: true`) carry it.

use husk_protocol::{ProtocolError, Response, WaitOom};

use super::{queue, Server};
use crate::container::cgroups::{self, EventsFile};

/// A `WaitOom` parked on a connection.
#[derive(Debug)]
pub(super) struct OomWaiting {
    /// The request to answer.
    pub req_id: u64,
    /// The container.
    pub container_id: String,
    /// The count the host has seen.
    pub after: u64,
}

/// The open `memory.events` of a container's cgroup.
#[derive(Debug)]
pub(super) struct OomWatch {
    /// The container.
    pub container_id: String,
    /// Its cgroup's `memory.events`.
    pub file: EventsFile,
}

impl Server {
    /// Answers a `WaitOom` at once (a count above `after`, or an init
    /// that has exited), else parks it on `conn`.
    pub(super) fn wait_oom(
        &mut self,
        conn: u64,
        req_id: u64,
        r: WaitOom,
    ) -> Option<Result<Response, ProtocolError>> {
        let (exited, cgroup) = match self.container(&r.container_id) {
            Err(e) => return Some(Err(e)),
            Ok(c) => (c.init.exit_status.is_some(), c.cgroup.clone()),
        };
        if exited {
            let count = cgroup.as_deref().map_or(0, cgroups::oom_kills);
            return Some(Ok(Response::OomKills {
                count,
                exited: true,
            }));
        }
        // The file is open (and armed) before the count is read from it:
        // a kill after the read is notified.
        let count = match cgroup {
            Some(dir) => self.oom_count_watched(&r.container_id, &dir),
            None => 0,
        };
        if count > r.after {
            return Some(Ok(Response::OomKills {
                count,
                exited: false,
            }));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.oom_waiting = Some(OomWaiting {
                req_id,
                container_id: r.container_id,
                after: r.after,
            });
        }
        None
    }

    /// The `oom_kill` count of container `id`'s cgroup `dir`, read through
    /// its watch (opened now if it has none). 0 without a `memory.events`
    /// (no memory controller): nothing is watched then.
    fn oom_count_watched(&mut self, id: &str, dir: &std::path::Path) -> u64 {
        if let Some(w) = self.oom_watches.values_mut().find(|w| w.container_id == id) {
            match w.file.read() {
                Ok(text) => return cgroups::parse_oom_kills(&text),
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "cannot read memory.events");
                    return 0;
                }
            }
        }
        let path = dir.join(cgroups::MEMORY_EVENTS);
        match EventsFile::open(&path) {
            Ok((file, text)) => {
                let key = self.next_id;
                self.next_id += 1;
                self.oom_watches.insert(
                    key,
                    OomWatch {
                        container_id: id.to_owned(),
                        file,
                    },
                );
                cgroups::parse_oom_kills(&text)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(container = %id, error = %e, "cannot watch memory.events");
                }
                0
            }
        }
    }

    /// Whether a wait is parked on container `id`'s OOM kills.
    pub(super) fn oom_waited(&self, id: &str) -> bool {
        self.conns
            .values()
            .any(|c| c.oom_waiting.as_ref().is_some_and(|w| w.container_id == id))
    }

    /// The kernel notified a change of watch `key`'s `memory.events`.
    pub(super) fn on_oom_events(&mut self, key: u64) {
        let Some(w) = self.oom_watches.get_mut(&key) else {
            return;
        };
        let id = w.container_id.clone();
        match w.file.read() {
            Ok(text) => {
                let count = cgroups::parse_oom_kills(&text);
                self.answer_oom_waits(&id, count, false);
            }
            Err(e) => {
                // Not polled again (it would wake the loop for ever): the
                // init's exit still answers the waits.
                tracing::warn!(container = %id, error = %e, "cannot read memory.events: no longer watched");
                self.oom_watches.remove(&key);
            }
        }
    }

    /// The init of container `id` has exited: every wait on its OOM kills
    /// is answered with the count now, `exited`.
    pub(super) fn oom_init_exited(&mut self, id: &str) {
        let count = self
            .containers
            .get(id)
            .and_then(|c| c.cgroup.as_deref())
            .map_or(0, cgroups::oom_kills);
        if count > 0 {
            tracing::info!(container = %id, oom_kills = count, "the container's cgroup had OOM kills");
        }
        self.answer_oom_waits(id, count, true);
    }

    /// Answers the waits on container `id` that `count` is news to (all of
    /// them when its init has `exited`).
    fn answer_oom_waits(&mut self, id: &str, count: u64, exited: bool) {
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.oom_waiting
                    .as_ref()
                    .is_some_and(|w| w.container_id == id && (exited || count > w.after))
            })
            .map(|(k, _)| *k)
            .collect();
        if !exited && !conns.is_empty() {
            tracing::info!(container = %id, oom_kills = count, "OOM kill in the container");
        }
        for k in conns {
            if let Some(c) = self.conns.get_mut(&k) {
                let w = c.oom_waiting.take().expect("filtered on oom_waiting");
                queue(c, w.req_id, Ok(Response::OomKills { count, exited }));
            }
            // Frames that arrived meanwhile.
            self.process_frames(k);
            self.flush(k);
        }
    }

    /// Container `id` is forgotten: its watch is closed, and a wait still
    /// parked on it (its init was never reaped) gets `NotFound`.
    pub(super) fn forget_oom(&mut self, id: &str) {
        self.oom_watches.retain(|_, w| w.container_id != id);
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.oom_waiting.as_ref().is_some_and(|w| w.container_id == id))
            .map(|(k, _)| *k)
            .collect();
        for k in conns {
            if let Some(c) = self.conns.get_mut(&k) {
                let w = c.oom_waiting.take().expect("filtered on oom_waiting");
                let e = ProtocolError::new(
                    husk_protocol::ErrorCode::NotFound,
                    format!("container {id:?} was removed"),
                );
                queue(c, w.req_id, Err(e));
            }
            self.process_frames(k);
            self.flush(k);
        }
    }
}
