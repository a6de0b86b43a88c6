//! Attacks a container process once tried against the guest agent and the
//! host, run through the real CLI with a real guest. Each must fail.

mod common;
use common::*;
use husk_test_support::require;

use std::fs;
use std::path::Path;
use std::process::Stdio;

use husk_protocol::frame::write_frame;
use husk_protocol::{ExecProcess, Hello, Request, RequestFrame, StdioSpec, PROTOCOL_VERSION};

/// The frames a hostile container sends the agent: a control hello, then
/// an `ExecProcess` into its own container asking for every capability,
/// whose process records its capabilities in `/pwned`.
fn exec_everything_frames(container_id: &str) -> Vec<u8> {
    let all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let process: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
        "args": ["/bin/sh", "-c", "grep CapEff /proc/self/status > /pwned"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": all, "effective": all, "permitted": all}
    }))
    .unwrap();
    let mut out = Vec::new();
    write_frame(
        &mut out,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    write_frame(
        &mut out,
        &RequestFrame {
            version: PROTOCOL_VERSION,
            id: 1,
            request: Request::ExecProcess(Box::new(ExecProcess {
                container_id: container_id.into(),
                exec_id: "attack".into(),
                process,
                stdio: StdioSpec {
                    stdin: false,
                    stdout: false,
                    stderr: false,
                },
                cgroup: None,
            })),
        },
    )
    .unwrap();
    out
}

/// The container: an unprivileged process (runc's default: three
/// capabilities, no_new_privs) that sends the frames to the agent's port on
/// every CID that could reach it: loopback (1), the host (2), its own (3).
fn attack_script() -> &'static str {
    "for cid in 1 2 3; do \
       vsock-cat $cid 1024 < /attack.bin > /dev/null 2>/tmp/err; \
       echo \"cid $cid rc=$? $(cat /tmp/err)\"; \
     done; sleep 2; ls /pwned 2>&1 || true"
}

fn bundle_with_attack(env: &Env, name: &str, id: &str) -> std::path::PathBuf {
    let b = env.bundle(name, &["--probes"], &["sh", "-c", attack_script()]);
    fs::write(b.join("rootfs/attack.bin"), exec_everything_frames(id)).unwrap();
    b
}

fn run_with(env: &Env, bundle: &Path, id: &str, enable: Option<&str>) -> (bool, String, String) {
    let mut cmd = env.husk();
    cmd.args(["run", "--bundle", bundle.to_str().unwrap(), id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(list) = enable {
        cmd.env("HUSK_ENABLE_ANNOTATIONS", list);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The attack script's result line for each of CIDs 1, 2 and 3.
fn cid_lines(out: &str) -> Vec<&str> {
    (1..=3)
        .map(|cid| {
            out.lines()
                .find(|l| l.starts_with(&format!("cid {cid} ")))
                .unwrap_or_else(|| panic!("no line for cid {cid}: {out}"))
        })
        .collect()
}

/// The agent's port is for the host alone. A container cannot open an
/// AF_VSOCK socket at all (the agent's seccomp rule); with vsock allowed by
/// the operator it still cannot reach the agent: the guest kernel has no
/// vsock loopback, and a connection to the host's CID goes to the host.
/// The agent refusing any peer but CID 2 is unit-tested in the agent.
#[test]
fn a_container_cannot_drive_the_agent_over_vsock() {
    require!(common::guest_ready());
    let env = Env::new();

    let b = bundle_with_attack(&env, "denied", "v1");
    let (ok, out, err) = run_with(&env, &b, "v1", None);
    assert!(ok, "stdout: {out} stderr: {err}");
    for line in cid_lines(&out) {
        assert!(
            line.contains("rc=2") && line.contains("socket: Address family not supported"),
            "{line}"
        );
    }
    assert!(out.contains("No such file"), "no /pwned expected: {out}");
    assert!(!b.join("rootfs/pwned").exists());
    env.assert_clean();

    // Allowed by the operator: the socket opens, and no connection reaches
    // the agent.
    let b = bundle_with_attack(&env, "allowed", "v2");
    env.edit_config(&b, |v| {
        v["annotations"] = serde_json::json!({"husk.guest_vsock": "allow"});
    });
    let (ok, out, err) = run_with(&env, &b, "v2", Some("husk.guest_vsock"));
    assert!(ok, "stdout: {out} stderr: {err}");
    for line in cid_lines(&out) {
        assert!(!line.contains("socket:"), "the socket opens: {line}");
        assert!(!line.contains("rc=0"), "nothing may answer: {line}");
    }
    assert!(out.contains("No such file"), "no /pwned expected: {out}");
    assert!(!b.join("rootfs/pwned").exists());
    env.assert_clean();
}

/// A pod author cannot pick host files for the VM, nor ask for vsock, nor
/// a VM beyond the operator's maximums: `create` fails, naming why, and
/// leaves nothing.
#[test]
fn annotations_the_operator_did_not_enable_are_refused() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["true"]);
    for (key, value, why) in [
        ("husk.initramfs", "/etc/shadow", "not enabled"),
        ("husk.kernel", "/etc/shadow", "not enabled"),
        ("husk.guest_vsock", "allow", "not enabled"),
        ("husk.memory_mib", "1048576", "MiB"),
        ("husk.nonsense", "1", "unknown"),
    ] {
        env.edit_config(&b, |v| {
            v["annotations"] = serde_json::json!({ key: value });
        });
        let out = env.run(&["create", "--bundle", b.to_str().unwrap(), "a1"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} accepted");
        assert!(err.contains(key) && err.contains(why), "{key}: {err}");
        env.assert_clean();
    }
}
