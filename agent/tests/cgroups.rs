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
    let procs = match c
        .call(Request::ListProcesses(ContainerRef {
            container_id: id.clone(),
        }))
        .unwrap()
    {
        Response::Processes { processes } => processes,
        other => panic!("{other:?}"),
    };
    // init (sh exec's its last command), its background sleep, the exec.
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
