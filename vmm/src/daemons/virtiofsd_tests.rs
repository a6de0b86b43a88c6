use husk_vmm_contract::config::CachePolicy;

use super::*;
use crate::daemons::DaemonError;
use std::os::unix::fs::PermissionsExt;

fn strs(a: &[OsString]) -> Vec<&str> {
    a.iter().map(|s| s.to_str().unwrap()).collect()
}

#[test]
fn args() {
    let share = ShareConfig {
        tag: "rootfs".into(),
        host_dir: "/b/rootfs".into(),
        cache: CachePolicy::Auto,
        readonly: true,
        writeback: false,
        threads: None,
    };
    let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), VirtiofsdSandbox::Chroot);
    assert_eq!(
        strs(&a),
        [
            "--socket-path",
            "/s/fs.sock",
            "--shared-dir",
            "/b/rootfs",
            "--sandbox",
            "chroot",
            "--cache",
            "auto",
            "--modcaps=-mknod:-fsetid:-setfcap",
            "--readonly"
        ]
    );
    let cfg = VmConfig::new("/k", "/s");
    let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), cfg.virtiofsd_sandbox);
    let a = strs(&a);
    assert!(
        a.windows(2).any(|w| w == ["--sandbox", "namespace"]),
        "{a:?}"
    );
    for forbidden in [
        "--xattr",
        "--posix-acl",
        "--security-label",
        "--killpriv-v2",
    ] {
        assert!(!a.iter().any(|s| s.starts_with(forbidden)), "{a:?}");
    }
}

#[test]
fn writeback_and_threads_reach_virtiofsd_and_a_read_only_share_gets_no_writeback() {
    let mut share: ShareConfig = "data=/d".parse().unwrap();
    share.cache = "always".parse().unwrap();
    share.writeback = true;
    share.threads = Some(4);
    let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), VirtiofsdSandbox::Namespace);
    let a = strs(&a);
    assert!(a.windows(2).any(|w| w == ["--cache", "always"]), "{a:?}");
    assert!(!a.contains(&"--allow-mmap"), "{a:?}");
    assert!(a.contains(&"--writeback"), "{a:?}");
    assert!(a.contains(&"--thread-pool-size=4"), "{a:?}");
    share.readonly = true;
    share.threads = None;
    let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), VirtiofsdSandbox::Namespace);
    let a = strs(&a);
    assert!(!a.contains(&"--writeback"), "{a:?}");
    assert!(
        !a.iter().any(|s| s.starts_with("--thread-pool-size")),
        "{a:?}"
    );
    assert!("sometimes".parse::<CachePolicy>().is_err());
    // The default: data as direct I/O, shared mappings still allowed.
    let share: ShareConfig = "rootfs=/r".parse().unwrap();
    let a = virtiofsd_args(&share, Path::new("/s/fs.sock"), VirtiofsdSandbox::Namespace);
    let a = strs(&a);
    assert!(a.windows(2).any(|w| w == ["--cache", "never"]), "{a:?}");
    assert!(a.contains(&"--allow-mmap"), "{a:?}");
}

/// A stand-in for virtiofsd that cannot set up `--sandbox namespace` (as on
/// a host without the privileges for it) and serves its socket otherwise;
/// it records its arguments in `args` next to itself.
const FAKE_VIRTIOFSD: &str = include_str!("../../tests/fixtures/fake-virtiofsd.sh");

#[test]
fn a_failing_namespace_sandbox_fails_the_start_unless_weaker_is_chosen() {
    if std::process::Command::new("python3")
        .arg("-c")
        .arg("")
        .status()
        .map_or(true, |s| !s.success())
    {
        husk_test_support::skip("the fake virtiofsd needs python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-virtiofsd");
    std::fs::write(&fake, FAKE_VIRTIOFSD).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host_dir = dir.path().join("share");
    std::fs::create_dir(&host_dir).unwrap();
    let mut cfg = VmConfig::new(dir.path().join("k"), dir.path().join("state"));
    cfg.binaries.virtiofsd = Some(fake.clone());
    cfg.shares.push(ShareConfig {
        tag: "rootfs".into(),
        host_dir,
        cache: CachePolicy::Auto,
        readonly: false,
        writeback: false,
        threads: None,
    });
    cfg.ensure_state_dir().unwrap();
    let program = crate::binaries::locate("virtiofsd", cfg.binaries.virtiofsd.as_deref()).unwrap();
    let share = cfg.shares[0].clone();

    let err = start_virtiofsd(&program, &cfg, &share).unwrap_err();
    assert!(matches!(err, DaemonError::Sandbox { .. }), "{err:?}");
    let chain = crate::monitor::error_chain(&err);
    assert!(chain.contains("--sandbox namespace"), "{chain}");
    assert!(chain.contains("HUSK_VIRTIOFSD_SANDBOX"), "{chain}");
    assert!(
        chain.contains("Error entering sandbox: Unshare(EPERM)"),
        "the reason is missing: {chain}"
    );
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(!args.contains("chroot") && !args.contains("none"), "{args}");

    cfg.virtiofsd_sandbox = VirtiofsdSandbox::Chroot;
    let mut d = start_virtiofsd(&program, &cfg, &share).unwrap();
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert!(args.contains("--sandbox chroot"), "{args}");
    assert!(args.contains("--modcaps=-mknod:-fsetid:-setfcap"), "{args}");
    d.stop(std::time::Duration::from_secs(2));
}
