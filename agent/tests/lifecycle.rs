//! Create/start/exec/signal/wait/state/remove, exit codes and exec errors.

mod common;
use std::time::Duration;

use common::*;
use husk_protocol::{
    ContainerRef, ContainerStatus, ErrorCode, Request, Response, SignalProcess, StdioSpec,
    StreamKind,
};
use husk_test_support::{require, wait_until};

fn state(c: &mut husk_protocol::client::AgentClient, id: &str) -> husk_protocol::ContainerState {
    match c
        .call(Request::State(ContainerRef {
            container_id: id.into(),
        }))
        .unwrap()
    {
        Response::State(s) => s,
        other => panic!("{other:?}"),
    }
}

fn signal(
    c: &mut husk_protocol::client::AgentClient,
    id: &str,
    exec: Option<&str>,
    sig: i32,
    all: bool,
) {
    let r = SignalProcess {
        container_id: id.into(),
        exec_id: exec.map(Into::into),
        signal: sig,
        all,
    };
    c.call(Request::SignalProcess(r)).unwrap();
}

#[test]
fn exit_codes_are_real() {
    let agent = require!(Agent::start_if_can_run());
    for (name, script, want) in [
        ("z", "exit 0", 0),
        ("s", "exit 7", 7),
        ("k", "kill -9 $$", 137),
    ] {
        let (spec, dir) = agent.bundle(name, &[], &["sh", "-c", script]);
        // A pid namespace's init ignores SIGKILL from inside it: run the
        // self-killing one in the agent's pid namespace.
        let spec = patch(spec, |v| {
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "pid");
        });
        let (status, _, err) = agent.run(name, spec, None);
        assert_eq!(status, want, "{script}: {}", text(&err));
        assert_no_mounts(&dir);
    }
    agent.shutdown_clean();
}

#[test]
fn states_signals_and_wait() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, dir) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    let pid = create(&mut c, "c", spec, StdioSpec::default()).unwrap();
    let s = state(&mut c, "c");
    assert_eq!(
        (s.status, s.pid, s.exit_status),
        (ContainerStatus::Created, pid, None)
    );
    c.start("c").unwrap();
    assert_eq!(state(&mut c, "c").status, ContainerStatus::Running);
    // The agent forks, so it must never have started a thread.
    let st = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    assert!(st.lines().any(|l| l == "Threads:\t1"), "{st}");
    // A second start is refused.
    assert_eq!(
        c.start("c").unwrap_err().code(),
        Some(ErrorCode::FailedPrecondition)
    );
    // WaitProcess parks its own connection only.
    let mut waiter = agent.client();
    let t = std::thread::spawn(move || waiter.wait("c", None).unwrap());
    // Not synchronisation: a while in which the parked wait must not hold
    // up this connection.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(&mut c, "c").status, ContainerStatus::Running);
    signal(&mut c, "c", None, 9, false);
    assert_eq!(t.join().unwrap(), 137);
    let s = state(&mut c, "c");
    assert_eq!(
        (s.status, s.pid, s.exit_status),
        (ContainerStatus::Stopped, 0, Some(137))
    );
    assert_eq!(
        c.wait("c", None).unwrap(),
        137,
        "wait after exit answers at once"
    );
    remove(&mut c, "c");
    assert_no_mounts(&dir);
    agent.shutdown_clean();
}

#[test]
fn sigterm_is_delivered_to_a_trapping_init() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 3' TERM; echo ready; while true; do sleep 0.05; done",
        ],
    );
    let mut c = agent.client();
    create(
        &mut c,
        "c",
        spec,
        StdioSpec {
            stdout: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = agent.stream("c", None, StreamKind::Stdout);
    c.start("c").unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    signal(&mut c, "c", None, 15, false);
    assert_eq!(c.wait("c", None).unwrap(), 3);
    remove(&mut c, "c");
    agent.shutdown_clean();
}

#[test]
fn exec_joins_the_container_and_lists_processes() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, dir) = agent.bundle("b", &[], &["sleep", "1000"]);
    let spec = patch(spec, |v| v["hostname"] = serde_json::json!("inside"));
    let mut c = agent.client();
    let init = create_and_start(&mut c, "c", spec.clone());
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(["sh", "-c", "hostname; readlink /proc/self/ns/mnt; echo $$; cat /proc/self/status | grep NoNewPrivs; exit 5"].map(String::from).to_vec()));
    exec(&mut c, "c", "e1", p.clone(), OUT_AND_ERR).unwrap();
    assert_eq!(
        exec(&mut c, "c", "e1", p.clone(), OUT_AND_ERR)
            .unwrap_err()
            .code(),
        Some(ErrorCode::AlreadyExists)
    );
    let (o, e) = agent.output("c", Some("e1"));
    assert_eq!(c.wait("c", Some("e1")).unwrap(), 5, "{}", text(&e));
    let out = text(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "inside");
    let init_mnt = std::fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
    assert_eq!(lines[1], init_mnt.to_str().unwrap());
    assert_ne!(lines[2], "1", "exec is not the init");
    assert!(lines[3].ends_with('1'), "{out}");

    // A long-running exec shows up in ListProcesses with its id.
    p.set_args(Some(["sleep", "1000"].map(String::from).to_vec()));
    let epid = exec(&mut c, "c", "e2", p, StdioSpec::default()).unwrap();
    let procs = match c
        .call(Request::ListProcesses(ContainerRef {
            container_id: "c".into(),
        }))
        .unwrap()
    {
        Response::Processes { processes } => processes,
        other => panic!("{other:?}"),
    };
    assert!(
        procs.iter().any(|p| p.pid == init && p.exec_id.is_none()),
        "{procs:?}"
    );
    assert!(
        procs
            .iter()
            .any(|p| p.pid == epid && p.exec_id.as_deref() == Some("e2")),
        "{procs:?}"
    );
    // Signal with all reaches both.
    signal(&mut c, "c", None, 9, true);
    assert_eq!(c.wait("c", Some("e2")).unwrap(), 137);
    assert_eq!(c.wait("c", None).unwrap(), 137);
    remove(&mut c, "c");
    assert_no_mounts(&dir);
    agent.shutdown_clean();
}

#[test]
fn missing_executable_fails_start_with_errno() {
    let agent = require!(Agent::start_if_can_run());
    let mut c = agent.client();
    let (spec, dir) = agent.bundle("b", &[], &["/nope"]);
    create(&mut c, "c", spec, StdioSpec::default()).unwrap();
    let e = c.start("c").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ExecFailed), "{e}");
    assert!(
        e.to_string()
            .contains("exec \"/nope\": No such file or directory (os error 2)"),
        "{e}"
    );
    assert_eq!(c.wait("c", None).unwrap(), 127);
    remove(&mut c, "c");

    let (spec, _) = agent.bundle("b2", &[], &["nope-not-in-path"]);
    create(&mut c, "c2", spec.clone(), StdioSpec::default()).unwrap();
    let e = c.start("c2").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ExecFailed), "{e}");
    assert!(
        e.to_string().contains("executable file not found in $PATH"),
        "{e}"
    );
    remove(&mut c, "c2");

    // The same for an exec into a running container.
    let (spec, _) = agent.bundle("b3", &[], &["sleep", "1000"]);
    create_and_start(&mut c, "c3", spec.clone());
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["/bin/nope".into()]));
    let e = exec(&mut c, "c3", "x", p, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ExecFailed), "{e}");
    assert!(e.to_string().contains("No such file or directory"), "{e}");
    remove(&mut c, "c3");
    assert_no_mounts(&dir);
    agent.shutdown_clean();
}

#[test]
fn remove_kills_created_and_running_containers() {
    let agent = require!(Agent::start_if_can_run());
    let mut c = agent.client();
    let (spec, dir) = agent.bundle("b", &[], &["sh", "-c", "sleep 1000 & sleep 1000"]);
    create(&mut c, "created", spec.clone(), StdioSpec::default()).unwrap();
    create(&mut c, "running", spec, StdioSpec::default()).unwrap();
    c.start("running").unwrap();
    remove(&mut c, "created");
    remove(&mut c, "running");
    let e = c
        .call(Request::State(ContainerRef {
            container_id: "running".into(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    assert_no_mounts(&dir);
    agent.shutdown_clean();
}

#[test]
fn exec_applies_its_own_process_spec() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    create_and_start(&mut c, "c", spec.clone());
    let p = patch(spec, |v| {
        let p = &mut v["process"];
        p["args"] = serde_json::json!([
            "sh",
            "-c",
            "id -u; echo $FOO; pwd; grep CapEff /proc/self/status; ulimit -n"
        ]);
        p["user"] = serde_json::json!({"uid": 1234, "gid": 1234});
        p["env"] = serde_json::json!(["FOO=exec", "PATH=/bin"]);
        p["cwd"] = serde_json::json!("/tmp");
        p["capabilities"] = serde_json::json!({});
        p["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 77, "hard": 77}]);
    })
    .process()
    .clone()
    .unwrap();
    let (status, o, e) = agent.exec_run(&mut c, "c", "e", p);
    assert_eq!(status, 0, "{}", text(&e));
    assert_eq!(
        text(&o),
        "1234\nexec\n/tmp\nCapEff:\t0000000000000000\n77\n"
    );
    remove(&mut c, "c");
    agent.shutdown_clean();
}

/// A later `NAME=` overrides an earlier one, as runc's prepareEnv has it
/// (`exec --env K=V` after the spec's `K`): the program sees one `K`, the
/// last; execve used to get both, and getenv(3) finds the first.
#[test]
fn a_later_env_entry_overrides_an_earlier_one() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    create_and_start(&mut c, "c", spec.clone());
    let p = patch(spec, |v| {
        let p = &mut v["process"];
        p["args"] = serde_json::json!(["env"]);
        p["env"] = serde_json::json!(["K=spec", "PATH=/usr/bin:/bin", "HOME=/", "K=flag"]);
    })
    .process()
    .clone()
    .unwrap();
    let (status, o, e) = agent.exec_run(&mut c, "c", "e", p.clone());
    assert_eq!(status, 0, "{}", text(&e));
    let mut lines: Vec<String> = text(&o).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["HOME=/", "K=flag", "PATH=/usr/bin:/bin"]);
    // Like runc, an entry that is not NAME=VALUE is refused, up front.
    let mut p = p;
    p.set_env(Some(vec!["A=1".into(), "JUSTNAME".into()]));
    let e = exec(&mut c, "c", "bad", p, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(
        e.to_string()
            .contains("process.env[1] \"JUSTNAME\" is not NAME=VALUE"),
        "{e}"
    );
    remove(&mut c, "c");
    agent.shutdown_clean();
}

/// An exec whose process has no `capabilities` gets the container's, as
/// with `runc exec --process` (it used to fail: `capset ... Operation not
/// permitted`, the bounding set emptied and oci-spec's defaults asked for).
#[test]
fn exec_without_capabilities_gets_the_containers() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let spec = patch(spec, |v| {
        v["process"]["capabilities"] = serde_json::json!({
            "bounding": ["CAP_KILL", "CAP_CHOWN"],
            "effective": ["CAP_CHOWN"],
            "permitted": ["CAP_CHOWN"],
        });
    });
    let mut c = agent.client();
    create_and_start(&mut c, "c", spec.clone());
    let p = patch(spec, |v| {
        let p = &mut v["process"];
        p.as_object_mut().unwrap().remove("capabilities");
        p["args"] = serde_json::json!(["grep", "-E", "^Cap(Bnd|Eff|Prm|Inh)", "/proc/self/status"]);
    })
    .process()
    .clone()
    .unwrap();
    assert!(p.capabilities().is_none());
    let (status, o, e) = agent.exec_run(&mut c, "c", "e", p);
    assert_eq!(status, 0, "{}", text(&e));
    let chown = 1u64 << 0;
    let kill = 1u64 << 5;
    assert_eq!(
        text(&o),
        format!(
            "CapInh:\t{:016x}\nCapPrm:\t{chown:016x}\nCapEff:\t{chown:016x}\nCapBnd:\t{:016x}\n",
            0,
            chown | kill
        )
    );
    remove(&mut c, "c");
    agent.shutdown_clean();
}

/// The agent is one thread: a start whose init is slow to exec must not
/// hold up the other containers. Container a's init is stopped (SIGSTOP)
/// before its StartContainer is sent, so it cannot act on it; meanwhile
/// container b lives a whole life (create, stdio, start, exec, wait,
/// remove) and a's start stays unanswered; after SIGCONT a starts and
/// runs.
#[test]
fn a_stalled_start_holds_up_no_other_container() {
    use husk_protocol::frame::{read_frame, write_frame};
    use husk_protocol::{Hello, RequestFrame, ResponseFrame, PROTOCOL_VERSION};
    let agent = require!(Agent::start_if_can_run());
    let (spec_a, _) = agent.bundle("a", &[], &["echo", "A-RAN"]);
    let (spec_b, _) = agent.bundle("b", &[], &["sh", "-c", "echo B-RAN; exec sleep 1000"]);
    let mut c = agent.client();
    let pid_a = create(&mut c, "a", spec_a, OUT_AND_ERR).unwrap();
    let out_a = agent.stream("a", None, StreamKind::Stdout);
    let err_a = agent.stream("a", None, StreamKind::Stderr);
    let init_a = nix::unistd::Pid::from_raw(pid_a);
    nix::sys::signal::kill(init_a, nix::sys::signal::Signal::SIGSTOP).unwrap();

    // StartContainer(a) on a raw connection: sent now, answered later.
    let mut raw = agent.addr.connect().unwrap();
    write_frame(
        &mut raw,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let ack: ResponseFrame = read_frame(&mut raw).unwrap();
    ack.result.unwrap();
    write_frame(
        &mut raw,
        &RequestFrame {
            version: PROTOCOL_VERSION,
            id: 7,
            request: Request::StartContainer(ContainerRef {
                container_id: "a".into(),
            }),
        },
    )
    .unwrap();

    // b's whole life while a's start is pending.
    let mut cb = agent.client();
    let mut p = spec_b.process().clone().unwrap();
    create(&mut cb, "b", spec_b, OUT_AND_ERR).unwrap();
    let out_b = agent.stream("b", None, StreamKind::Stdout);
    let err_b = agent.stream("b", None, StreamKind::Stderr);
    cb.start("b").unwrap();
    p.set_args(Some(vec!["echo".into(), "B-EXEC".into()]));
    let (status, o, e) = agent.exec_run(&mut cb, "b", "e1", p);
    assert_eq!(text(&o), "B-EXEC\n", "stderr: {}", text(&e));
    assert_eq!(status, 0);
    assert_eq!(state(&mut cb, "a").status, ContainerStatus::Created);
    signal(&mut cb, "b", None, 9, false);
    assert_eq!(cb.wait("b", None).unwrap(), 137);
    let (o, e) = collect(out_b, err_b, None, None);
    assert_eq!(text(&o), "B-RAN\n", "stderr: {}", text(&e));
    remove(&mut cb, "b");

    // a's start is still unanswered: its init has not exec'd.
    raw.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let pending = std::io::Read::read(&mut raw, &mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a's start was answered while its init was stopped: {pending:?}"
    );
    raw.set_nonblocking(false).unwrap();

    nix::sys::signal::kill(init_a, nix::sys::signal::Signal::SIGCONT).unwrap();
    let r: ResponseFrame = read_frame(&mut raw).unwrap();
    assert_eq!(r.id, 7);
    assert_eq!(r.result.unwrap(), Response::Empty);
    let (o, _) = collect(out_a, err_a, None, None);
    assert_eq!(text(&o), "A-RAN\n");
    assert_eq!(c.wait("a", None).unwrap(), 0);
    remove(&mut c, "a");
    agent.shutdown_clean();
}

/// A kill of a process that has exited is NotFound (containerd ignores
/// NotFound on kill, not FailedPrecondition: StopPodSandbox failed and
/// the pod's VM stayed up). A kill of the whole container (`all`) after
/// its init exited is no error.
#[test]
fn a_kill_of_an_exited_process_is_not_found() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle("b", &[], &["true"]);
    let mut c = agent.client();
    create_and_start(&mut c, "c", spec.clone());
    assert_eq!(c.wait("c", None).unwrap(), 0);
    for exec_id in [None, Some("e1")] {
        if let Some(e) = exec_id {
            // An exec of a stopped container cannot be made: test the
            // exec's case in a container whose init still runs.
            let (spec, _) = agent.bundle("b2", &[], &["sleep", "1000"]);
            create_and_start(&mut c, "c2", spec.clone());
            let p = with_args(spec, &["true"]).process().clone().unwrap();
            exec(&mut c, "c2", e, p, StdioSpec::default()).unwrap();
            assert_eq!(c.wait("c2", Some(e)).unwrap(), 0);
        }
        let id = if exec_id.is_some() { "c2" } else { "c" };
        let err = c
            .call(Request::SignalProcess(SignalProcess {
                container_id: id.into(),
                exec_id: exec_id.map(Into::into),
                signal: 15,
                all: false,
            }))
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::NotFound),
            "{id}/{exec_id:?}: {err}"
        );
        assert!(err.to_string().contains("has exited"), "{err}");
    }
    signal(&mut c, "c", None, 9, true);
    signal(&mut c, "c2", None, 9, false);
    assert_eq!(c.wait("c2", None).unwrap(), 137);
    remove(&mut c, "c");
    remove(&mut c, "c2");
    agent.shutdown_clean();
}

/// When a container's init exits, the container's other processes are
/// killed (runc's shim kills the rest when the container has no PID
/// namespace of its own; the kernel does it when it has one): a
/// background child that keeps stdout open must not keep the output open
/// after the exit (the shim waited out its drain timeout, 5 s, on every
/// stop). Here the container shares the agent's PID namespace, as a
/// container in a pod with a shared PID namespace shares the pause
/// container's.
#[test]
fn an_exited_init_takes_the_rest_of_its_container_with_it() {
    let agent = require!(Agent::start_if_can_run());
    let (spec, _) = agent.bundle(
        "b",
        &[],
        &["sh", "-c", "sleep 1000 & echo $! >/bg.pid; echo started"],
    );
    let spec = patch(spec, |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let rootfs = spec.root().as_ref().unwrap().path().clone();
    let mut c = agent.client();
    create(&mut c, "c", spec, OUT_AND_ERR).unwrap();
    let mut out = agent.stream("c", None, StreamKind::Stdout);
    let err = agent.stream("c", None, StreamKind::Stderr);
    c.start("c").unwrap();
    assert_eq!(c.wait("c", None).unwrap(), 0);
    let exited = std::time::Instant::now();
    // The output ends (EOF) soon after the exit: the background sleep,
    // which holds stdout, is gone.
    out.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut got = Vec::new();
    let r = std::io::Read::read_to_end(&mut out, &mut got);
    assert!(
        r.is_ok(),
        "stdout still open {:?} after init exited: {r:?} (got {:?})",
        exited.elapsed(),
        text(&got)
    );
    assert_eq!(text(&got), "started\n");
    drop(err);
    let bg: i32 = std::fs::read_to_string(rootfs.join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(2),
        &format!("the background sleep {bg} to die with its container's init"),
        || {
            std::fs::read_to_string(format!("/proc/{bg}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        },
    );
    remove(&mut c, "c");
    agent.shutdown_clean();
}
