//! Spec fields a VM cannot honour the way runc does. None is dropped
//! silently: each is either refused with a message naming the field, or,
//! where the callers that matter set it by default, accepted and logged
//! with a warning naming the field and its value (README, "Fields husk
//! refuses or does not apply").
//!
//! - Refused ([`check_seccomp`], from [`crate::bundle::Bundle::load`]):
//!   seccomp user notification (`SCMP_ACT_NOTIFY`, `listenerPath`). The
//!   filter runs in the guest kernel; its notifications cannot reach a
//!   listener on the host.
//! - Not applied, with a warning ([`ignored`], [`ignored_in_process`]):
//!   `process.apparmorProfile`, `process.selinuxLabel`,
//!   `linux.mountLabel`. The guest kernel has no AppArmor or SELinux, and
//!   refusing them would break every pod on an AppArmor or SELinux host:
//!   containerd's CRI sets `apparmorProfile` (`cri-containerd.apparmor.d`)
//!   whenever the host has AppArmor, docker sets `docker-default`, CRI-O
//!   and podman set SELinux labels on SELinux hosts. Kata Containers
//!   leaves them out of its guest the same way. The container is confined
//!   by its VM instead.
//! - Not run, with a warning ([`host_hooks`]): the host-side hooks under
//!   the containerd shim, which does not run them yet.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, Process, Spec};

/// Why seccomp user notification is refused.
const NOTIFY: &str = "SCMP_ACT_NOTIFY is not supported: the seccomp filter runs in the \
                      guest kernel, whose notifications cannot reach a listener on the host";

/// Why the LSM labels are not applied.
const NO_LSM: &str = "not applied: the guest kernel has no AppArmor or SELinux; \
                      the container is confined by its VM instead";

/// Refuses seccomp user notification: `SCMP_ACT_NOTIFY` as the default
/// action or a rule's action, or a `listenerPath`. The error names the
/// field.
pub fn check_seccomp(sc: &LinuxSeccomp) -> Result<(), String> {
    if sc.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(format!("linux.seccomp.defaultAction: {NOTIFY}"));
    }
    for (i, rule) in sc.syscalls().iter().flatten().enumerate() {
        if rule.action() == LinuxSeccompAction::ScmpActNotify {
            return Err(format!("linux.seccomp.syscalls[{i}].action: {NOTIFY}"));
        }
    }
    if let Some(p) = sc
        .listener_path()
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        return Err(format!(
            "linux.seccomp.listenerPath {}: seccomp user notification is not supported (the \
             filter runs in the guest kernel, whose notifications cannot reach a listener on \
             the host)",
            p.display()
        ));
    }
    Ok(())
}

/// A field husk accepts but does not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The field, as a path in config.json (`process.apparmorProfile`).
    pub field: String,
    /// Its value.
    pub value: String,
    /// Why it is not applied.
    pub why: &'static str,
}

/// The fields of `spec` husk accepts and does not apply.
pub fn ignored(spec: &Spec) -> Vec<Ignored> {
    let mut out = spec
        .process()
        .as_ref()
        .map(|p| ignored_in_process(p, "process."))
        .unwrap_or_default();
    if let Some(label) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.mount_label().as_deref())
        .filter(|l| !l.is_empty())
    {
        out.push(Ignored {
            field: "linux.mountLabel".into(),
            value: label.to_owned(),
            why: NO_LSM,
        });
    }
    out
}

/// The fields of process `p` husk accepts and does not apply; `prefix`
/// is where the process is (`process.` in a config.json, empty in an
/// exec's process.json).
pub fn ignored_in_process(p: &Process, prefix: &str) -> Vec<Ignored> {
    [
        ("apparmorProfile", p.apparmor_profile()),
        ("selinuxLabel", p.selinux_label()),
    ]
    .into_iter()
    .filter_map(|(name, v)| {
        v.as_deref().filter(|v| !v.is_empty()).map(|v| Ignored {
            field: format!("{prefix}{name}"),
            value: v.to_owned(),
            why: NO_LSM,
        })
    })
    .collect()
}

/// The hooks the shim does not run: those that run on the host
/// (prestart, createRuntime, poststart, poststop; the `husk` CLI runs
/// them). createContainer and startContainer run in the guest either way.
pub fn host_hooks(spec: &Spec) -> Vec<Ignored> {
    let Some(h) = spec.hooks() else {
        return Vec::new();
    };
    #[allow(deprecated)]
    let lists = [
        ("prestart", h.prestart()),
        ("createRuntime", h.create_runtime()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ];
    lists
        .into_iter()
        .filter_map(|(stage, list)| {
            let paths: Vec<String> = list
                .iter()
                .flatten()
                .map(|h| h.path().display().to_string())
                .collect();
            (!paths.is_empty()).then(|| Ignored {
                field: format!("hooks.{stage}"),
                value: paths.join(", "),
                why: "not run: containerd-shim-husk-v2 runs no host-side hooks yet \
                      (the husk CLI does; createContainer and startContainer hooks run \
                      in the guest)",
            })
        })
        .collect()
}

/// Logs each of `fields` as a warning; `container` says whose they are
/// (an id, or a bundle before the container has one).
pub fn warn_ignored(fields: &[Ignored], container: &str) {
    for f in fields {
        tracing::warn!(
            container,
            field = %f.field,
            value = %f.value,
            "{} {:?} is {}",
            f.field,
            f.value,
            f.why
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (field, value) of each finding, for comparing.
    fn pairs(found: &[Ignored]) -> Vec<(&str, &str)> {
        found
            .iter()
            .map(|i| (i.field.as_str(), i.value.as_str()))
            .collect()
    }

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn seccomp_notify_and_listener_are_refused_naming_the_field() {
        let sc = |v: serde_json::Value| -> LinuxSeccomp { serde_json::from_value(v).unwrap() };
        let e = check_seccomp(&sc(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"})))
            .unwrap_err();
        assert!(
            e.starts_with("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY"),
            "{e}"
        );
        let e = check_seccomp(&sc(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]})))
        .unwrap_err();
        assert!(
            e.starts_with("linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY"),
            "{e}"
        );
        let e = check_seccomp(&sc(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/agent.sock"})))
        .unwrap_err();
        assert!(
            e.starts_with("linux.seccomp.listenerPath /run/agent.sock: "),
            "{e}"
        );
        check_seccomp(&sc(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]})))
        .unwrap();
    }

    #[test]
    fn lsm_labels_are_listed_with_their_values() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0},
                "apparmorProfile": "cri-containerd.apparmor.d",
                "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"},
            "linux": {"mountLabel": "system_u:object_r:container_file_t:s0:c1,c2"}}));
        let found = ignored(&s);
        let fields = pairs(&found);
        assert_eq!(
            fields,
            [
                ("process.apparmorProfile", "cri-containerd.apparmor.d"),
                (
                    "process.selinuxLabel",
                    "system_u:system_r:container_t:s0:c1,c2"
                ),
                (
                    "linux.mountLabel",
                    "system_u:object_r:container_file_t:s0:c1,c2"
                ),
            ]
        );
        assert!(host_hooks(&s).is_empty());
        let hooked = spec(serde_json::json!({"ociVersion": "1.0.2", "hooks": {
            "prestart": [{"path": "/usr/bin/a"}, {"path": "/usr/bin/b"}],
            "createContainer": [{"path": "/c"}],
            "poststop": [{"path": "/usr/bin/d"}]}}));
        let found = host_hooks(&hooked);
        let fields = pairs(&found);
        assert_eq!(
            fields,
            [
                ("hooks.prestart", "/usr/bin/a, /usr/bin/b"),
                ("hooks.poststop", "/usr/bin/d")
            ]
        );
        let none = spec(serde_json::json!({"ociVersion": "1.0.2",
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "apparmorProfile": ""}}));
        assert!(ignored(&none).is_empty());
    }
}
