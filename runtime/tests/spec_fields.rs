//! What `husk create` does with spec fields a VM cannot honour as runc
//! does, through the checks it makes before it touches the host
//! (`ops::check_create`): no VM, no root. Each field is refused with a
//! message naming it, or accepted, logged as a warning naming it, and
//! documented; none is dropped silently.

use std::io::Write;
use std::sync::{Arc, Mutex};

use husk_runtime::ops::{check_create, CreateOptions, OpError};
use serde_json::{json, Value};

/// `husk spec`'s config, not a terminal.
fn base() -> Value {
    let mut v: Value = serde_json::from_str(husk_runtime::ops::default_spec()).unwrap();
    v["process"]["terminal"] = json!(false);
    v
}

/// Writes `config` into a fresh bundle and runs the create checks on it,
/// with the operator's environment `env`.
fn check(
    config: &Value,
    env: &[(&str, &str)],
) -> Result<(husk_runtime::bundle::Bundle, husk_runtime::sizing::VmSize), OpError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let opts = CreateOptions {
        bundle: dir.path().to_owned(),
        ..Default::default()
    };
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    check_create(&opts, |k| {
        env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
    })
}

/// A log sink for one test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Runs `f` with warnings (and worse) logged to a buffer; returns its
/// result and the log.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let out = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let log = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    (r, log)
}

/// containerd's CRI sets `apparmorProfile` on every container of an
/// AppArmor host, CRI-O and podman set SELinux labels on SELinux hosts:
/// refusing them would break those hosts' pods. The guest kernel has
/// neither LSM, so they are accepted and each is logged as not applied,
/// naming the field and its value (it was dropped without a word).
#[test]
fn lsm_labels_are_accepted_and_logged_as_not_applied() {
    let mut c = base();
    c["process"]["apparmorProfile"] = json!("cri-containerd.apparmor.d");
    c["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0:c4,c5");
    c["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0:c4,c5");
    let (r, log) = logged(|| check(&c, &[]));
    r.expect("LSM labels do not fail a create");
    for want in [
        "process.apparmorProfile \"cri-containerd.apparmor.d\" is not applied",
        "process.selinuxLabel \"system_u:system_r:container_t:s0:c4,c5\" is not applied",
        "linux.mountLabel \"system_u:object_r:container_file_t:s0:c4,c5\" is not applied",
    ] {
        assert!(log.contains(want), "no {want:?} in the log:\n{log}");
    }
    assert!(log.contains("WARN"), "{log}");
    // Nothing set, nothing logged.
    let (r, log) = logged(|| check(&base(), &[]));
    r.unwrap();
    assert!(!log.contains("not applied"), "{log}");
}

/// Seccomp user notification is refused at create, naming the field (it
/// used to pass the host and fail in the guest, or, for `listenerPath`
/// alone, be dropped).
#[test]
fn seccomp_user_notification_is_refused_at_create() {
    let mut c = base();
    c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_NOTIFY"});
    let e = check(&c, &[]).unwrap_err().to_string();
    assert!(
        e.contains("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported"),
        "{e}"
    );
    let mut c = base();
    c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/run/seccomp-agent.sock"});
    let e = check(&c, &[]).unwrap_err().to_string();
    assert!(
        e.contains("linux.seccomp.listenerPath /run/seccomp-agent.sock: seccomp user notification is not supported"),
        "{e}"
    );
}
