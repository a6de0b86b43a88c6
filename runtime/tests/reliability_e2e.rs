//! What a careless operator does to husk on the host, through the real
//! CLI with a real guest: nothing of theirs may be lost, nothing of husk's
//! may be left.

mod common;
use common::*;

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
    skip_without_guest!();
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
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = create.kill();
        let _ = create.wait();
        let out = env.run(&["delete", "--force", &id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("does not exist"),
            "delete after create killed at {delay_ms} ms: {err}"
        );
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
