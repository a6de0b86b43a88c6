//! Container cgroups on a cgroup2 hierarchy. The hosts here are hybrid v1
//! with an empty cgroup2 at /sys/fs/cgroup/unified: no controllers, so the
//! limits cannot be checked (the VM tests do), but placement, exec joining,
//! ListProcesses from cgroup.procs, Stats and removal can.

mod common;
use std::path::Path;

use common::*;
use husk_agent::container::cgroups::is_cgroup2;
use husk_protocol::{ContainerRef, Request, Response, StdioSpec};

fn cgroup2_root() -> Option<&'static str> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| is_cgroup2(Path::new(p)))
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
    if !can_run("cgroups") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("SKIP: cgroups: no cgroup2 hierarchy on this host");
        return;
    };
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
    if !can_run("exec_sub_cgroup") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("SKIP: exec_sub_cgroup: no cgroup2 hierarchy on this host");
        return;
    };
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
    if !can_run("exec_sub_cgroup_none") {
        return;
    }
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

/// `WaitOom` parks its own connection only, until the container's init
/// exits (this host's cgroup2, where there is one, has no memory
/// controller: the count stays 0, so only the exit answers); after the
/// exit it answers at once; a created container's wait is answered when
/// its removal kills the init; an unknown container is NotFound. The OOM
/// kills themselves are counted in a guest (`runtime/tests/oom_e2e.rs`).
#[test]
fn an_oom_wait_parks_until_the_init_exits() {
    if !can_run("oom_wait") {
        return;
    }
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
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!t.is_finished());
    remove(&mut c, &id);
    assert_eq!(t.join().unwrap(), (0, true));
    let e = c.wait_oom(&id, 0).unwrap_err();
    assert_eq!(e.code(), Some(husk_protocol::ErrorCode::NotFound), "{e}");
    assert_no_children(&agent);
    agent.shutdown();
}
