//! `events`, as runc's: JSON lines on stdout, `{"type":"stats","id":ID,
//! "data":{...}}` every interval (runc's stats shape, from the agent's
//! cgroup v2 numbers) and `{"type":"oom","id":ID}` for each OOM kill in
//! the container, until the container stops; `--stats` prints one stats
//! event and exits.
//!
//! The OOM kills come from a `WaitOom` long-poll on a connection of their
//! own (the agent watches the container's `memory.events`), starting from
//! the count the first stats read: kills before `events` started are not
//! reported, as with runc.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_protocol::client::ClientError;
use husk_protocol::{CgroupStats, ContainerRef, Request, Response};
use serde::Serialize;

use super::lifecycle::live_status;
use super::{OpError, Runtime};
use crate::state::{ContainerState, StateError, Status};

/// What `events` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsOptions {
    /// How often stats are printed.
    pub interval: Duration,
    /// Print one stats event and return.
    pub stats_only: bool,
}

/// One line of output (runc's `Event`).
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// `stats` or `oom`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The container id.
    pub id: &'a str,
    /// The stats of a `stats` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Stats>,
}

/// runc's stats document (`types.Stats`), filled from what the guest's
/// cgroup v2 reports. Fields runc leaves out when zero are left out too;
/// what a VM's cgroup does not have (blkio, hugetlb, RDT, the network
/// interfaces) is there, empty, as runc prints it without them.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// CPU time.
    pub cpu: Cpu,
    /// Not reported (runc: cpuset files).
    pub cpuset: Empty,
    /// Memory.
    pub memory: Memory,
    /// Processes.
    pub pids: Pids,
    /// Not reported (the guest has no block device).
    pub blkio: Empty,
    /// Not reported.
    pub hugetlb: Empty,
    /// Not reported.
    pub intel_rdt: Empty,
    /// Not reported (runc: `null` without them).
    pub network_interfaces: Option<Vec<()>>,
}

/// An empty object.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Empty {}

/// runc's `Cpu`.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Cpu {
    /// Usage.
    pub usage: CpuUsage,
    /// Not reported.
    pub throttling: Empty,
}

/// runc's `CpuUsage`: nanoseconds (cgroup v2 counts microseconds).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct CpuUsage {
    /// `usage_usec`, in ns.
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    /// `system_usec`, in ns.
    pub kernel: u64,
    /// `user_usec`, in ns.
    pub user: u64,
}

/// runc's `Memory`.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Memory {
    /// Page cache (`memory.stat` `file`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    /// `memory.current` against `memory.max` (`u64::MAX` for `max`, as
    /// runc); `failcnt` is how often the limit was hit
    /// (`memory.events` `max`).
    pub usage: MemoryEntry,
    /// Not reported (the guest has no swap).
    pub swap: MemoryEntry,
    /// Not reported.
    pub kernel: MemoryEntry,
    /// Not reported.
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// The `memory.stat` values the agent reports.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// runc's `MemoryEntry`.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct MemoryEntry {
    /// The limit.
    pub limit: u64,
    /// The usage.
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// runc's `Pids`.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Pids {
    /// `pids.current`.
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    /// `pids.max` (left out for `max`).
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The agent's cgroup numbers in runc's shape.
pub fn to_stats(s: &CgroupStats) -> Stats {
    let us = |v: Option<u64>| v.unwrap_or(0).saturating_mul(1000);
    let event = |name: &str| {
        s.memory_events
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    };
    let raw: BTreeMap<String, u64> = s.memory_stat.iter().cloned().collect();
    Stats {
        cpu: Cpu {
            usage: CpuUsage {
                total: us(s.cpu_usage_usec),
                kernel: us(s.cpu_system_usec),
                user: us(s.cpu_user_usec),
            },
            throttling: Empty {},
        },
        memory: Memory {
            cache: raw.get("file").copied().unwrap_or(0),
            usage: MemoryEntry {
                limit: s.memory_limit.unwrap_or(u64::MAX),
                usage: s.memory_usage.unwrap_or(0),
                failcnt: event("max"),
            },
            raw,
            ..Memory::default()
        },
        pids: Pids {
            current: s.pids_current.unwrap_or(0),
            limit: s.pids_limit.unwrap_or(0),
        },
        ..Stats::default()
    }
}

/// What the OOM watch tells the printing loop.
#[derive(Debug)]
enum Watch {
    /// This many new OOM kills.
    Oom(u64),
    /// The container's init has exited.
    Stopped,
    /// The watch failed.
    Failed(ClientError),
}

/// What an answer to `WaitOom(after)` means for `events`: the new kills
/// (a kill that was the init's death comes with its exit), then the stop.
fn watch_answer(answer: Result<(u64, bool), ClientError>, after: u64) -> Vec<Watch> {
    match answer {
        Ok((count, exited)) => {
            let mut out = Vec::new();
            if count > after {
                out.push(Watch::Oom(count - after));
            }
            if exited {
                out.push(Watch::Stopped);
            } else if count <= after {
                out.push(Watch::Failed(ClientError::Unexpected(format!(
                    "an OOM count of {count} answered a wait for more than {after}"
                ))));
            }
            out
        }
        Err(e) => vec![Watch::Failed(e)],
    }
}

fn agent_err(id: &str) -> impl FnOnce(ClientError) -> OpError + '_ {
    move |source| OpError::Agent {
        id: id.to_owned(),
        source,
    }
}

fn stats_of(
    agent: &mut husk_protocol::client::AgentClient,
    id: &str,
) -> Result<CgroupStats, OpError> {
    let r = agent
        .call(Request::Stats(ContainerRef {
            container_id: id.to_owned(),
        }))
        .map_err(agent_err(id))?;
    match r {
        Response::Stats(s) => Ok(s),
        other => Err(OpError::Invalid(format!(
            "container {id}: unexpected agent answer {other:?}"
        ))),
    }
}

fn print(out: &mut dyn Write, ev: &Event<'_>) -> Result<(), OpError> {
    let line = serde_json::to_string(ev).expect("events serialize");
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| OpError::Io {
            what: "writing an event".into(),
            source: e,
        })
}

/// Whether container `id` is gone or stopped now (the end of its events,
/// not an error, when the agent can no longer be reached).
fn ended(rt: &Runtime, id: &str) -> bool {
    match rt.root.load(id) {
        Err(StateError::NotFound(_)) => true,
        Err(_) => false,
        Ok(st) => live_status(rt, &st) == Status::Stopped,
    }
}

/// `events`: prints container `id`'s events to `out` until it stops
/// (with `stats_only`, one stats event). A container that is stopped (or
/// not yet created) has no events: an error, as with runc.
pub fn events(
    rt: &Runtime,
    id: &str,
    opts: &EventsOptions,
    out: &mut dyn Write,
) -> Result<(), OpError> {
    let st: ContainerState = rt.root.load(id)?;
    let status = live_status(rt, &st);
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "container not running",
        });
    }
    let mut agent = rt.agent(&st)?;
    let first = stats_of(&mut agent, id)?;
    if opts.stats_only {
        return print(
            out,
            &Event {
                kind: "stats",
                id,
                data: Some(to_stats(&first)),
            },
        );
    }
    let (tx, rx) = mpsc::channel();
    let mut watcher = rt.agent(&st)?;
    let watched = id.to_owned();
    let mut after = first.oom_kills();
    std::thread::spawn(move || loop {
        let answer = watcher.wait_oom(&watched, after);
        let seen = answer
            .as_ref()
            .map_or(after, |(count, _)| after.max(*count));
        let msgs = watch_answer(answer, after);
        after = seen;
        for msg in msgs {
            let last = !matches!(msg, Watch::Oom(_));
            if tx.send(msg).is_err() || last {
                return;
            }
        }
    });
    let mut next = Instant::now() + opts.interval;
    loop {
        match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(Watch::Oom(n)) => print_ooms(out, id, n)?,
            Ok(Watch::Stopped) => return Ok(()),
            Ok(Watch::Failed(e)) => {
                if ended(rt, id) {
                    return Ok(());
                }
                return Err(agent_err(id)(e));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                next = Instant::now() + opts.interval;
                // A paused VM answers nothing: no stats until it resumes.
                let now = rt.root.load(id).ok().map(|st| live_status(rt, &st));
                match now {
                    // The stop is recorded the moment the init exits, before
                    // the watcher's last answer (the kills up to the exit)
                    // has come: wait for it.
                    None | Some(Status::Stopped) => return last_kills(&rx, id, out),
                    Some(Status::Paused) => continue,
                    Some(_) => {}
                }
                match stats_of(&mut agent, id) {
                    Ok(s) => print(
                        out,
                        &Event {
                            kind: "stats",
                            id,
                            data: Some(to_stats(&s)),
                        },
                    )?,
                    Err(_) if ended(rt, id) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// How long `events` waits, once the container stopped, for the
/// watcher's last answer.
const LAST_ANSWER: Duration = Duration::from_secs(10);

/// Prints the OOM kills the watcher still reports once the container
/// stopped, until its last answer (or [`LAST_ANSWER`]).
fn last_kills(rx: &mpsc::Receiver<Watch>, id: &str, out: &mut dyn Write) -> Result<(), OpError> {
    let end = Instant::now() + LAST_ANSWER;
    while let Ok(Watch::Oom(n)) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        print_ooms(out, id, n)?;
    }
    Ok(())
}

/// Prints `n` runc `oom` events for container `id`.
fn print_ooms(out: &mut dyn Write, id: &str, n: u64) -> Result<(), OpError> {
    for _ in 0..n {
        print(
            out,
            &Event {
                kind: "oom",
                id,
                data: None,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the container stopped, the kills the watcher still reports are
    /// printed before `events` returns; it returns at the watcher's end.
    #[test]
    fn kills_reported_after_the_stop_are_not_lost() {
        let (tx, rx) = mpsc::channel();
        tx.send(Watch::Oom(2)).unwrap();
        tx.send(Watch::Stopped).unwrap();
        let mut out = Vec::new();
        last_kills(&rx, "c", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            text.lines().all(|l| l.contains(r#""type":"oom""#)),
            "{text}"
        );
        // A watcher already gone: nothing more, at once.
        drop(tx);
        let mut out = Vec::new();
        last_kills(&rx, "c", &mut out).unwrap();
        assert!(out.is_empty());
    }

    fn shown(w: Vec<Watch>) -> Vec<String> {
        w.into_iter()
            .map(|w| match w {
                Watch::Oom(n) => format!("oom {n}"),
                Watch::Stopped => "stopped".into(),
                Watch::Failed(e) => format!("failed: {e}"),
            })
            .collect()
    }

    /// A kill that was the init's death may come with its exit (the agent
    /// reaped it before the kernel's notification of `memory.events`
    /// reached its loop): it is reported, then the stop.
    #[test]
    fn an_oom_that_comes_with_the_exit_is_reported() {
        assert_eq!(shown(watch_answer(Ok((3, false)), 1)), ["oom 2"]);
        assert_eq!(shown(watch_answer(Ok((2, true)), 1)), ["oom 1", "stopped"]);
        assert_eq!(shown(watch_answer(Ok((1, true)), 1)), ["stopped"]);
        assert_eq!(
            shown(watch_answer(Ok((1, false)), 1)),
            ["failed: unexpected response from agent: an OOM count of 1 answered a wait for more than 1"]
        );
        let e = ClientError::Unexpected("x".into());
        assert_eq!(
            shown(watch_answer(Err(e), 0)),
            ["failed: unexpected response from agent: x"]
        );
    }

    #[test]
    fn stats_have_runcs_shape() {
        let s = CgroupStats {
            memory_usage: Some(5 << 20),
            memory_limit: Some(32 << 20),
            memory_stat: vec![("anon".into(), 4 << 20), ("file".into(), 1 << 20)],
            cpu_usage_usec: Some(1500),
            cpu_user_usec: Some(1000),
            cpu_system_usec: Some(500),
            pids_current: Some(3),
            pids_limit: None,
            memory_events: vec![("max".into(), 7), ("oom_kill".into(), 1)],
        };
        let v = serde_json::to_value(Event {
            kind: "stats",
            id: "c1",
            data: Some(to_stats(&s)),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "stats",
                "id": "c1",
                "data": {
                    "cpu": {"usage": {"total": 1_500_000, "kernel": 500_000, "user": 1_000_000}, "throttling": {}},
                    "cpuset": {},
                    "memory": {
                        "cache": 1 << 20,
                        "usage": {"limit": 32 << 20, "usage": 5 << 20, "failcnt": 7},
                        "swap": {"limit": 0, "failcnt": 0},
                        "kernel": {"limit": 0, "failcnt": 0},
                        "kernelTCP": {"limit": 0, "failcnt": 0},
                        "raw": {"anon": 4 << 20, "file": 1 << 20}
                    },
                    "pids": {"current": 3},
                    "blkio": {},
                    "hugetlb": {},
                    "intel_rdt": {},
                    "network_interfaces": null
                }
            })
        );
        // No limit is the largest value, as runc reports `max`.
        let v = serde_json::to_value(to_stats(&CgroupStats::default())).unwrap();
        assert_eq!(v["memory"]["usage"]["limit"], u64::MAX);
        assert_eq!(v["pids"], serde_json::json!({}));
        let oom = serde_json::to_string(&Event {
            kind: "oom",
            id: "c1",
            data: None,
        })
        .unwrap();
        assert_eq!(oom, r#"{"type":"oom","id":"c1"}"#);
    }
}
