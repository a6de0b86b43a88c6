//! What a container's author may choose about its VM, and what only the
//! operator chooses.
//!
//! The author of a pod or a config.json writes annotations and the spec's
//! `vm` section; the operator writes husk's environment (`HUSK_*`) or the
//! shim's options file. Settings that pick host files or host programs
//! (kernel, initramfs, kernel parameters, engine) and settings that widen
//! what the guest may do (`husk.guest_vsock`) are refused unless the
//! operator enabled them by name, as Kata's `enable_annotations` does.
//! Sizing annotations are enabled by default and bounded by the operator's
//! maximums; a memory limit or CPU quota larger than the maximums gets the
//! largest VM allowed instead.
//!
//! | operator setting | environment | default |
//! | --- | --- | --- |
//! | annotations enabled | `HUSK_ENABLE_ANNOTATIONS` (comma list, `husk.*` = all) | `husk.memory_mib,husk.vcpus` |
//! | largest guest RAM | `HUSK_MAX_MEMORY_MIB` | the host's RAM |
//! | most vCPUs | `HUSK_MAX_VCPUS` | the host's online CPUs |
//!
//! Either maximum is further bounded by what the monitor accepts
//! (`husk_vmm_contract::config::MAX_MEMORY_MIB`, `MAX_VCPUS`), so a VM the runtime
//! sizes is never refused by the monitor.

use oci_spec::runtime::Spec;

use crate::sizing::SizingError;

/// The annotations husk knows, with whether they are enabled by default.
pub const ANNOTATIONS: [(&str, bool); 7] = [
    (MEMORY_MIB, true),
    (VCPUS, true),
    (KERNEL, false),
    (INITRAMFS, false),
    (KERNEL_PARAMS, false),
    (ENGINE, false),
    (husk_protocol::GUEST_VSOCK_ANNOTATION, false),
];
/// Guest RAM in MiB.
pub const MEMORY_MIB: &str = "husk.memory_mib";
/// vCPUs.
pub const VCPUS: &str = "husk.vcpus";
/// A guest kernel on the host (a host file).
pub const KERNEL: &str = "husk.kernel";
/// A guest initramfs on the host (a host file).
pub const INITRAMFS: &str = "husk.initramfs";
/// The guest kernel's command line.
pub const KERNEL_PARAMS: &str = "husk.kernel_params";
/// `auto`, `builtin` or `qemu`.
pub const ENGINE: &str = "husk.engine";
/// The most vCPUs a VM gets whatever the host and operator say: the
/// monitor's own limit (one definition, in `husk_vmm_contract::config`).
pub const VCPU_LIMIT: u32 = husk_vmm_contract::config::MAX_VCPUS;

/// What husk reads about the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// RAM, MiB (`MemTotal`).
    pub memory_mib: u32,
    /// The CPUs this process may run on: the default most vCPUs.
    pub usable_cpus: u32,
    /// The CPU numbers the host has: its highest online CPU + 1. A cpuset
    /// (`linux.resources.cpu.cpus`) may name CPUs below it.
    pub cpus: u32,
    /// The NUMA node numbers the host has: its highest online node + 1 (1
    /// on a host without NUMA). `linux.resources.cpu.mems` may name nodes
    /// below it.
    pub numa_nodes: u32,
}

impl Host {
    /// Reads the host's RAM, CPUs and NUMA nodes from /proc and /sys.
    pub fn read() -> Host {
        let usable_cpus = host_cpus();
        let highest = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|l| crate::sizing::IdList::parse(&l, u32::MAX).ok().flatten())
                .map(|l| l.highest().saturating_add(1))
        };
        Host {
            memory_mib: host_memory_mib(),
            usable_cpus,
            cpus: highest("/sys/devices/system/cpu/online").unwrap_or(usable_cpus),
            numa_nodes: highest("/sys/devices/system/node/online").unwrap_or(1),
        }
    }
}

/// The operator's rules for one runtime or shim, and the host's CPUs and
/// NUMA nodes they were read with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    /// Enabled annotation names; `husk.*` enables all.
    enabled: Vec<String>,
    /// The largest guest RAM, MiB.
    pub max_memory_mib: u32,
    /// The most vCPUs.
    pub max_vcpus: u32,
    /// The host's CPU numbers ([`Host::cpus`]).
    pub host_cpus: u32,
    /// The host's NUMA node numbers ([`Host::numa_nodes`]).
    pub host_numa_nodes: u32,
}

impl HostPolicy {
    /// Reads the operator's settings through `env` (the environment, or the
    /// shim's options file over it); the maximums default to the host's
    /// RAM and CPUs.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, SizingError> {
        Self::from_env_on(env, &Host::read())
    }

    /// [`HostPolicy::from_env`] on a host described by `host`.
    pub fn from_env_on(
        env: &impl Fn(&str) -> Option<String>,
        host: &Host,
    ) -> Result<Self, SizingError> {
        let enabled = match env("HUSK_ENABLE_ANNOTATIONS") {
            Some(list) => {
                let names: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = names
                    .iter()
                    .find(|n| *n != "husk.*" && !ANNOTATIONS.iter().any(|(k, _)| k == n))
                {
                    return Err(SizingError::setting(
                        "HUSK_ENABLE_ANNOTATIONS",
                        &list,
                        format!("unknown annotation {bad:?}"),
                    ));
                }
                names
            }
            None => ANNOTATIONS
                .iter()
                .filter(|(_, on)| *on)
                .map(|(k, _)| (*k).to_owned())
                .collect(),
        };
        let number = |key: &str, default: u32, min: u32| -> Result<u32, SizingError> {
            match env(key) {
                None => Ok(default),
                Some(v) => v.trim().parse().ok().filter(|n| *n >= min).ok_or_else(|| {
                    SizingError::setting(key, &v, format!("not a whole number >= {min}"))
                }),
            }
        };
        Ok(HostPolicy {
            enabled,
            // The operator's maximum (the host's by default; an operator
            // may overcommit), never beyond what the monitor accepts.
            max_memory_mib: number(
                "HUSK_MAX_MEMORY_MIB",
                host.memory_mib,
                crate::sizing::MIN_MEMORY_MIB,
            )?
            .min(husk_vmm_contract::config::MAX_MEMORY_MIB),
            max_vcpus: number("HUSK_MAX_VCPUS", host.usable_cpus, 1)?.min(VCPU_LIMIT),
            host_cpus: host.cpus.max(1),
            host_numa_nodes: host.numa_nodes.max(1),
        })
    }

    /// Whether the operator enabled annotation `key`.
    pub fn enabled(&self, key: &str) -> bool {
        self.enabled.iter().any(|e| e == key || e == "husk.*")
    }

    /// Refuses a spec that uses an unknown `husk.*` annotation, or an
    /// annotation or `vm` setting the operator did not enable. (Their
    /// values are checked where they are used.)
    pub fn check(&self, spec: &Spec) -> Result<(), SizingError> {
        for (k, v) in spec.annotations().iter().flatten() {
            if !k.starts_with("husk.") {
                continue;
            }
            if !ANNOTATIONS.iter().any(|(known, _)| known == k) {
                return Err(SizingError::annotation(k, v, "unknown husk annotation"));
            }
            if !self.enabled(k) {
                return Err(SizingError::NotEnabled(format!("annotation {k}")));
            }
        }
        if let Some(vm) = spec.vm() {
            let uses = [
                (KERNEL, true),
                (INITRAMFS, vm.kernel().initrd().is_some()),
                (KERNEL_PARAMS, vm.kernel().parameters().is_some()),
            ];
            if let Some((key, _)) = uses.iter().find(|(k, used)| *used && !self.enabled(k)) {
                return Err(SizingError::NotEnabled(format!(
                    "the spec's vm section (it sets what {key} sets)"
                )));
            }
        }
        Ok(())
    }
}

/// The host's RAM in MiB (`MemTotal`); `u32::MAX` when unreadable.
fn host_memory_mib() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u32::MAX, |kib| {
            u32::try_from(kib / 1024).unwrap_or(u32::MAX)
        })
}

/// The CPUs this process may run on.
fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn defaults_enable_only_sizing_and_bound_by_the_host() {
        let p = HostPolicy::from_env(&env_of(&[])).unwrap();
        assert!(p.enabled(MEMORY_MIB) && p.enabled(VCPUS));
        for k in [KERNEL, INITRAMFS, KERNEL_PARAMS, ENGINE, "husk.guest_vsock"] {
            assert!(!p.enabled(k), "{k}");
        }
        assert!(p.max_memory_mib >= 128 && p.max_memory_mib < u32::MAX);
        assert!((1..=VCPU_LIMIT).contains(&p.max_vcpus));
    }

    #[test]
    fn host_choices_are_refused_unless_enabled() {
        let p = HostPolicy::from_env(&env_of(&[])).unwrap();
        for (k, v) in [
            (KERNEL, "/etc/shadow"),
            (INITRAMFS, "/etc/shadow"),
            (KERNEL_PARAMS, "init=/bin/sh"),
            (ENGINE, "qemu"),
            ("husk.guest_vsock", "allow"),
        ] {
            let s = spec(serde_json::json!({"ociVersion": "1.0.2", "annotations": {k: v}}));
            let err = p.check(&s).unwrap_err().to_string();
            assert!(err.contains(k) && err.contains("not enabled"), "{err}");
        }
        let vm = spec(serde_json::json!({"ociVersion": "1.0.2",
            "vm": {"kernel": {"path": "/etc/shadow"}}}));
        assert!(p.check(&vm).unwrap_err().to_string().contains("vm section"));
        let typo = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.memorymib": "1"}}));
        assert!(p.check(&typo).unwrap_err().to_string().contains("unknown"));
        let other = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.sandbox-id": "x", "husk.vcpus": "2"}}));
        p.check(&other).unwrap();
    }

    #[test]
    fn operator_enables_by_name_or_all() {
        let p = HostPolicy::from_env(&env_of(&[(
            "HUSK_ENABLE_ANNOTATIONS",
            "husk.kernel, husk.guest_vsock",
        )]))
        .unwrap();
        assert!(p.enabled(KERNEL) && p.enabled("husk.guest_vsock"));
        assert!(!p.enabled(MEMORY_MIB), "the list replaces the defaults");
        let all = HostPolicy::from_env(&env_of(&[("HUSK_ENABLE_ANNOTATIONS", "husk.*")])).unwrap();
        assert!(ANNOTATIONS.iter().all(|(k, _)| all.enabled(k)));
        let vm = spec(serde_json::json!({"ociVersion": "1.0.2",
            "vm": {"kernel": {"path": "/k", "parameters": ["quiet"]}}}));
        all.check(&vm).unwrap();
        let err = HostPolicy::from_env(&env_of(&[("HUSK_ENABLE_ANNOTATIONS", "husk.kernal")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("husk.kernal"), "{err}");
    }

    #[test]
    fn maximums_are_read_and_checked() {
        let p = HostPolicy::from_env(&env_of(&[
            ("HUSK_MAX_MEMORY_MIB", "1024"),
            ("HUSK_MAX_VCPUS", "500"),
        ]))
        .unwrap();
        assert_eq!((p.max_memory_mib, p.max_vcpus), (1024, VCPU_LIMIT));
        let p = HostPolicy::from_env(&env_of(&[("HUSK_MAX_MEMORY_MIB", "4000000000")])).unwrap();
        assert_eq!(p.max_memory_mib, husk_vmm_contract::config::MAX_MEMORY_MIB);
        assert!(p.max_vcpus <= husk_vmm_contract::config::MAX_VCPUS);
        assert!(HostPolicy::from_env(&env_of(&[("HUSK_MAX_MEMORY_MIB", "64")])).is_err());
        assert!(HostPolicy::from_env(&env_of(&[("HUSK_MAX_VCPUS", "x")])).is_err());
    }
}
