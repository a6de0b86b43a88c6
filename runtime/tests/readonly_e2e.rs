//! End to end: a guest root that tries to write what the spec made
//! read-only (the class of Kata's CVE-2020-28914). It remounts its
//! read-only volume and root read-write inside the guest, mounts the
//! virtio-fs share a second time, and writes everywhere; the host's files
//! must not change. Skips with its reason where no guest can run.

mod common;
use husk_test_support::require;

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

/// Lazily unmounts its path when dropped, also when a test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// `husk run` of bundle `b` as `id`, whose script ends with `echo done`:
/// its stdout, logged, once it succeeded and said done.
fn run_to_done(env: &Env, b: &std::path::Path, id: &str) -> String {
    let out = env.run(&["run", "--bundle", b.to_str().unwrap(), id]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("guest said:\n{stdout}");
    assert!(
        out.status.success() && stdout.contains("done"),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn guest_root_cannot_write_readonly_volumes_or_root_on_the_host() {
    require!(common::guest_ready());
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
    let stdout = run_to_done(&env, &b, "ro1");
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

/// A host volume with a tmpfs mounted inside it, bound three ways: as on
/// runc, `rbind` + `ro` makes only the volume read-only (the submount is
/// its own mount and stays writable, and what is written there lands in
/// the host's tmpfs), `rbind` + `rro` makes both read-only and `rnoexec`
/// reaches the submount, and a plain `bind` leaves the submount out.
#[test]
fn host_submounts_are_separate_guest_mounts_and_recursive_options_reach_them() {
    require!(common::guest_ready());
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    let sub = vol.join("sub");
    fs::create_dir_all(&sub).unwrap();
    fs::write(sub.join("under"), b"hidden by the tmpfs\n").unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    fs::write(sub.join("in-tmpfs"), b"tmpfs\n").unwrap();
    let unmount = Unmount(sub.clone());
    const SCRIPT: &str = r#"
for d in /plain /rec; do
  touch $d/top 2>/dev/null && echo "$d/top=rw" || echo "$d/top=ro"
  echo guest > $d/sub/$(basename $d) 2>/dev/null && echo "$d/sub=rw" || echo "$d/sub=ro"
done
ls /bind/sub
grep -E ' /(plain|rec|bind)(/sub)? ' /proc/self/mountinfo
echo done
"#;
    let b = env.bundle("b", &[], &["true"]);
    env.edit_config(&b, |c| {
        c["process"]["args"] = serde_json::json!(["sh", "-c", SCRIPT]);
        let mounts = c["mounts"].as_array_mut().unwrap();
        for (dest, opts) in [
            ("/plain", serde_json::json!(["rbind", "ro"])),
            ("/rec", serde_json::json!(["rbind", "rro", "rnoexec"])),
            ("/bind", serde_json::json!(["bind"])),
        ] {
            mounts.push(serde_json::json!(
                {"destination": dest, "type": "bind", "source": vol, "options": opts}));
        }
    });
    let stdout = run_to_done(&env, &b, "sub1");
    let in_tmpfs = fs::read(sub.join("plain"));
    let rec_written = sub.join("rec").exists();
    drop(unmount);
    for want in [
        "/plain/top=ro",
        "/plain/sub=rw",
        "/rec/top=ro",
        "/rec/sub=ro",
    ] {
        assert!(stdout.lines().any(|l| l == want), "{want}: {stdout}");
    }
    assert_eq!(
        in_tmpfs.unwrap(),
        b"guest\n",
        "written into the host's tmpfs"
    );
    assert!(!rec_written && !vol.join("top").exists());
    // The plain bind shows the directory under the tmpfs, not the tmpfs.
    assert!(stdout.lines().any(|l| l == "under"), "{stdout}");
    assert!(!stdout.lines().any(|l| l == "in-tmpfs"), "{stdout}");
    // The mount on top at `point` (mountinfo lists it last): the guest
    // kernel may also have automounted the submount virtiofsd announces.
    let opts = |point: &str| -> String {
        stdout
            .lines()
            .rfind(|l| l.split_whitespace().nth(4) == Some(point))
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap_or_else(|| panic!("{point} is not a mount in the guest: {stdout}"))
            .to_owned()
    };
    assert!(opts("/plain/sub").starts_with("rw"), "{stdout}");
    assert!(opts("/rec/sub").contains("noexec"), "{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/bind/sub")),
        "{stdout}"
    );
    env.assert_clean();
}
