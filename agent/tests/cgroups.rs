//! Container cgroups on a cgroup2 hierarchy. The hosts here are hybrid v1
//! with an empty cgroup2 at /sys/fs/cgroup/unified: no controllers, so the
//! limits cannot be checked (the VM tests do), but placement, exec joining,
//! ListProcesses from cgroup.procs, Stats, removal, freezing (pause and
//! resume: the freezer is cgroup v2's core) and the checks of an update
//! can.

mod common;
use std::path::Path;
use std::time::Duration;

use common::*;
use husk_agent::container::cgroups::is_cgroup2;
use husk_protocol::client::ClientError;
use husk_protocol::{
    ContainerRef, ContainerStatus, ErrorCode, Request, Response, StdioSpec, UpdateContainer,
};
use husk_test_support::{require, wait_until};

fn cgroup2_root() -> Option<&'static str> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| is_cgroup2(Path::new(p)))
}

/// The cgroup2 root an agent can use, or why the test cannot run: the
/// agent tests' prerequisites ([`can_run`]), then a cgroup2 hierarchy.
fn cgroup2_for() -> Result<&'static str, String> {
    can_run()?;
    cgroup2_root().ok_or_else(|| "no cgroup2 hierarchy on this host".to_owned())
}

fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        .unwrap()
}

fn list_processes(
    c: &mut husk_protocol::client::AgentClient,
    id: &str,
) -> Vec<husk_protocol::ProcessInfo> {
    match c
        .call(Request::ListProcesses(ContainerRef {
            container_id: id.to_owned(),
        }))
        .unwrap()
    {
        Response::Processes { processes } => processes,
        other => panic!("{other:?}"),
    }
}

#[test]
fn container_and_exec_live_in_their_cgroup() {
    let root = require!(cgroup2_for());
    let agent = Agent::start_with(&["--cgroup-root", root]);
    let (spec, dir) = agent.bundle("b", &[], &["sh", "-c", "sleep 1000 & sleep 1000"]);
    let mut c = agent.client();
    let id = format!("cg{}", std::process::id());
    let init = create(&mut c, &id, spec.clone(), StdioSpec::default()).unwrap();
    assert_eq!(
        cgroup_of(init),
        format!("/husk/{id}"),
        "init joined its cgroup before building"
    );
    c.start(&id).unwrap();
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["sleep".into(), "1000".into()]));
    let epid = exec(&mut c, &id, "e", p, StdioSpec::default()).unwrap();
    assert_eq!(cgroup_of(epid), format!("/husk/{id}"));
    // init (sh exec's its last command), its background sleep, the exec;
    // sh forks the background sleep in its own time (a loaded host may
    // list before it has).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let procs = loop {
        let procs = list_processes(&mut c, &id);
        if procs.len() >= 3 || std::time::Instant::now() >= deadline {
            break procs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(procs.len(), 3, "{procs:?}");
    assert!(procs.iter().any(|p| p.pid == init && p.exec_id.is_none()));
    assert!(procs
        .iter()
        .any(|p| p.pid == epid && p.exec_id.as_deref() == Some("e")));
    match c
        .call(Request::Stats(ContainerRef {
            container_id: id.clone(),
        }))
        .unwrap()
    {
        Response::Stats(s) => assert!(s.cpu_usage_usec.is_some(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    remove(&mut c, &id);
    assert!(
        !Path::new(root).join("husk").join(&id).exists(),
        "cgroup removed"
    );
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

/// `exec --cgroup SUB`: the exec runs in that existing sub-cgroup of the
/// container's cgroup, counts as the container's (ListProcesses), and the
/// container's removal takes the sub-cgroup with it. A path leaving the
/// container's cgroup or naming none is refused, as runc does.
#[test]
fn exec_joins_a_sub_cgroup() {
    let root = require!(cgroup2_for());
    let agent = Agent::start_with(&["--cgroup-root", root]);
    let (spec, dir) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    let id = format!("cgsub{}", std::process::id());
    create(&mut c, &id, spec.clone(), StdioSpec::default()).unwrap();
    c.start(&id).unwrap();
    let cg = Path::new(root).join("husk").join(&id);
    std::fs::create_dir(cg.join("sub")).unwrap();
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["sleep".into(), "1000".into()]));
    let stdio = StdioSpec::default();
    let epid = exec_in(&mut c, &id, "e", p.clone(), stdio, Some("sub")).unwrap();
    assert_eq!(cgroup_of(epid), format!("/husk/{id}/sub"));
    // `/` is the container's own cgroup.
    let top = exec_in(&mut c, &id, "top", p.clone(), stdio, Some("/")).unwrap();
    assert_eq!(cgroup_of(top), format!("/husk/{id}"));
    for (sub, want) in [
        (
            "..",
            "bad sub cgroup path: .. (leaves the container's cgroup)",
        ),
        ("sub/../../x", "bad sub cgroup path: sub/../../x"),
        ("nope", "sub cgroup nope: "),
    ] {
        let e = exec_in(&mut c, &id, "x", p.clone(), stdio, Some(sub)).unwrap_err();
        assert_eq!(
            e.code(),
            Some(husk_protocol::ErrorCode::InvalidArgument),
            "{e}"
        );
        assert!(e.to_string().contains(want), "{sub}: {e}");
    }
    let procs = list_processes(&mut c, &id);
    assert!(
        procs
            .iter()
            .any(|p| p.pid == epid && p.exec_id.as_deref() == Some("e")),
        "the exec in the sub-cgroup is the container's: {procs:?}"
    );
    remove(&mut c, &id);
    assert!(!cg.exists(), "cgroup and sub-cgroup removed");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

/// Without a cgroup for the container, `exec --cgroup` cannot be honoured
/// and is refused, not ignored.
#[test]
fn exec_sub_cgroup_without_a_cgroup_is_refused() {
    require!(can_run());
    let agent = Agent::start_with(&["--cgroup-root", "/nonexistent-cgroup-root"]);
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    create(&mut c, "c", spec.clone(), StdioSpec::default()).unwrap();
    c.start("c").unwrap();
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["true".into()]));
    let e = exec_in(&mut c, "c", "e", p, StdioSpec::default(), Some("sub")).unwrap_err();
    assert_eq!(
        e.code(),
        Some(husk_protocol::ErrorCode::FailedPrecondition),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("container c has no cgroup (the guest has no cgroup2 hierarchy): cannot run the exec in sub-cgroup \"sub\""),
        "{e}"
    );
    remove(&mut c, "c");
    assert_no_children(&agent);
    agent.shutdown();
}

fn container_ref(id: &str) -> ContainerRef {
    ContainerRef {
        container_id: id.to_owned(),
    }
}

fn status_of(c: &mut husk_protocol::client::AgentClient, id: &str) -> ContainerStatus {
    match c.call(Request::State(container_ref(id))).unwrap() {
        Response::State(s) => s.status,
        other => panic!("{other:?}"),
    }
}

fn refused(r: Result<Response, ClientError>, code: ErrorCode, want: &str) {
    let e = r.expect_err(want);
    assert_eq!(e.code(), Some(code), "{e}");
    assert!(e.to_string().contains(want), "wanted {want:?} in: {e}");
}

/// PauseContainer freezes the container's cgroup (cgroup v2
/// `cgroup.freeze`): `cgroup.events` says frozen, its process stops
/// ticking, State says paused, and neither a start nor an exec can join
/// it; ResumeContainer thaws it. A paused container is removed like any
/// other.
#[test]
fn pause_freezes_the_container_until_resume() {
    let root = require!(cgroup2_for());
    let agent = Agent::start_with(&["--cgroup-root", root]);
    let (spec, dir) = agent.bundle(
        "b",
        &[],
        // The busy loop is still on a CPU when the freeze is asked: the
        // kernel reports it frozen only once it trapped (the agent waits
        // for cgroup.events).
        &[
            "sh",
            "-c",
            "while :; do :; done & while :; do echo x >> /ticks; sleep 0.05; done",
        ],
    );
    let ticks = dir.join("rootfs/ticks");
    let count = || {
        std::fs::read_to_string(&ticks)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_beyond =
        |n: usize, what: &str| wait_until(Duration::from_secs(30), what, || count() > n);
    let mut c = agent.client();
    let id = format!("pz{}", std::process::id());
    let cg = Path::new(root).join("husk").join(&id);
    let frozen = || std::fs::read_to_string(cg.join("cgroup.events")).unwrap();
    create(&mut c, &id, spec.clone(), StdioSpec::default()).unwrap();
    // A created container can be paused; it cannot start until resumed.
    c.call(Request::PauseContainer(container_ref(&id))).unwrap();
    assert_eq!(status_of(&mut c, &id), ContainerStatus::Paused);
    let e = c.start(&id).expect_err("start while paused");
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    assert!(e.to_string().contains("is paused: resume it first"), "{e}");
    c.call(Request::ResumeContainer(container_ref(&id)))
        .unwrap();
    assert_eq!(status_of(&mut c, &id), ContainerStatus::Created);
    c.start(&id).unwrap();
    wait_beyond(2, "the container never ticked");

    c.call(Request::PauseContainer(container_ref(&id))).unwrap();
    assert!(frozen().contains("frozen 1"), "{}", frozen());
    assert_eq!(status_of(&mut c, &id), ContainerStatus::Paused);
    let at = count();
    // Not synchronisation: a while in which a running container would tick.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), at, "the container ran while paused");
    refused(
        c.call(Request::PauseContainer(container_ref(&id))),
        ErrorCode::FailedPrecondition,
        "is paused already",
    );
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec!["true".into()]));
    let e = exec(&mut c, &id, "e", p, StdioSpec::default()).expect_err("exec while paused");
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");

    c.call(Request::ResumeContainer(container_ref(&id)))
        .unwrap();
    assert!(frozen().contains("frozen 0"), "{}", frozen());
    assert_eq!(status_of(&mut c, &id), ContainerStatus::Running);
    wait_beyond(at, "the container did not tick again after resume");
    refused(
        c.call(Request::ResumeContainer(container_ref(&id))),
        ErrorCode::FailedPrecondition,
        "is not paused",
    );
    refused(
        c.call(Request::PauseContainer(container_ref("nope"))),
        ErrorCode::NotFound,
        "no container \"nope\"",
    );

    // Removed while paused: nothing is left.
    c.call(Request::PauseContainer(container_ref(&id))).unwrap();
    remove(&mut c, &id);
    assert!(!cg.exists(), "cgroup removed");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

/// UpdateContainer: what the machine cannot give (more memory than its
/// MemTotal, a CPU it does not have) is refused naming the field, and
/// changes nothing; the limits are written where the cgroup2 hierarchy has
/// the controllers (a cgroup v2 host, the guest), and on this hybrid
/// host's empty cgroup2 the write's failure names the file. A stopped
/// container or an unknown one is refused.
#[test]
fn update_is_checked_against_the_machine_and_written_to_the_cgroup() {
    let root = require!(cgroup2_for());
    let agent = Agent::start_with(&["--cgroup-root", root]);
    let (spec, dir) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    let id = format!("up{}", std::process::id());
    let cg = Path::new(root).join("husk").join(&id);
    create(&mut c, &id, spec, StdioSpec::default()).unwrap();
    c.start(&id).unwrap();
    let update = |c: &mut husk_protocol::client::AgentClient, id: &str, r: serde_json::Value| {
        c.call(Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: id.to_owned(),
            resources: serde_json::from_value(r).unwrap(),
        })))
    };
    refused(
        update(&mut c, &id, serde_json::json!({"memory": {"limit": 1u64 << 50}})),
        ErrorCode::InvalidArgument,
        "linux.resources.memory.limit 1125899906842624: asks for 1073741824 MiB, more than the guest's memory",
    );
    refused(
        update(&mut c, &id, serde_json::json!({"cpu": {"cpus": "0,4095"}})),
        ErrorCode::InvalidArgument,
        "linux.resources.cpu.cpus \"0,4095\": names vCPU 4095",
    );
    refused(
        update(
            &mut c,
            &id,
            serde_json::json!({"cpu": {"quota": 1_000_000_000, "period": 1000}}),
        ),
        ErrorCode::InvalidArgument,
        "linux.resources.cpu.quota 1000000000 (period 1000): 1000000 CPUs' worth",
    );
    refused(
        update(&mut c, "nope", serde_json::json!({})),
        ErrorCode::NotFound,
        "no container \"nope\"",
    );
    let limits = serde_json::json!({"memory": {"limit": 64u64 << 20}, "pids": {"limit": 20}});
    let has = |f: &str| cg.join(f).exists();
    if has("memory.max") && has("pids.max") {
        update(&mut c, &id, limits).unwrap();
        let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
        assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
        assert_eq!(read("pids.max").trim(), "20");
    } else {
        refused(
            update(&mut c, &id, limits),
            ErrorCode::InvalidArgument,
            "memory.max",
        );
        // This host's cgroup2 has no memory or pids controller: the write's
        // refusal, naming the file, is what this host can show; the limits
        // themselves are read back in a guest
        // (`cli_e2e::update_changes_the_guest_cgroup_and_cannot_grow_the_vm`).
    }
    c.call(Request::SignalProcess(husk_protocol::SignalProcess {
        container_id: id.clone(),
        exec_id: None,
        signal: 9,
        all: false,
    }))
    .unwrap();
    c.wait(&id, None).unwrap();
    refused(
        update(&mut c, &id, serde_json::json!({})),
        ErrorCode::FailedPrecondition,
        "has stopped: its resources cannot be updated",
    );
    remove(&mut c, &id);
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

/// Without a cgroup for the container, pause and update cannot be
/// honoured and are refused, not ignored.
#[test]
fn pause_and_update_without_a_cgroup_are_refused() {
    require!(can_run());
    let agent = Agent::start_with(&["--cgroup-root", "/nonexistent-cgroup-root"]);
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    create(&mut c, "c", spec, StdioSpec::default()).unwrap();
    c.start("c").unwrap();
    refused(
        c.call(Request::PauseContainer(container_ref("c"))),
        ErrorCode::FailedPrecondition,
        "container c has no cgroup (the guest has no cgroup2 hierarchy): it cannot be paused",
    );
    refused(
        c.call(Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: "c".into(),
            resources: Default::default(),
        }))),
        ErrorCode::FailedPrecondition,
        "it cannot be updated",
    );
    assert_eq!(status_of(&mut c, "c"), ContainerStatus::Running);
    remove(&mut c, "c");
    assert_no_children(&agent);
    agent.shutdown();
}

/// `WaitOom` parks its own connection only, until the container's init
/// exits (this host's cgroup2, where there is one, has no memory
/// controller: the count stays 0, so only the exit answers); after the
/// exit it answers at once; a created container's wait is answered when
/// its removal kills the init; an unknown container is NotFound. The OOM
/// kills themselves are counted in a guest (`runtime/tests/oom_e2e.rs`).
#[test]
fn an_oom_wait_parks_until_the_init_exits() {
    require!(can_run());
    let root = cgroup2_root().unwrap_or("/nonexistent-cgroup-root");
    let agent = Agent::start_with(&["--cgroup-root", root]);
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    let e = c.wait_oom("nope", 0).unwrap_err();
    assert_eq!(e.code(), Some(husk_protocol::ErrorCode::NotFound), "{e}");

    let id = format!("oom{}", std::process::id());
    create(&mut c, &id, spec.clone(), StdioSpec::default()).unwrap();
    c.start(&id).unwrap();
    let mut waiter = agent.client();
    let wid = id.clone();
    let t = std::thread::spawn(move || waiter.wait_oom(&wid, 0).unwrap());
    // Not synchronisation: a while in which the wait must stay unanswered.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !t.is_finished(),
        "the wait answered before anything happened"
    );
    // Other connections are served meanwhile.
    let r = c.call(Request::Stats(ContainerRef {
        container_id: id.clone(),
    }));
    assert!(matches!(r, Ok(Response::Stats(_))), "{r:?}");
    c.call(Request::SignalProcess(husk_protocol::SignalProcess {
        container_id: id.clone(),
        exec_id: None,
        signal: 9,
        all: false,
    }))
    .unwrap();
    assert_eq!(t.join().unwrap(), (0, true));
    assert_eq!(c.wait(&id, None).unwrap(), 137);
    assert_eq!(c.wait_oom(&id, 0).unwrap(), (0, true), "after the exit");
    // The connection goes on after an answered wait.
    assert!(matches!(
        c.call(Request::Version),
        Ok(Response::Version { .. })
    ));
    remove(&mut c, &id);

    // Never started: its removal kills the init, which answers the wait.
    create(&mut c, &id, spec, StdioSpec::default()).unwrap();
    let mut waiter = agent.client();
    let wid = id.clone();
    let t = std::thread::spawn(move || waiter.wait_oom(&wid, 0).unwrap());
    // Not synchronisation: a while in which the wait must stay unanswered.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!t.is_finished());
    remove(&mut c, &id);
    assert_eq!(t.join().unwrap(), (0, true));
    let e = c.wait_oom(&id, 0).unwrap_err();
    assert_eq!(e.code(), Some(husk_protocol::ErrorCode::NotFound), "{e}");
    assert_no_children(&agent);
    agent.shutdown();
}
