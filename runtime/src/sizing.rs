//! How big a container's VM is, and which kernel, initramfs and engine it
//! uses.
//!
//! Precedence, lowest first: built-in defaults, the host's environment
//! (`HUSK_KERNEL`, `HUSK_INITRAMFS`, `HUSK_ENGINE`), the spec's `vm` section
//! (kernel path, parameters, initrd), `linux.resources` (memory limit plus
//! [`MEMORY_OVERHEAD_MIB`]; CPU quota/period rounded up to whole vCPUs), then
//! `husk.*` annotations, which win. What the spec may set at all, and the
//! largest VM, is the operator's [`HostPolicy`].

use std::path::PathBuf;

use oci_spec::runtime::Spec;

use crate::policy::{self, HostPolicy};

/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Guest RAM added on top of the container's memory limit for the guest
/// kernel, the agent and page cache. Measured: an idle guest with the
/// agent uses about 40 MiB; the rest is headroom.
pub const MEMORY_OVERHEAD_MIB: u32 = 64;
/// The smallest guest that boots reliably (the monitor's own minimum).
pub const MIN_MEMORY_MIB: u32 = husk_vmm::config::MIN_MEMORY_MIB;
/// The default kernel location (installed by scripts/setup.sh).
pub const DEFAULT_KERNEL: &str = "/usr/local/share/husk/vmlinux";
/// The default initramfs location.
pub const DEFAULT_INITRAMFS: &str = "/usr/local/share/husk/initramfs.cpio";

/// Why sizing failed.
#[derive(Debug, thiserror::Error)]
pub enum SizingError {
    /// An annotation's value is unusable.
    #[error("annotation {key}={value:?}: {reason}")]
    Annotation {
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// An operator setting (environment or options file) is unusable.
    #[error("{key}={value:?}: {reason}")]
    Setting {
        /// The setting.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The spec sets something the operator did not enable.
    #[error("{0} is not enabled by the operator (HUSK_ENABLE_ANNOTATIONS, or enable_annotations in the shim's options)")]
    NotEnabled(String),
}

impl SizingError {
    /// A bad annotation value.
    pub fn annotation(key: &str, value: &str, reason: impl Into<String>) -> Self {
        SizingError::Annotation {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    /// A bad operator setting.
    pub fn setting(key: &str, value: &str, reason: impl Into<String>) -> Self {
        SizingError::Setting {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The VM a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSize {
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Extra kernel command-line parameters.
    pub cmdline: Option<String>,
    /// `auto`, `builtin` or `qemu`.
    pub engine: String,
    /// The operator's rules it was sized under (a pod's later containers
    /// are checked against them too).
    pub policy: HostPolicy,
}

impl VmSize {
    /// A monitor configuration for a VM of this size with its state in
    /// `state_dir` (devices and container left for the caller to add).
    pub fn vm_config(
        &self,
        state_dir: &std::path::Path,
    ) -> Result<husk_vmm::config::VmConfig, String> {
        let mut vm = husk_vmm::config::VmConfig::new(&self.kernel, state_dir);
        vm.initramfs = Some(self.initramfs.clone());
        vm.cmdline = self.cmdline.clone();
        vm.memory_mib = self.memory_mib;
        vm.vcpus = self.vcpus;
        vm.engine = self.engine.parse()?;
        Ok(vm)
    }
}

/// Sizes the VM for `spec`, reading the operator's defaults and rules
/// through `env`; refuses what the operator did not enable.
pub fn size_vm(spec: &Spec, env: impl Fn(&str) -> Option<String>) -> Result<VmSize, SizingError> {
    let policy = HostPolicy::from_env(&env)?;
    policy.check(spec)?;
    let mut size = VmSize {
        memory_mib: DEFAULT_MEMORY_MIB.min(policy.max_memory_mib),
        vcpus: 1,
        kernel: env("HUSK_KERNEL").map_or_else(|| DEFAULT_KERNEL.into(), PathBuf::from),
        initramfs: env("HUSK_INITRAMFS").map_or_else(|| DEFAULT_INITRAMFS.into(), PathBuf::from),
        cmdline: None,
        engine: env("HUSK_ENGINE").unwrap_or_else(|| "auto".into()),
        policy,
    };
    if let Some(vm) = spec.vm() {
        size.kernel = vm.kernel().path().clone();
        if let Some(initrd) = vm.kernel().initrd() {
            size.initramfs = PathBuf::from(initrd);
        }
        if let Some(p) = vm.kernel().parameters() {
            size.cmdline = Some(p.join(" "));
        }
    }
    if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        if let Some(limit) = res
            .memory()
            .as_ref()
            .and_then(|m| m.limit())
            .filter(|l| *l > 0)
        {
            size.memory_mib = size.clamp_memory(memory_for_limit(limit as u64));
        }
        if let Some(cpu) = res.cpu() {
            if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
                if quota > 0 && period > 0 {
                    let v = (quota as u64).div_ceil(period);
                    size.vcpus = size.clamp_vcpus(u32::try_from(v).unwrap_or(u32::MAX));
                }
            }
        }
    }
    for (k, v) in spec.annotations().iter().flatten() {
        let bad = |reason: String| SizingError::annotation(k, v, reason);
        match k.as_str() {
            policy::MEMORY_MIB => {
                let max = size.policy.max_memory_mib;
                size.memory_mib = v
                    .parse()
                    .ok()
                    .filter(|m| (MIN_MEMORY_MIB..=max).contains(m))
                    .ok_or_else(|| {
                        bad(format!(
                            "not {MIN_MEMORY_MIB}..={max} MiB (HUSK_MAX_MEMORY_MIB, \
                             default the host's RAM, at most MAX_MEMORY_MIB {})",
                            husk_vmm::config::MAX_MEMORY_MIB
                        ))
                    })?;
            }
            policy::VCPUS => {
                let max = size.policy.max_vcpus;
                size.vcpus = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "not 1..={max} (HUSK_MAX_VCPUS, default the host's CPUs, \
                             at most MAX_VCPUS {})",
                            husk_vmm::config::MAX_VCPUS
                        ))
                    })?;
            }
            policy::KERNEL => size.kernel = v.into(),
            policy::INITRAMFS => size.initramfs = v.into(),
            policy::KERNEL_PARAMS => size.cmdline = Some(v.clone()),
            policy::ENGINE => {
                if !["auto", "builtin", "qemu"].contains(&v.as_str()) {
                    return Err(bad("not auto, builtin or qemu".into()));
                }
                size.engine = v.clone();
            }
            _ => {}
        }
    }
    Ok(size)
}

/// Guest RAM for a container memory limit of `bytes`: the limit plus the
/// guest's own overhead, at least the minimum that boots.
pub fn memory_for_limit(bytes: u64) -> u32 {
    let mib = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
    mib.saturating_add(MEMORY_OVERHEAD_MIB).max(MIN_MEMORY_MIB)
}

impl VmSize {
    /// `mib` bounded by the operator's maximum; logged when cut. (A
    /// container limit above it still runs, in the largest VM allowed, as
    /// a runc container with a limit above the host's RAM does.)
    pub fn clamp_memory(&self, mib: u32) -> u32 {
        let max = self.policy.max_memory_mib;
        if mib > max {
            tracing::warn!(
                wanted_mib = mib,
                max_mib = max,
                "guest RAM cut to the operator's maximum"
            );
        }
        mib.min(max)
    }

    /// `n` vCPUs bounded by the operator's maximum; logged when cut.
    pub fn clamp_vcpus(&self, n: u32) -> u32 {
        let max = self.policy.max_vcpus;
        if n > max {
            tracing::warn!(wanted = n, max, "vCPUs cut to the operator's maximum");
        }
        n.clamp(1, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_resources() {
        let s = size_vm(&spec(serde_json::json!({"ociVersion": "1.0.2"})), no_env).unwrap();
        assert_eq!((s.memory_mib, s.vcpus, s.engine.as_str()), (256, 1, "auto"));
        assert_eq!(s.kernel, PathBuf::from(DEFAULT_KERNEL));
    }

    #[test]
    fn resources_size_the_vm() {
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "memory": {"limit": 512u64 << 20}, "cpu": {"quota": 150000, "period": 100000}}}}),
        );
        let s = size_vm(&s, no_env).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (512 + MEMORY_OVERHEAD_MIB, 2));
        let small = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "memory": {"limit": 1u64 << 20}}}}),
        );
        assert_eq!(size_vm(&small, no_env).unwrap().memory_mib, MIN_MEMORY_MIB);
    }

    #[test]
    fn annotations_and_env_win() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.memory_mib": "300", "husk.vcpus": "3", "husk.engine": "qemu"},
            "linux": {"resources": {"memory": {"limit": 1u64 << 30}}}}));
        let env = |k: &str| match k {
            "HUSK_KERNEL" => Some("/k".to_string()),
            "HUSK_ENABLE_ANNOTATIONS" => Some("husk.*".to_string()),
            "HUSK_MAX_VCPUS" => Some("8".to_string()),
            _ => None,
        };
        let s = size_vm(&s, env).unwrap();
        assert_eq!((s.memory_mib, s.vcpus, s.engine.as_str()), (300, 3, "qemu"));
        assert_eq!(s.kernel, PathBuf::from("/k"));
        let bad =
            spec(serde_json::json!({"ociVersion": "1.0.2", "annotations": {"husk.vcpus": "0"}}));
        assert!(size_vm(&bad, no_env)
            .unwrap_err()
            .to_string()
            .contains("husk.vcpus"));
    }

    /// A pod author cannot ask for a VM larger than the operator allows,
    /// nor pick host files (the engine ran `-initrd /etc/shadow` once).
    #[test]
    fn operator_maximums_and_enabled_annotations_bound_the_vm() {
        let env = |k: &str| match k {
            "HUSK_MAX_MEMORY_MIB" => Some("2048".to_string()),
            "HUSK_MAX_VCPUS" => Some("4".to_string()),
            _ => None,
        };
        let huge = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.memory_mib": "1048576"}}));
        assert!(size_vm(&huge, env)
            .unwrap_err()
            .to_string()
            .contains("128..=2048"));
        let beyond = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.vcpus": "33"}}));
        let many = |k: &str| (k == "HUSK_MAX_VCPUS").then(|| "500".to_string());
        let e = size_vm(&beyond, many).unwrap_err().to_string();
        assert!(e.contains("1..=32") && e.contains("MAX_VCPUS 32"), "{e}");
        let cpus = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.vcpus": "64"}}));
        assert!(size_vm(&cpus, env)
            .unwrap_err()
            .to_string()
            .contains("1..=4"));
        let limits = spec(
            serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {
            "memory": {"limit": 1u64 << 40}, "cpu": {"quota": 6400000, "period": 100000}}}}),
        );
        let s = size_vm(&limits, env).unwrap();
        assert_eq!(
            (s.memory_mib, s.vcpus),
            (2048, 4),
            "limits are cut, not refused"
        );
        let shadow = spec(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"husk.initramfs": "/etc/shadow"}}));
        assert!(matches!(
            size_vm(&shadow, env),
            Err(SizingError::NotEnabled(_))
        ));
    }
}
