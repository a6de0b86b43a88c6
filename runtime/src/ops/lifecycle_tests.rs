//! `state`, `list`, `kill` and `ps` against fake agents behind a fake
//! hybrid vsock socket: silent ones must not stall the CLI, hostile ones
//! must not reach the terminal or containerd.

use super::*;
use crate::ops::{AgentDeadlines, STATUS_DEADLINE};
use husk_protocol::client::ClientError;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{Hello, RequestFrame, ResponseFrame};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};

/// How a fake agent behaves.
#[derive(Clone, Copy)]
enum Agent {
    /// Accepts `CONNECT` and never answers it (a wedged vsock daemon).
    MuteDaemon,
    /// Completes the handshake, then never answers a request.
    Silent,
    /// Answers `State` with running and `ListProcesses` with these
    /// processes.
    Lists(&'static [(i32, Option<&'static str>)]),
    /// Answers `State` with stopped (the container exited).
    Stopped,
    /// Answers `State` with created and `StartContainer` with success.
    Created,
    /// Answers `State` with running, but a signal to the init with
    /// NotFound: the init exited in between (a signal to all is answered).
    ExitsWhenSignalled,
}

fn serve(mut s: UnixStream, agent: Agent) {
    let mut line = String::new();
    if BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    if matches!(agent, Agent::MuteDaemon) {
        thread::sleep(Duration::from_secs(3600));
    }
    let _ = s.write_all(b"OK 7\n");
    let Ok(_hello) = read_frame::<_, Hello>(&mut s) else {
        return;
    };
    let _ = write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty)));
    while let Ok(f) = read_frame::<_, RequestFrame>(&mut s) {
        if let (Agent::ExitsWhenSignalled, Request::SignalProcess(sig)) = (agent, &f.request) {
            let r = if sig.all {
                Ok(Response::Empty)
            } else {
                Err(husk_protocol::ProtocolError::new(
                    husk_protocol::ErrorCode::NotFound,
                    "the init of container \"c1\" has exited",
                ))
            };
            let _ = write_frame(&mut s, &ResponseFrame::new(f.id, r));
            continue;
        }
        let r = match (agent, f.request) {
            (Agent::ExitsWhenSignalled, Request::State(c)) => {
                Response::State(husk_protocol::ContainerState {
                    container_id: c.container_id,
                    status: ContainerStatus::Running,
                    pid: 1,
                    exit_status: None,
                })
            }
            (Agent::Lists(_), Request::State(c)) => {
                Response::State(husk_protocol::ContainerState {
                    container_id: c.container_id,
                    status: ContainerStatus::Running,
                    pid: 1,
                    exit_status: None,
                })
            }
            (Agent::Lists(ps), Request::ListProcesses(_)) => Response::Processes {
                processes: ps
                    .iter()
                    .map(|(pid, exec)| ProcessInfo {
                        pid: *pid,
                        exec_id: exec.map(str::to_owned),
                    })
                    .collect(),
            },
            (Agent::Lists(_), _) => Response::Empty,
            (Agent::Created, Request::State(c)) => Response::State(husk_protocol::ContainerState {
                container_id: c.container_id,
                status: ContainerStatus::Created,
                pid: 1,
                exit_status: None,
            }),
            (Agent::Created, Request::StartContainer(_)) => Response::Empty,
            (Agent::Stopped, Request::State(c)) => Response::State(husk_protocol::ContainerState {
                container_id: c.container_id,
                status: ContainerStatus::Stopped,
                pid: 1,
                exit_status: Some(0),
            }),
            _ => {
                thread::sleep(Duration::from_secs(3600));
                return;
            }
        };
        let _ = write_frame(&mut s, &ResponseFrame::new(f.id, Ok(r)));
    }
}

/// A state root with container `id` recorded as running, its "monitor"
/// this (live) test process and its vsock socket served by `agent`.
fn running(rt_root: &std::path::Path, id: &str, agent: Option<Agent>) -> Runtime {
    let mut rt = Runtime::new(rt_root.to_owned());
    rt.deadlines = AgentDeadlines::default();
    let dir = rt.root.claim(id).unwrap();
    let st = ContainerState {
        status: Status::Running,
        ..ContainerState::sample(id, dir.join("vsock.sock"))
    };
    if let Some(agent) = agent {
        let listener = UnixListener::bind(&st.vsock_uds).unwrap();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                thread::spawn(move || serve(s, agent));
            }
        });
    }
    rt.root.save(&st).unwrap();
    rt
}

/// Runs `f` on a thread; fails the test if it takes longer than `limit`
/// (a hang would otherwise hang the test too).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    let r = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}"));
    assert!(started.elapsed() < limit, "took {:?}", started.elapsed());
    r
}

#[test]
fn state_answers_from_the_record_when_the_agent_is_silent_or_wedged() {
    // Connect, handshake and answer together stay within the deadline,
    // plus scheduling slack: never a handshake or call timeout more.
    let limit = STATUS_DEADLINE + Duration::from_millis(800);
    for (name, agent) in [
        ("silent", Some(Agent::Silent)),
        ("mute-daemon", Some(Agent::MuteDaemon)),
        ("no-socket", None),
    ] {
        let t = tempfile::tempdir().unwrap();
        let rt = running(t.path(), name, agent);
        let st = within(limit, move || state(&rt, name).unwrap());
        assert_eq!(st.status, Status::Running, "{name}");
        assert_eq!(st.pid, std::process::id() as i32, "{name}");
    }
}

#[test]
fn list_asks_silent_agents_in_parallel() {
    let t = tempfile::tempdir().unwrap();
    let mut rt = None;
    for id in ["a", "b", "c", "d"] {
        rt = Some(running(t.path(), id, Some(Agent::Silent)));
    }
    let rt = rt.unwrap();
    let all = within(STATUS_DEADLINE * 2, move || list(&rt).unwrap());
    let ids: Vec<_> = all.iter().map(|s| (s.id.as_str(), s.status)).collect();
    assert_eq!(
        ids,
        [
            ("a", Status::Running),
            ("b", Status::Running),
            ("c", Status::Running),
            ("d", Status::Running)
        ]
    );
}

#[test]
fn kill_and_ps_of_a_silent_agent_fail_within_their_deadline() {
    let t = tempfile::tempdir().unwrap();
    let mut rt = running(t.path(), "quiet", Some(Agent::Silent));
    rt.deadlines = AgentDeadlines {
        status: Duration::from_millis(300),
        connect: Duration::from_secs(2),
        call: Duration::from_millis(500),
    };
    let rt2 = rt.clone();
    let e = within(Duration::from_secs(3), move || {
        kill(&rt2, "quiet", 15, false).unwrap_err()
    });
    assert!(
        matches!(
            &e,
            OpError::Agent {
                source: ClientError::TimedOut {
                    what: "SignalProcess",
                    ..
                },
                ..
            }
        ),
        "{e:?}"
    );
    let shown = husk_protocol::error_chain(&e);
    assert!(shown.starts_with("container quiet: "), "{shown}");
    assert!(
        shown.contains("did not answer SignalProcess within 500ms"),
        "{shown}"
    );
    let e = within(Duration::from_secs(3), move || {
        ps(&rt, "quiet").unwrap_err()
    });
    assert!(
        husk_protocol::error_chain(&e).contains("did not answer ListProcesses"),
        "{e:?}"
    );
}

#[test]
fn ps_refuses_impossible_pids() {
    for (name, procs) in [
        ("zero", &[(1, None), (0, None)][..]),
        ("negative", &[(-5, None)][..]),
        ("beyond-pid-max", &[(4_194_305, None)][..]),
    ] {
        let t = tempfile::tempdir().unwrap();
        let rt = running(t.path(), name, Some(Agent::Lists(procs)));
        let e = ps(&rt, name).expect_err(name);
        assert!(
            matches!(
                &e,
                OpError::Agent {
                    source: ClientError::BadPid(_),
                    ..
                }
            ),
            "{name}: {e:?}"
        );
    }
    let t = tempfile::tempdir().unwrap();
    let good = &[(1, None), (4_194_304, Some("e1"))][..];
    let rt = running(t.path(), "good", Some(Agent::Lists(good)));
    let pids: Vec<i32> = ps(&rt, "good").unwrap().iter().map(|p| p.pid).collect();
    assert_eq!(pids, [1, 4_194_304]);
}

#[test]
fn ps_prints_guest_strings_escaped() {
    let t = tempfile::tempdir().unwrap();
    let hostile = &[(7, Some("x\x1b]0;owned\x07\x1b[2J\u{9b}1m\x7f"))][..];
    let rt = running(t.path(), "hostile", Some(Agent::Lists(hostile)));
    let table = ps_table(&ps(&rt, "hostile").unwrap());
    assert_eq!(
        table,
        "PID\tEXEC\n7\tx\\x1b]0;owned\\x07\\x1b[2J\\x9b1m\\x7f\n"
    );
}

/// `state` and `list` record a stop the agent reports only under the
/// container's lock, and never while another command holds it (that
/// command is changing or removing state.json: a stale copy written back,
/// or a file recreated in a directory being removed, would undo it).
#[test]
fn state_and_list_record_a_stop_only_under_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let rt = running(tmp.path(), "c1", Some(Agent::Stopped));
    let recorded = || rt.root.load("c1").unwrap().status;
    let held = rt.root.lock("c1").unwrap();
    assert!(
        rt.root.try_lock("c1").unwrap().is_none(),
        "the lock excludes"
    );
    assert_eq!(state(&rt, "c1").unwrap().status, Status::Stopped);
    assert_eq!(list(&rt).unwrap()[0].status, Status::Stopped);
    assert_eq!(
        recorded(),
        Status::Running,
        "state.json was written while another command held the lock"
    );
    drop(held);
    assert_eq!(state(&rt, "c1").unwrap().status, Status::Stopped);
    assert_eq!(recorded(), Status::Stopped);
    // A removed container is not brought back by a late recording.
    rt.root.remove("c1").unwrap();
    record_stop(&rt, "c1");
    assert!(!tmp.path().join("c1").exists());
}

/// The monitor writes `stopped` to `vm-state` the moment the container's
/// init exits, seconds before the VM is down: `state` and `list` say
/// `stopped` from then on, even while the dying agent no longer answers
/// (before, they waited out the deadline and said `running`), and record
/// it, so `delete` without `--force` is allowed.
#[test]
fn a_stop_the_monitor_recorded_is_stopped_at_once_while_the_agent_is_wedged() {
    let t = tempfile::tempdir().unwrap();
    let rt = running(t.path(), "c1", Some(Agent::MuteDaemon));
    let dir = rt.root.dir("c1").unwrap();
    let mut f = husk_vmm_contract::journal::VmStateFile::create(&dir).unwrap();
    let rt2 = rt.clone();
    assert_eq!(
        within(STATUS_DEADLINE * 2, move || state(&rt2, "c1").unwrap()).status,
        Status::Running,
        "running while vm-state says running"
    );
    f.set(VmState::Stopped).unwrap();
    // A late pause request cannot undo it.
    f.set(VmState::Paused).unwrap();
    assert_eq!(
        husk_vmm_contract::journal::vm_state(&dir),
        Some(VmState::Stopped)
    );
    let rt2 = rt.clone();
    let st = within(STATUS_DEADLINE * 2, move || state(&rt2, "c1").unwrap());
    assert_eq!(st.status, Status::Stopped);
    assert_eq!(rt.root.load("c1").unwrap().status, Status::Stopped);
    let rt2 = rt.clone();
    let all = within(STATUS_DEADLINE * 2, move || list(&rt2).unwrap());
    assert_eq!(all[0].status, Status::Stopped);
}

/// Hooks that write their stage into `log` (the first of each list after
/// a failing one).
fn failing_then_logging(log: &std::path::Path) -> oci_spec::runtime::Hooks {
    let then = |stage: &str| {
        serde_json::json!([
            {"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 1"]},
            {"path": "/bin/sh", "args": ["sh", "-c", format!("cat >> {0}; echo \" {stage}\" >> {0}", log.display())]}
        ])
    };
    serde_json::from_value(serde_json::json!({
        "poststart": then("poststart"),
        "poststop": then("poststop"),
    }))
    .unwrap()
}

/// runtime spec: a failing poststart hook is logged and the start stands
/// (it used to fail `start`, leaving a running container behind the
/// error), and the hooks after it still run.
#[test]
fn a_failing_poststart_hook_warns_and_start_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("hooks.log");
    let rt = running(t.path(), "c", Some(Agent::Created));
    let mut st = rt.root.load("c").unwrap();
    st.status = Status::Created;
    st.hooks = Some(failing_then_logging(&log));
    rt.root.save(&st).unwrap();
    start(&rt, "c").expect("a failing poststart hook does not fail start");
    assert_eq!(rt.root.load("c").unwrap().status, Status::Running);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.ends_with(" poststart\n"), "{logged}");
    assert!(logged.contains("\"status\":\"running\""), "{logged}");
}

/// runtime spec: a failing poststop hook is logged and the hooks after it
/// still run (the first failure used to end the list).
#[test]
fn a_failing_poststop_hook_does_not_stop_the_others() {
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("hooks.log");
    let rt = running(t.path(), "c", None);
    let mut st = rt.root.load("c").unwrap();
    // A monitor that is gone: nothing to stop.
    st.pid_start_time += 1;
    st.status = Status::Stopped;
    st.hooks = Some(failing_then_logging(&log));
    rt.root.save(&st).unwrap();
    delete(&rt, "c", false).unwrap();
    assert!(!t.path().join("c").exists());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.ends_with(" poststop\n"), "{logged}");
    assert!(logged.contains("\"status\":\"stopped\""), "{logged}");
}

/// `kill` as runc 1.1: a stopped container is "container not running"
/// (exit 1), but `kill --all` of it succeeds and signals nothing; an init
/// that exits between the state check and the signal (the agent answers
/// NotFound) is the same stopped container, not an agent error.
#[test]
fn kill_of_a_stopped_container_is_not_running_unless_all() {
    let t = tempfile::tempdir().unwrap();
    let rt = running(t.path(), "c1", Some(Agent::Stopped));
    let e = kill(&rt, "c1", 15, false).unwrap_err();
    assert!(
        matches!(
            &e,
            OpError::BadState {
                status: Status::Stopped,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "container c1 is stopped: container not running"
    );
    kill(&rt, "c1", 9, true).expect("kill --all of a stopped container");

    let t = tempfile::tempdir().unwrap();
    let rt = running(t.path(), "c1", Some(Agent::ExitsWhenSignalled));
    let e = kill(&rt, "c1", 15, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "container c1 is stopped: container not running"
    );
    kill(&rt, "c1", 9, true).expect("kill --all while the init exits");
}
