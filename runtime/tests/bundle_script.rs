//! `tests/make-bundle.sh` makes bundles whose config.json oci-spec accepts,
//! with the args and flags asked for, and a rootfs with a working /bin/sh.

use std::path::{Path, PathBuf};
use std::process::Command;

use husk_test_support::require;
use oci_spec::runtime::Spec;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn make_bundle(dir: &Path, flags: &[&str], args: &[&str]) {
    let out = Command::new(repo_root().join("tests/make-bundle.sh"))
        .args(flags)
        .arg(dir)
        .args(args)
        .output()
        .expect("run make-bundle.sh");
    assert!(
        out.status.success(),
        "make-bundle.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn busybox() -> Result<(), String> {
    if Path::new("/bin/busybox").exists() {
        return Ok(());
    }
    Err("/bin/busybox missing (apt-get install busybox-static; scripts/setup.sh does)".into())
}

#[test]
fn bundle_config_parses_with_oci_spec() {
    require!(busybox());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    make_bundle(&dir, &[], &["echo", "hello world", "it's"]);
    let spec = Spec::load(dir.join("config.json")).expect("oci-spec parses config.json");
    let process = spec.process().as_ref().expect("process");
    assert_eq!(
        process.args().as_ref().unwrap(),
        &["echo", "hello world", "it's"]
    );
    assert_eq!(process.terminal(), Some(false));
    let root = spec.root().as_ref().expect("root");
    assert_eq!(root.path(), Path::new("rootfs"));
    assert_eq!(root.readonly(), Some(false));
    assert!(
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .len()
            >= 5
    );
    let sh = dir.join("rootfs/bin/sh");
    assert!(sh.symlink_metadata().is_ok(), "no /bin/sh in rootfs");
    // The shell in there runs: chroot needs root.
    require!(
        husk_test_support::root(),
        "running the rootfs's /bin/sh (chroot)"
    );
    let out = Command::new("chroot")
        .arg(dir.join("rootfs"))
        .args(["/bin/sh", "-c", "echo ok"])
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "chroot /bin/sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ok\n");
}

#[test]
fn bundle_flags_set_readonly_and_terminal() {
    require!(busybox());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    make_bundle(&dir, &["--readonly", "--tty"], &[]);
    let spec = Spec::load(dir.join("config.json")).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.terminal(), Some(true));
    assert_eq!(process.args().as_ref().unwrap(), &["sh"]);
}

#[test]
fn bundle_script_refuses_an_existing_bundle() {
    require!(busybox());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    make_bundle(&dir, &[], &["true"]);
    let out = Command::new(repo_root().join("tests/make-bundle.sh"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a bundle"));
}
