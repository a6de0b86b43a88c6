//! How big a container's VM is, and which kernel, initramfs and engine it
//! uses.
//!
//! Precedence, lowest first: built-in defaults, the host's environment
//! (`HUSK_KERNEL`, `HUSK_INITRAMFS`, `HUSK_ENGINE`), the spec's `vm` section
//! (kernel path, parameters, initrd), `linux.resources` (memory limit plus
//! [`MEMORY_OVERHEAD_MIB`]; CPU quota/period rounded up to whole vCPUs), then
//! `husk.*` annotations, which win.

use std::path::PathBuf;

use oci_spec::runtime::Spec;

/// Guest RAM when the spec sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Guest RAM added on top of the container's memory limit for the guest
/// kernel, the agent and page cache. Measured: an idle guest with the
/// agent uses about 40 MiB; the rest is headroom.
pub const MEMORY_OVERHEAD_MIB: u32 = 64;
/// The smallest guest that boots reliably.
pub const MIN_MEMORY_MIB: u32 = 128;
/// The default kernel location (installed by scripts/setup.sh).
pub const DEFAULT_KERNEL: &str = "/usr/local/share/husk/vmlinux";
/// The default initramfs location.
pub const DEFAULT_INITRAMFS: &str = "/usr/local/share/husk/initramfs.cpio";

/// Why sizing failed.
#[derive(Debug, thiserror::Error)]
#[error("annotation {key}={value:?}: {reason}")]
pub struct SizingError {
    key: String,
    value: String,
    reason: &'static str,
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

/// Sizes the VM for `spec`, reading defaults through `env`.
pub fn size_vm(spec: &Spec, env: impl Fn(&str) -> Option<String>) -> Result<VmSize, SizingError> {
    let mut size = VmSize {
        memory_mib: DEFAULT_MEMORY_MIB,
        vcpus: 1,
        kernel: env("HUSK_KERNEL").map_or_else(|| DEFAULT_KERNEL.into(), PathBuf::from),
        initramfs: env("HUSK_INITRAMFS").map_or_else(|| DEFAULT_INITRAMFS.into(), PathBuf::from),
        cmdline: None,
        engine: env("HUSK_ENGINE").unwrap_or_else(|| "auto".into()),
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
            let mib = u32::try_from((limit as u64).div_ceil(1 << 20)).unwrap_or(u32::MAX);
            size.memory_mib = mib.saturating_add(MEMORY_OVERHEAD_MIB).max(MIN_MEMORY_MIB);
        }
        if let Some(cpu) = res.cpu() {
            if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
                if quota > 0 && period > 0 {
                    let v = (quota as u64).div_ceil(period);
                    size.vcpus = u32::try_from(v).unwrap_or(u32::MAX).clamp(1, 64);
                }
            }
        }
    }
    for (k, v) in spec.annotations().iter().flatten() {
        let bad = |reason| SizingError {
            key: k.clone(),
            value: v.clone(),
            reason,
        };
        match k.as_str() {
            "husk.memory_mib" => {
                size.memory_mib = v.parse().map_err(|_| bad("not a number of MiB"))?;
                if size.memory_mib < MIN_MEMORY_MIB {
                    return Err(bad("below the 128 MiB minimum"));
                }
            }
            "husk.vcpus" => {
                size.vcpus = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| bad("not 1..=64"))?;
            }
            "husk.kernel" => size.kernel = v.into(),
            "husk.initramfs" => size.initramfs = v.into(),
            "husk.kernel_params" => size.cmdline = Some(v.clone()),
            "husk.engine" => {
                if !["auto", "builtin", "qemu"].contains(&v.as_str()) {
                    return Err(bad("not auto, builtin or qemu"));
                }
                size.engine = v.clone();
            }
            _ => {}
        }
    }
    Ok(size)
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
        let env = |k: &str| (k == "HUSK_KERNEL").then(|| "/k".to_string());
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
}
