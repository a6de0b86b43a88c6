//! End to end: a guest root that tries to write what the spec made
//! read-only (the class of Kata's CVE-2020-28914). It remounts its
//! read-only volume and root read-write inside the guest, mounts the
//! virtio-fs share a second time, and writes everywhere; the host's files
//! must not change. Skips with its reason where no guest can run.

mod common;

use std::fs;

use common::Env;

/// What the container runs: every attempt prints a line, so the test log
/// shows what the guest managed (the remounts do work inside the guest).
const ATTACK: &str = r#"
try() { if "$@" 2>/dev/null; then echo "ok: $*"; else echo "failed: $*"; fi; }
try mount -o remount,rw /vol
try sh -c 'echo guest > /vol/data'
try touch /vol/new
try mount -o remount,rw /
try touch /root-new
try sh -c 'echo guest > /etc/hostname'
try mkdir /dev/again
try mount -t virtiofs husk /dev/again
try touch /dev/again/share-new
for d in /dev/again/* /dev/again/*/*; do [ -d "$d" ] && try touch "$d/share-new"; done
test -d /var/run/secrets/kubernetes.io/serviceaccount && echo "ok: made destination"
test -f /dev/termination-log && echo "ok: made termination-log"
echo done
"#;

#[test]
fn guest_root_cannot_write_readonly_volumes_or_root_on_the_host() {
    skip_without_guest!();
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("data"), b"host\n").unwrap();
    let log = env.dir.path().join("termination-log");
    fs::write(&log, b"").unwrap();
    // (make-bundle.sh takes one argument a line: the script goes in here.)
    let b = env.bundle("b", &["--readonly"], &["true"]);
    env.edit_config(&b, |c| {
        c["process"]["args"] = serde_json::json!(["sh", "-c", ATTACK]);
        let caps = serde_json::json!([
            "CAP_SYS_ADMIN",
            "CAP_DAC_OVERRIDE",
            "CAP_CHOWN",
            "CAP_FOWNER",
            "CAP_KILL"
        ]);
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set] = caps.clone();
        }
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!(
            {"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "ro"]}));
        // What Kubernetes adds to a readOnlyRootFilesystem pod: a
        // destination missing in the image and a file on the /dev tmpfs.
        mounts.push(serde_json::json!(
            {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind",
             "source": vol, "options": ["rbind", "ro"]}));
        mounts.push(serde_json::json!(
            {"destination": "/dev/termination-log", "type": "bind", "source": log,
             "options": ["rbind", "rw"]}));
    });
    let rootfs = b.join("rootfs");
    let hostname = fs::read(rootfs.join("etc/hostname")).unwrap();
    let out = env.run(&["run", "--bundle", b.to_str().unwrap(), "ro1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("guest said:\n{stdout}");
    assert!(
        out.status.success() && stdout.contains("done"),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The guest's own remounts work: only the host stops the writes...
    for step in [
        "ok: mount -o remount,rw /vol",
        "ok: mount -o remount,rw /",
        "ok: mount -t virtiofs husk /dev/again",
    ] {
        assert!(stdout.contains(step), "{step}:\n{stdout}");
    }
    assert!(stdout.contains("ok: made destination"), "{stdout}");
    assert!(stdout.contains("ok: made termination-log"), "{stdout}");
    // ... and nothing on the host changed.
    assert_eq!(fs::read(vol.join("data")).unwrap(), b"host\n");
    assert!(!vol.join("new").exists());
    assert!(!rootfs.join("root-new").exists());
    for dir in [&vol, &rootfs] {
        let found = std::process::Command::new("find")
            .arg(dir)
            .args(["-name", "share-new"])
            .output()
            .unwrap();
        assert!(
            found.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
    assert_eq!(fs::read(rootfs.join("etc/hostname")).unwrap(), hostname);
    for line in stdout.lines() {
        assert!(
            !line.starts_with("ok: touch") && !line.starts_with("ok: sh -c"),
            "the guest wrote: {line}\n{stdout}"
        );
    }
    // The one thing made in the image: the missing mount destination.
    assert!(rootfs
        .join("var/run/secrets/kubernetes.io/serviceaccount")
        .is_dir());
    assert!(!rootfs.join("dev/termination-log").exists());
    env.assert_clean();
}
