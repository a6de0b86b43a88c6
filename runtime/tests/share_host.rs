//! The host side of the virtio-fs share, as virtiofsd (root) sees it: what
//! the spec makes read-only is read-only on the host mount, every bind is
//! nosuid and nodev, mount destinations for a read-only rootfs are made
//! inside it, and the shim attaches a container's tree into a live,
//! guest-writable share without following what the guest planted there.
//! Needs root (bind mounts); each test skips with its reason otherwise.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use husk_runtime::bundle::{prepare_share, unmount_all, Bundle};
use husk_runtime::shim::vm::{make_shared_mount, mounts_under, PodVm};
use husk_test_support::{require, root};

/// A bundle in `dir` with a small rootfs and `mounts`.
fn bundle(dir: &Path, readonly: bool, mounts: serde_json::Value) -> Bundle {
    fs::create_dir_all(dir.join("rootfs/etc")).unwrap();
    fs::write(dir.join("rootfs/etc/os-release"), b"image\n").unwrap();
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": readonly},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": mounts,
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    Bundle::load(dir).unwrap()
}

fn bind(src: &Path, dst: &str, opts: &[&str]) -> serde_json::Value {
    serde_json::json!({"destination": dst, "type": "bind", "source": src, "options": opts})
}

/// The mountinfo line whose mount point is exactly `point`, last one wins
/// (the one on top).
fn mount_line(info: &str, point: &Path) -> Option<String> {
    let p = point.to_str().unwrap();
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(p))
        .map(str::to_owned)
}

fn mount_options(info: &str, point: &Path) -> Vec<String> {
    let l = mount_line(info, point).unwrap_or_else(|| panic!("{} not mounted", point.display()));
    l.split(' ')
        .nth(5)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn self_mountinfo() -> String {
    fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn mounts_mentioning(needle: &Path) -> Vec<String> {
    let n = needle.to_str().unwrap();
    self_mountinfo()
        .lines()
        .filter(|l| l.contains(n))
        .map(str::to_owned)
        .collect()
}

fn errno_of_write(p: &Path) -> Option<i32> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(p)
        .err()
        .and_then(|e| e.raw_os_error())
}

#[test]
fn readonly_mounts_and_root_are_readonly_on_the_host_and_every_bind_is_nosuid_nodev() {
    require!(root(), "bind mounts and mount_setattr");
    let t = tempfile::tempdir().unwrap();
    let (ro, rw, ro_file, rw_last) = (
        t.path().join("ro"),
        t.path().join("rw"),
        t.path().join("ro-file"),
        t.path().join("rw-last"),
    );
    for d in [&ro, &rw, &rw_last] {
        fs::create_dir(d).unwrap();
    }
    fs::write(&ro_file, b"host\n").unwrap();
    fs::write(ro.join("data"), b"host\n").unwrap();
    // A mount inside a volume: as on runc, `ro` makes only the volume's
    // own mount read-only, `rro` its submounts too, and a plain `bind`
    // leaves them out.
    fs::create_dir(ro.join("sub")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &ro.join("sub"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let b = bundle(
        &t.path().join("b"),
        true,
        serde_json::json!([
            bind(&ro, "/ro", &["rbind", "ro"]),
            bind(&rw, "/rw", &["rbind", "rw"]),
            bind(&ro_file, "/etc/ro-file", &["bind", "ro"]),
            bind(&rw_last, "/rw-last", &["rbind", "ro", "rw"]),
            bind(&ro, "/rro", &["rbind", "rro", "rnoexec"]),
            bind(&ro, "/plain", &["bind"]),
        ]),
    );
    let share = t.path().join("share");
    let (spec, mounts) = prepare_share(&b, &share).unwrap();
    let result = std::panic::catch_unwind(|| {
        let erofs = Some(libc::EROFS);
        // What virtiofsd (root, CAP_DAC_OVERRIDE) would do for the guest.
        assert_eq!(errno_of_write(&share.join("rootfs/new")), erofs);
        assert_eq!(errno_of_write(&share.join("rootfs/etc/os-release")), erofs);
        assert_eq!(errno_of_write(&share.join("mounts/0/data")), erofs);
        assert_eq!(errno_of_write(&share.join("mounts/0/sub/f")), None);
        assert_eq!(errno_of_write(&share.join("mounts/4/sub/g")), erofs);
        assert!(share.join("mounts/4/sub/f").is_file(), "the same tmpfs");
        assert!(!share.join("mounts/5/sub/f").exists(), "bind: no submount");
        assert_eq!(
            fs::create_dir(share.join("mounts/0/d"))
                .unwrap_err()
                .raw_os_error(),
            erofs
        );
        assert_eq!(errno_of_write(&share.join("mounts/2")), erofs);
        // The share's own directory cannot be written either.
        assert_eq!(errno_of_write(&share.join("planted")), erofs);
        fs::write(share.join("mounts/1/new"), b"guest\n").unwrap();
        fs::write(share.join("mounts/3/new"), b"guest\n").unwrap();
        assert_eq!(fs::read(rw.join("new")).unwrap(), b"guest\n");
        // Only the share's copy is read-only: the host's own paths are not.
        fs::write(ro.join("host-side"), b"ok").unwrap();
        fs::write(ro.join("sub/host-side"), b"ok").unwrap();
        fs::write(b.rootfs.join("host-side"), b"ok").unwrap();

        let info = self_mountinfo();
        for (point, readonly) in [
            ("rootfs", true),
            ("mounts/0", true),
            ("mounts/0/sub", false),
            ("mounts/1", false),
            ("mounts/2", true),
            ("mounts/3", false),
            ("mounts/4", true),
            ("mounts/4/sub", true),
            ("mounts/5", false),
        ] {
            let opts = mount_options(&info, &share.join(point));
            assert!(
                opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"),
                "{point}: {opts:?}"
            );
            assert_eq!(opts[0] == "ro", readonly, "{point}: {opts:?}");
        }
        assert!(mount_line(&info, &share.join("mounts/5/sub")).is_none());
        assert_eq!(fs::read(ro.join("data")).unwrap(), b"host\n");
        assert_eq!(fs::read(&ro_file).unwrap(), b"host\n");

        // The guest gets each submount of an `rbind` as a mount of its own,
        // right after its parent, with the parent's recursive options.
        let guest: Vec<(String, String, Vec<String>)> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.source().clone().unwrap_or_default().display().to_string(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect();
        let dests: Vec<&str> = guest.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            dests,
            [
                "/ro",
                "/ro/sub",
                "/rw",
                "/etc/ro-file",
                "/rw-last",
                "/rro",
                "/rro/sub",
                "/plain"
            ],
            "{guest:?}"
        );
        let share_root = husk_protocol::share_mount_point(husk_runtime::bundle::SHARE_TAG);
        assert_eq!(
            guest[1].1,
            format!("{share_root}/mounts/0/sub"),
            "{guest:?}"
        );
        assert_eq!(guest[1].2, ["bind"], "{guest:?}");
        assert_eq!(
            guest[6].1,
            format!("{share_root}/mounts/4/sub"),
            "{guest:?}"
        );
        assert_eq!(guest[6].2, ["bind", "ro", "rro", "rnoexec"], "{guest:?}");
    });
    unmount_all(&mounts.points).unwrap();
    let _ = nix::mount::umount2(&ro.join("sub"), nix::mount::MntFlags::MNT_DETACH);
    assert!(
        mounts_mentioning(&share).is_empty(),
        "{:?}",
        mounts_mentioning(&share)
    );
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn a_readonly_rootfs_gets_its_missing_mount_destinations_inside_it() {
    require!(root(), "bind mounts and mount_setattr");
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let secrets = t.path().join("secrets");
    fs::create_dir(&secrets).unwrap();
    let hosts = t.path().join("hosts");
    fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
    let dir = t.path().join("b");
    // The image's symlinks point out of the rootfs, absolutely and by `..`.
    fs::create_dir_all(dir.join("rootfs/var")).unwrap();
    symlink(&outside, dir.join("rootfs/srv")).unwrap();
    symlink("../../../..", dir.join("rootfs/var/run")).unwrap();
    let b = bundle(
        &dir,
        true,
        serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            bind(&hosts, "/dev/termination-log", &["rbind", "rw"]),
            bind(&secrets, "/var/run/secrets/kubernetes.io/serviceaccount", &["rbind", "ro"]),
            bind(&hosts, "/srv/hosts", &["rbind", "ro"]),
        ]),
    );
    let share = t.path().join("share");
    let (_spec, mounts) = prepare_share(&b, &share).unwrap();
    unmount_all(&mounts.points).unwrap();
    let r = &b.rootfs;
    assert!(r.join("proc").is_dir() && r.join("dev").is_dir());
    // Made by the agent on the /dev tmpfs, not in the image.
    assert!(!r.join("dev/termination-log").exists());
    // `var/run -> ../../../..` resolves to the rootfs's own root.
    assert!(r.join("secrets/kubernetes.io/serviceaccount").is_dir());
    let inner = r.join(outside.strip_prefix("/").unwrap());
    assert!(inner.join("hosts").is_file());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
    assert!(!t.path().join("secrets/kubernetes.io").exists());
    assert!(mounts_mentioning(&share).is_empty());
}

/// A process in a mount namespace made the way virtiofsd's sandbox makes
/// its own: a recursive slave copy of the host's, the share bound on itself.
struct Virtiofsd(Child);

impl Virtiofsd {
    fn start(share: &Path) -> Option<Virtiofsd> {
        let script = format!(
            "mount --rbind '{0}' '{0}' && echo ready && exec sleep 120",
            share.display()
        );
        let mut c = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .ok()?;
        if line.trim() != "ready" {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        Some(Virtiofsd(c))
    }

    fn mountinfo(&self) -> String {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.0.id())).unwrap()
    }

    /// Writes `path` from inside the namespace; true when that worked.
    fn write(&self, path: &Path) -> bool {
        Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.0.id()))
            .args(["sh", "-c", &format!("echo x > '{}'", path.display())])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_vm(dir: &Path) -> PodVm {
    PodVm {
        dir: dir.to_owned(),
        share: dir.join("share"),
        addr: husk_protocol::client::AgentAddr::Unix(dir.join("agent.sock")),
        monitor_pid: 0,
        size: husk_runtime::sizing::size_vm(
            &serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap(),
            |_| None,
        )
        .unwrap(),
        network: None,
        port_forward: None,
        host_cgroup: None,
    }
}

#[test]
fn the_shim_attaches_by_fd_into_a_live_share_and_detaches_once() {
    require!(root(), "bind mounts and mount_setattr");
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("vm");
    fs::create_dir(&dir).unwrap();
    make_shared_mount(&dir.join("share")).unwrap();
    let vm = pod_vm(&dir);
    let result = std::panic::catch_unwind(|| shim_attach_checks(t.path(), &vm));
    for p in mounts_under(&dir) {
        let _ = unmount_all(&[p]);
    }
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn shim_attach_checks(tmp: &Path, vm: &PodVm) {
    let victim = tmp.join("victim");
    fs::create_dir(&victim).unwrap();
    let vol = tmp.join("vol");
    fs::create_dir(&vol).unwrap();
    fs::write(vol.join("v"), b"host\n").unwrap();
    let b = bundle(
        &tmp.join("b"),
        true,
        serde_json::json!([bind(&vol, "/vol", &["rbind", "ro"])]),
    );
    let ns = Virtiofsd::start(&vm.share);
    if ns.is_none() {
        eprintln!("note: cannot make a virtiofsd-like mount namespace (unshare, mount)");
    }
    let no_staging = || {
        let s = vm.dir.join("staging");
        assert!(
            !s.exists() || fs::read_dir(&s).unwrap().count() == 0,
            "staging left: {:?}",
            fs::read_dir(&s).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
    };

    // The guest planted `share/<id>` -> a host directory.
    symlink(&victim, vm.share.join("c1")).unwrap();
    let e = vm.share_bundle(&b, "c1").unwrap_err();
    assert!(
        husk_runtime::error_chain(&e).contains("Not a directory"),
        "{e}"
    );
    // ... or a directory holding `rootfs` -> a host directory.
    fs::create_dir(vm.share.join("c2")).unwrap();
    symlink(&victim, vm.share.join("c2/rootfs")).unwrap();
    vm.share_bundle(&b, "c2").unwrap_err();
    assert!(
        mounts_mentioning(&victim).is_empty(),
        "{:?}",
        mounts_mentioning(&victim)
    );
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 0);
    assert!(fs::symlink_metadata(vm.share.join("c1"))
        .unwrap()
        .is_symlink());
    assert_eq!(mounts_under(&vm.share), std::slice::from_ref(&vm.share));
    no_staging();

    // An empty directory the guest made is used; a missing one is made.
    fs::create_dir(vm.share.join("c3")).unwrap();
    let (spec3, m3) = vm.share_bundle(&b, "c3").unwrap();
    let (_spec4, m4) = vm.share_bundle(&b, "c4").unwrap();
    no_staging();
    assert_eq!(m4.points, [vm.share.join("c4")]);
    assert_eq!(
        spec3.root().as_ref().unwrap().path(),
        Path::new("/run/husk/shares/husk/c3/rootfs")
    );
    let c4 = vm.share.join("c4");
    assert_eq!(
        fs::read(c4.join("rootfs/etc/os-release")).unwrap(),
        b"image\n"
    );
    assert_eq!(fs::read(c4.join("mounts/0/v")).unwrap(), b"host\n");
    for p in ["planted", "rootfs/x", "mounts/0/x"] {
        assert_eq!(errno_of_write(&c4.join(p)), Some(libc::EROFS), "{p}");
    }
    if let Some(ns) = &ns {
        // Attached after virtiofsd started, and still seen (read-only) there.
        let info = ns.mountinfo();
        for p in ["rootfs", "mounts/0"] {
            let opts = mount_options(&info, &c4.join(p));
            assert!(
                opts[0] == "ro" && opts.contains(&"nosuid".to_owned()),
                "{p}: {opts:?}"
            );
        }
        assert!(!ns.write(&c4.join("rootfs/x")));
        assert!(!ns.write(&c4.join("mounts/0/x")));
    }

    vm.unshare_bundle("c4", &m4.points);
    vm.unshare_bundle("c3", &m3.points);
    assert!(!c4.exists() && !vm.share.join("c3").exists());
    assert!(mounts_mentioning(&vm.share.join("c3")).is_empty());
    assert!(mounts_mentioning(&c4).is_empty());
    if let Some(ns) = &ns {
        let left: Vec<_> = ns
            .mountinfo()
            .lines()
            .filter(|l| l.contains(c4.to_str().unwrap()) || l.contains("/share/c3"))
            .map(str::to_owned)
            .collect();
        assert!(left.is_empty(), "left in the virtiofsd namespace: {left:?}");
    }
    assert_eq!(fs::read(vol.join("v")).unwrap(), b"host\n");
    assert_eq!(fs::read_dir(&vol).unwrap().count(), 1);
    no_staging();
}
