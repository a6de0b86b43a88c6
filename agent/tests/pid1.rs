//! PID 1 mode on the host: the agent as init of a fresh pid + mount
//! namespace (`unshare --pid --mount --fork`). There `reboot(2)` only ends
//! the namespace (its init dies of SIGHUP), which is what Shutdown must do.

mod common;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use husk_protocol::client::{AgentAddr, AgentClient};
use husk_protocol::{Request, Response, StdioSpec, StreamKind};
use husk_test_support::{require, skip, wait_for};

#[test]
fn pid1_mounts_runs_a_container_and_reboots_on_shutdown() {
    require!(can_run());
    if Command::new("unshare").arg("--version").output().is_err() {
        skip!("no unshare(1)");
    }
    let dir = tempfile::Builder::new()
        .prefix("husk-pid1")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("agent.sock");
    let mut child = Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--propagation", "private"])
        .arg(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .env("HUSK_AGENT_LOG", "info")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let addr = AgentAddr::Unix(sock);
    let mut c = AgentClient::connect(&addr, Duration::from_secs(10)).unwrap();
    assert!(matches!(
        c.call(Request::Version).unwrap(),
        Response::Version { .. }
    ));

    let agent_pid: u32 =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap()
            .split_whitespace()
            .next()
            .expect("unshare has the agent as child")
            .parse()
            .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .to_owned();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "the agent is pid 1 in its namespace: {nspid}"
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).unwrap();
    for target in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run"] {
        assert!(
            mountinfo
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some(target)),
            "{target} not mounted: {mountinfo}"
        );
    }
    // The guest's root is a shared mount, as systemd makes a host's: a
    // container's `rslave` / `rshared` propagation means what it means
    // with runc on such a host (mounts reach the container / the guest).
    // (Checked once the agent is gone: a failed assertion here would
    // leave it running.)
    let guest_root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap()
        .to_owned();
    // /proc is a fresh one for the agent's pid namespace.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let proc_id = mountinfo
        .lines()
        .rfind(|l| l.split_whitespace().nth(4) == Some("/proc"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert!(!host
        .lines()
        .any(|l| l.split_whitespace().next() == Some(proc_id)));

    // A container runs the same as outside PID 1 mode.
    let bundle = dir.path().join("b");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/make-bundle.sh");
    let out = Command::new(script)
        .arg(&bundle)
        .args(["echo", "from pid1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).unwrap();
    let mut root = spec.root().clone().unwrap();
    root.set_path(bundle.join("rootfs"));
    spec.set_root(Some(root));
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
    let mut o = addr.open_stream("c", None, StreamKind::Stdout).unwrap();
    c.start("c").unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut o, &mut s).unwrap();
    assert_eq!(s, "from pid1\n");
    assert_eq!(c.wait("c", None).unwrap(), 0);

    // Shutdown is answered, then the agent reboots: in a pid namespace
    // that kills it with SIGHUP, and unshare passes the signal on.
    assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Empty);
    let st = wait_for(
        Duration::from_secs(10),
        "the agent to end after Shutdown",
        || child.try_wait().unwrap(),
    );
    assert!(
        st.signal() == Some(libc::SIGHUP) || st.code() == Some(128 + libc::SIGHUP),
        "{st:?}"
    );
    assert_no_mounts(&bundle);
    assert!(
        guest_root.split(" - ").next().unwrap().contains(" shared:"),
        "the guest's / is not shared: {guest_root}"
    );
}
