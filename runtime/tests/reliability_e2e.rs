//! What a careless operator does to husk on the host, through the real
//! CLI with a real guest: nothing of theirs may be lost, nothing of husk's
//! may be left.

mod common;
use common::*;
use husk_test_support::require;

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `husk create` SIGKILLed at every stage (before the state exists, while
/// the share is mounted, while the VM boots, after it is created), then
/// `husk delete --force`: the bundle's rootfs and its volume keep every
/// file, and no mount, process or state is left.
#[test]
fn killed_create_then_delete_keeps_the_bundle_and_volumes() {
    require!(common::guest_ready());
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("keep.txt"), b"precious\n").unwrap();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    env.edit_config(&b, |v| {
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind",
            "source": vol.to_str().unwrap(), "options": ["rbind", "ro"]}));
    });
    let rootfs = b.join("rootfs");
    let before = entries(&rootfs);
    let bin_before = entries(&rootfs.join("bin")).len();

    for (n, delay_ms) in [0u64, 5, 20, 50, 100, 200, 400, 800, 1500, 3000]
        .into_iter()
        .enumerate()
    {
        let id = format!("k{n}");
        let mut create = env
            .husk()
            .args(["create", "--bundle", b.to_str().unwrap(), &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Not synchronisation: the create is killed at each of these points.
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = create.kill();
        let _ = create.wait();
        let out = env.run(&["delete", "--force", &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("does not exist"),
            "delete after create killed at {delay_ms} ms: {err}"
        );
        eprintln!("create killed at {delay_ms} ms; delete: {}", err.trim());
        // (The guest may have made the /data mount point, as runc would.)
        let after = entries(&rootfs);
        assert!(
            before.iter().all(|e| after.contains(e)),
            "rootfs after kill at {delay_ms} ms: {after:?}"
        );
        assert_eq!(entries(&rootfs.join("bin")).len(), bin_before);
        assert_eq!(fs::read(vol.join("keep.txt")).unwrap(), b"precious\n");
        // A monitor whose create was killed before it recorded the monitor
        // stops by itself once it finds nobody reading its report.
        let needle = env.dir.path().to_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        env.assert_clean();
    }
}

/// `delete --force c1` stops what c1's monitor started and nothing else:
/// not container `c10` (whose state directory name starts with c1's), not
/// an operator's process that names c1's state directory. After a SIGKILL
/// of c1's monitor, its qemu (which `-runas` leaves without a parent-death
/// signal) is stopped by the monitor's record of what it started.
#[test]
fn delete_force_stops_only_what_the_container_started() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    for id in ["c1", "c10"] {
        env.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), id]);
    }
    let c1_dir = env.root().join("c1");
    let mut bystander = std::process::Command::new("sh")
        .args([
            "-c",
            "sleep 600; true",
            "tail",
            c1_dir.join("console.log").to_str().unwrap(),
        ])
        .spawn()
        .unwrap();

    let st: serde_json::Value = serde_json::from_str(&env.ok(&["state", "c1"])).unwrap();
    let monitor = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    env.ok(&["delete", "--force", "c1"]);

    assert_eq!(env.status_of("c10"), "running");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was killed"
    );
    // (With the slash: c10's processes name ".../c10/".)
    let c1_needle = format!("{}/", c1_dir.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_mentioning(&c1_needle)
        .iter()
        .any(|p| !p.contains("sleep 600"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<String> = processes_mentioning(&c1_needle)
        .into_iter()
        .filter(|p| !p.contains("sleep 600"))
        .collect();
    assert!(left.is_empty(), "c1's processes left: {left:?}");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    env.ok(&["kill", "c10", "KILL"]);
    env.ok(&["delete", "--force", "c10"]);
    env.assert_clean();
}
