//! `spec` and `features`: what husk writes and supports, without a container.

use serde_json::{json, Value};

/// The default config.json `husk spec` writes (the one `runc spec` writes).
pub fn default_spec() -> &'static str {
    include_str!("../default-spec.json")
}

/// The runtime-spec features document (`husk features`).
pub fn features() -> Value {
    let caps: Vec<String> = caps::all()
        .into_iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut mount_options: Vec<&str> = [
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
    .collect();
    mount_options.sort_unstable();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mount_options,
        "linux": {
            "memoryPolicy": {
                "modes": [
                    "MPOL_DEFAULT", "MPOL_BIND", "MPOL_INTERLEAVE", "MPOL_WEIGHTED_INTERLEAVE",
                    "MPOL_PREFERRED", "MPOL_PREFERRED_MANY", "MPOL_LOCAL"
                ],
                "flags": ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"]
            },
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.husk.vm": "every container runs in its own KVM microVM",
            "husk.memory_mib": "guest RAM in MiB (overrides linux.resources)",
            "husk.vcpus": "guest vCPUs",
            "husk.engine": "auto, builtin or qemu (operator must enable)",
            "husk.kernel": "guest kernel path (operator must enable)",
            "husk.initramfs": "guest initramfs path (operator must enable)",
            "husk.kernel_params": "extra guest kernel parameters (operator must enable)",
            "husk.guest_vsock": "allow: the container may open AF_VSOCK sockets (operator must enable)"
        }
    })
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
        let f = super::features();
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
        let f = super::features();
        assert!(f["linux"]["namespaces"].as_array().unwrap().len() == 8);
        assert!(f["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"));
    }
}
