//! `spec` and `features`: what husk writes and supports, without a container.

use std::collections::HashMap;

use oci_spec::runtime::{
    ApparmorBuilder, Arch, CgroupBuilder, FeaturesBuilder, LinuxFeatureBuilder, LinuxNamespaceType,
    LinuxSeccompAction, LinuxSeccompOperator, MemoryPolicyBuilder, SeccompBuilder, SelinuxBuilder,
};
use oci_spec::OciSpecError;
use serde_json::Value;

/// The default config.json `husk spec` writes (the one `runc spec` writes).
pub fn default_spec() -> &'static str {
    include_str!("../default-spec.json")
}

/// The runtime-spec features document (`husk features`). Every hook list
/// runs: the host's four, and createContainer and startContainer in the
/// guest (`agent/src/container/hooks.rs`).
pub fn features() -> Result<Value, OciSpecError> {
    let caps: Vec<String> = caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut mount_options: Vec<String> = [
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "nosymfollow",
        "private",
        "rbind",
        "relatime",
        "remount",
        "ro",
        "rprivate",
        "rshared",
        "rslave",
        "runbindable",
        "rw",
        "shared",
        "slave",
        "strictatime",
        "suid",
        "symfollow",
        "sync",
        "unbindable",
    ]
    .into_iter()
    .chain(husk_protocol::RECURSIVE_MOUNT_OPTIONS.iter().copied())
    .map(str::to_owned)
    .collect();
    mount_options.sort_unstable();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let annotations: HashMap<String, String> = [
        (
            "io.github.husk.vm",
            "every container runs in its own KVM microVM",
        ),
        (
            "husk.memory_mib",
            "guest RAM in MiB (overrides linux.resources)",
        ),
        ("husk.vcpus", "guest vCPUs"),
        (
            "husk.engine",
            "auto, builtin or qemu (operator must enable)",
        ),
        ("husk.kernel", "guest kernel path (operator must enable)"),
        (
            "husk.initramfs",
            "guest initramfs path (operator must enable)",
        ),
        (
            "husk.kernel_params",
            "extra guest kernel parameters (operator must enable)",
        ),
        (
            "husk.guest_vsock",
            "allow: the container may open AF_VSOCK sockets (operator must enable)",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    use LinuxNamespaceType as Ns;
    use LinuxSeccompAction as Act;
    use LinuxSeccompOperator as Op;
    let linux = LinuxFeatureBuilder::default()
        .memory_policy(
            MemoryPolicyBuilder::default()
                .modes(strings(&[
                    "MPOL_DEFAULT",
                    "MPOL_BIND",
                    "MPOL_INTERLEAVE",
                    "MPOL_WEIGHTED_INTERLEAVE",
                    "MPOL_PREFERRED",
                    "MPOL_PREFERRED_MANY",
                    "MPOL_LOCAL",
                ]))
                .flags(strings(&[
                    "MPOL_F_NUMA_BALANCING",
                    "MPOL_F_RELATIVE_NODES",
                    "MPOL_F_STATIC_NODES",
                ]))
                .build()?,
        )
        .namespaces(vec![
            Ns::Cgroup,
            Ns::Ipc,
            Ns::Mount,
            Ns::Network,
            Ns::Pid,
            Ns::Time,
            Ns::User,
            Ns::Uts,
        ])
        .capabilities(caps)
        .cgroup(
            CgroupBuilder::default()
                .v1(false)
                .v2(true)
                .systemd(false)
                .systemd_user(false)
                .rdma(false)
                .build()?,
        )
        .seccomp(
            SeccompBuilder::default()
                .enabled(true)
                .actions(vec![
                    Act::ScmpActAllow,
                    Act::ScmpActErrno,
                    Act::ScmpActKill,
                    Act::ScmpActKillProcess,
                    Act::ScmpActKillThread,
                    Act::ScmpActLog,
                    Act::ScmpActTrap,
                ])
                .operators(
                    [
                        Op::ScmpCmpEq,
                        Op::ScmpCmpGe,
                        Op::ScmpCmpGt,
                        Op::ScmpCmpLe,
                        Op::ScmpCmpLt,
                        Op::ScmpCmpMaskedEq,
                        Op::ScmpCmpNe,
                    ]
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<String>>(),
                )
                .archs(vec![Arch::ScmpArchX86_64])
                .build()?,
        )
        .apparmor(ApparmorBuilder::default().enabled(false).build()?)
        .selinux(SelinuxBuilder::default().enabled(false).build()?)
        .build()?;
    let doc = FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max("1.1.0")
        .hooks(strings(&[
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ]))
        .mount_options(mount_options)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    let mut v = serde_json::to_value(doc)?;
    drop_nulls(&mut v);
    Ok(v)
}

/// Removes the object members that are `null`: oci-spec writes a feature
/// it was not told about as `null`, where the spec's documents (runc's)
/// leave the member out; both mean "unknown".
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_spec_parses() {
        let s: oci_spec::runtime::Spec = serde_json::from_str(super::default_spec()).unwrap();
        assert_eq!(
            s.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["sh"]
        );
    }

    /// Every seccomp action `husk features` lists passes the create
    /// checks, and the one they refuse (user notification) is not listed;
    /// all six hook lists run (the host's four, and createContainer and
    /// startContainer in the guest).
    #[test]
    fn features_lists_only_what_create_accepts() {
        let f = super::features().unwrap();
        let actions = f["linux"]["seccomp"]["actions"].as_array().unwrap();
        assert!(!actions.iter().any(|a| a == "SCMP_ACT_NOTIFY"));
        for a in actions {
            let sc: oci_spec::runtime::LinuxSeccomp =
                serde_json::from_value(serde_json::json!({"defaultAction": a})).unwrap();
            crate::unsupported::check_seccomp(&sc).unwrap();
        }
        let notify: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}))
                .unwrap();
        assert!(crate::unsupported::check_seccomp(&notify).is_err());
        assert_eq!(
            f["hooks"],
            serde_json::json!([
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop"
            ])
        );
        let opts = f["mountOptions"].as_array().unwrap();
        for o in [
            "rro",
            "rnoexec",
            "rnosymfollow",
            "rstrictatime",
            "nosymfollow",
            "bind",
        ] {
            assert!(opts.iter().any(|x| x == o), "{o} not in {opts:?}");
        }
        assert_eq!(f["linux"]["apparmor"]["enabled"], false);
        assert_eq!(f["linux"]["selinux"]["enabled"], false);
    }

    #[test]
    fn features_lists_namespaces_and_caps() {
        let f = super::features().unwrap();
        assert!(f["linux"]["namespaces"].as_array().unwrap().len() == 8);
        assert!(f["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
    }
}
