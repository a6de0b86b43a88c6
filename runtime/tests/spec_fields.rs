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

/// The host's CPU numbers: its highest online CPU + 1.
fn host_cpus() -> u32 {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let last = online.trim().rsplit([',', '-']).next().unwrap();
    last.parse::<u32>().unwrap() + 1
}

/// The guest's `linux.resources.cpu.cpus` and `.mems` after the checks.
fn guest_cpuset(b: &husk_runtime::bundle::Bundle) -> (Option<String>, Option<String>) {
    let cpu = b
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .and_then(|r| r.cpu().clone())
        .unwrap_or_default();
    (cpu.cpus().clone(), cpu.mems().clone())
}

/// A cpuset naming the host's highest CPU gets a VM with that vCPU (it
/// used to get one vCPU, and the guest refused `cpuset.cpus` with
/// `Numerical result out of range`); with fewer vCPUs allowed, the
/// container gets the vCPUs the VM has; a CPU the host lacks is refused,
/// naming the field.
#[test]
fn cpuset_sizes_the_vm_to_cover_it() {
    let n = host_cpus();
    let top = n - 1;
    let mut c = base();
    c["linux"]["resources"] = json!({"cpu": {"cpus": top.to_string(), "mems": "0"}});
    let (b, size) = check(&c, &[("HUSK_MAX_VCPUS", "32")]).unwrap();
    assert_eq!(size.vcpus, n.min(32));
    let want = if n <= 32 { top.to_string() } else { "0".into() };
    assert_eq!(guest_cpuset(&b), (Some(want), Some("0".into())));
    if n >= 2 {
        // The operator allows one vCPU: the container runs on it.
        let (b, size) = check(&c, &[("HUSK_MAX_VCPUS", "1")]).unwrap();
        assert_eq!(size.vcpus, 1);
        assert_eq!(guest_cpuset(&b).0.as_deref(), Some("0"));
    }
    c["linux"]["resources"]["cpu"]["cpus"] = json!(format!("0,{n}"));
    let e = check(&c, &[]).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("linux.resources.cpu.cpus \"0,{n}\": names CPU {n}, and the host has CPUs 0-{top}")
    );
    // A node the host lacks is refused too (the guest's one node is 0).
    c["linux"]["resources"]["cpu"] = json!({"mems": "0-64"});
    let e = check(&c, &[]).unwrap_err().to_string();
    assert!(
        e.starts_with("linux.resources.cpu.mems \"0-64\": names NUMA node"),
        "{e}"
    );
}
