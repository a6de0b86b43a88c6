//! How big a container's VM is, and which kernel, initramfs and engine it
//! uses.
//!
//! Precedence, lowest first: built-in defaults, the host's environment
//! (`HUSK_KERNEL`, `HUSK_INITRAMFS`, `HUSK_ENGINE`), the spec's `vm` section
//! (kernel path, parameters, initrd), `linux.resources` (memory limit plus
//! [`MEMORY_OVERHEAD_MIB`]; CPU quota/period rounded up to whole vCPUs), then
//! `husk.*` annotations, which win. What the spec may set at all, and the
//! largest VM, is the operator's [`HostPolicy`].
//!
//! A cpuset (`linux.resources.cpu.cpus`) names CPUs; in the guest they are
//! vCPUs, so the VM gets at least the highest named CPU + 1 vCPUs (within
//! the operator's maximum) and the container is pinned to the same
//! numbers there. A cpuset naming a CPU the host does not have is refused.
//! Where the VM has fewer vCPUs than that (the operator's maximum, a
//! `husk.vcpus` annotation, a pod's VM sized by its first container), the
//! container gets as many vCPUs as its cpuset has CPUs, from vCPU 0
//! ([`fit_cpuset`]). The guest has one NUMA node, 0: `cpu.mems` naming
//! nodes the host has becomes `0`, one it does not have is refused.

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
pub const MIN_MEMORY_MIB: u32 = husk_vmm_contract::config::MIN_MEMORY_MIB;
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
    #[error("{0} is not enabled by the operator (enable_annotations in /etc/husk/husk.toml or the shim's options, or HUSK_ENABLE_ANNOTATIONS)")]
    NotEnabled(String),
    /// A field of the spec is unusable.
    #[error("{field} {value:?}: {reason}")]
    Field {
        /// The field (`linux.resources.cpu.cpus`).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
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
    ) -> Result<husk_vmm_contract::config::VmConfig, String> {
        let mut vm = husk_vmm_contract::config::VmConfig::new(&self.kernel, state_dir);
        vm.initramfs = Some(self.initramfs.clone());
        vm.cmdline = self.cmdline.clone();
        vm.memory_mib = self.memory_mib;
        vm.vcpus = self.vcpus;
        vm.engine = self.engine.parse()?;
        Ok(vm)
    }
}

/// The cpuset field.
pub const CPUSET_CPUS: &str = "linux.resources.cpu.cpus";
/// The memory-node field.
pub const CPUSET_MEMS: &str = "linux.resources.cpu.mems";

/// A Linux list of CPU or node numbers (`0-3,8,10-11`, the kernel's
/// `a-b:used/group` strides too), as sorted, merged ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdList(Vec<(u32, u32)>);

/// Why an [`IdList`] is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdListError {
    /// It is not a list.
    Syntax(String),
    /// It names a number at or above the limit.
    Beyond(u32),
}

impl IdList {
    /// Parses `list`; `None` when it is empty (unset, as runc takes it).
    /// Every number must be below `limit`.
    pub fn parse(list: &str, limit: u32) -> Result<Option<IdList>, IdListError> {
        let list = list.trim();
        if list.is_empty() {
            return Ok(None);
        }
        let num = |s: &str| -> Result<u32, IdListError> {
            let n: u32 = s
                .trim()
                .parse()
                .map_err(|_| IdListError::Syntax(format!("{s:?} is not a number")))?;
            if n >= limit {
                return Err(IdListError::Beyond(n));
            }
            Ok(n)
        };
        let mut ranges = Vec::new();
        for part in list.split(',') {
            let (range, stride) = match part.split_once(':') {
                Some((r, st)) => (r, Some(st)),
                None => (part, None),
            };
            let (lo, hi) = match range.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(range)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(IdListError::Syntax(format!(
                    "{part:?} is a range that ends before it starts"
                )));
            }
            match stride {
                None => ranges.push((lo, hi)),
                Some(st) => {
                    let bad = || {
                        IdListError::Syntax(format!(
                            "{part:?}: a stride is RANGE:USED/GROUP, 0 < USED <= GROUP"
                        ))
                    };
                    let (used, group) = st.split_once('/').ok_or_else(bad)?;
                    let used: u32 = used.trim().parse().map_err(|_| bad())?;
                    let group: u32 = group.trim().parse().map_err(|_| bad())?;
                    if used == 0 || used > group {
                        return Err(bad());
                    }
                    // At most `limit` groups: `hi` is below it.
                    let mut start = lo;
                    while start <= hi {
                        ranges.push((start, start.saturating_add(used - 1).min(hi)));
                        start = match start.checked_add(group) {
                            Some(n) => n,
                            None => break,
                        };
                    }
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(Some(IdList(merged)))
    }

    /// The highest number in the list.
    pub fn highest(&self) -> u32 {
        self.0.last().map_or(0, |r| r.1)
    }

    /// How many numbers the list has.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(lo, hi)| u64::from(hi - lo) + 1).sum()
    }
}

/// `value` of `field`, a list of CPU or node numbers (`what`), checked
/// against the host's `limit` of them.
fn host_ids(
    field: &'static str,
    value: &str,
    limit: u32,
    what: &str,
) -> Result<Option<IdList>, SizingError> {
    IdList::parse(value, limit).map_err(|e| SizingError::Field {
        field,
        value: value.to_owned(),
        reason: match e {
            IdListError::Syntax(why) => format!("{why} (expected a list such as 0-3,6)"),
            IdListError::Beyond(n) => format!(
                "names {what} {n}, and the host has {what}s 0-{}",
                limit.saturating_sub(1)
            ),
        },
    })
}

/// The spec's cpuset and memory nodes, checked against the host.
fn cpuset(
    spec: &Spec,
    policy: &HostPolicy,
) -> Result<(Option<IdList>, Option<IdList>), SizingError> {
    let Some(cpu) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref())
    else {
        return Ok((None, None));
    };
    let parse = |field: &'static str, v: &Option<String>, limit: u32, what: &str| {
        v.as_deref()
            .map(|v| host_ids(field, v, limit, what))
            .transpose()
            .map(Option::flatten)
    };
    Ok((
        parse(CPUSET_CPUS, cpu.cpus(), policy.host_cpus, "CPU")?,
        parse(CPUSET_MEMS, cpu.mems(), policy.host_numa_nodes, "NUMA node")?,
    ))
}

/// Fits the spec's cpuset to a VM of `size` (the guest's copy of the
/// spec; see the module docs): a cpuset the VM covers stays as it is, one
/// it does not becomes as many vCPUs as it has CPUs, from vCPU 0 (logged);
/// memory nodes become the guest's node 0. Refuses CPUs or nodes the host
/// does not have, naming the field.
pub fn fit_cpuset(spec: &mut Spec, size: &VmSize) -> Result<(), SizingError> {
    fit_memory_policy(spec, &size.policy)?;
    let (cpus, mems) = cpuset(spec, &size.policy)?;
    if cpus.is_none() && mems.is_none() {
        return Ok(());
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut cpu = res.cpu().clone().unwrap_or_default();
    if let Some(list) = cpus.filter(|l| l.highest() >= size.vcpus) {
        let n = list.count().min(u64::from(size.vcpus));
        let guest = if n <= 1 {
            "0".to_owned()
        } else {
            format!("0-{}", n - 1)
        };
        tracing::warn!(
            cpus = cpu.cpus().as_deref().unwrap_or_default(),
            vcpus = size.vcpus,
            guest = %guest,
            "{CPUSET_CPUS} names CPUs beyond the VM's vCPUs: the container gets vCPUs {guest}"
        );
        cpu.set_cpus(Some(guest));
    }
    if let Some(list) = mems {
        if list != IdList(vec![(0, 0)]) {
            tracing::warn!(
                mems = cpu.mems().as_deref().unwrap_or_default(),
                "{CPUSET_MEMS}: the guest has one NUMA node; the container gets node 0"
            );
        }
        cpu.set_mems(Some("0".into()));
    }
    res.set_cpu(Some(cpu));
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The field of the NUMA memory policy's nodes.
pub const MEMORY_POLICY_NODES: &str = "linux.memoryPolicy.nodes";

/// `linux.memoryPolicy.nodes` for the guest's one node: nodes the host has
/// become node 0 (logged when that changes them), one it lacks is refused
/// naming the field; the mode and flags go to the guest as they are.
fn fit_memory_policy(spec: &mut Spec, policy: &HostPolicy) -> Result<(), SizingError> {
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(());
    };
    let Some(mut mp) = linux.memory_policy().clone() else {
        return Ok(());
    };
    let Some(nodes) = mp.nodes().clone() else {
        return Ok(());
    };
    let Some(list) = host_ids(
        MEMORY_POLICY_NODES,
        &nodes,
        policy.host_numa_nodes,
        "NUMA node",
    )?
    else {
        return Ok(());
    };
    if list != IdList(vec![(0, 0)]) {
        tracing::warn!(
            nodes = %nodes,
            "{MEMORY_POLICY_NODES}: the guest has one NUMA node; the policy gets node 0"
        );
    }
    mp.set_nodes(Some("0".into()));
    linux.set_memory_policy(Some(mp));
    spec.set_linux(Some(linux));
    Ok(())
}

/// Sizes the VM for `spec`, reading the operator's defaults and rules
/// through `env`; refuses what the operator did not enable.
pub fn size_vm(spec: &Spec, env: impl Fn(&str) -> Option<String>) -> Result<VmSize, SizingError> {
    let policy = HostPolicy::from_env(&env)?;
    size_vm_under(spec, policy, env)
}

/// [`size_vm`] under `policy` (read by the caller, for a host it
/// describes).
pub fn size_vm_under(
    spec: &Spec,
    policy: HostPolicy,
    env: impl Fn(&str) -> Option<String>,
) -> Result<VmSize, SizingError> {
    policy.check(spec)?;
    let (cpus, _) = cpuset(spec, &policy)?;
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
    if let Some(list) = &cpus {
        // The vCPUs the cpuset names exist in the guest.
        let need = list.highest().saturating_add(1);
        if need > size.vcpus {
            size.vcpus = size.clamp_vcpus(need);
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
                            husk_vmm_contract::config::MAX_MEMORY_MIB
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
                            husk_vmm_contract::config::MAX_VCPUS
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

    #[test]
    fn id_lists_parse_as_the_kernel_reads_them() {
        let l = |s: &str| IdList::parse(s, 64);
        assert_eq!(l(" \n"), Ok(None), "empty is unset");
        let x = l("5,0-2,3,10-11\n").unwrap().unwrap();
        assert_eq!(x, IdList(vec![(0, 3), (5, 5), (10, 11)]));
        assert_eq!((x.highest(), x.count()), (11, 7));
        let strided = l("0-9:2/4").unwrap().unwrap();
        assert_eq!(strided, IdList(vec![(0, 1), (4, 5), (8, 9)]));
        assert_eq!(l("64"), Err(IdListError::Beyond(64)));
        assert_eq!(l("0-4294967295:1/1"), Err(IdListError::Beyond(u32::MAX)));
        for bad in [
            "a", "1-", "3-1", "0-3:0/2", "0-3:3/2", "0-3:1", ",", "1,,2", "-1",
        ] {
            assert!(
                matches!(l(bad), Err(IdListError::Syntax(_))),
                "{bad:?}: {:?}",
                l(bad)
            );
        }
    }

    /// A host with 8 CPUs and 2 NUMA nodes, and `env` for the operator.
    fn sized(
        v: serde_json::Value,
        env: &[(&str, &str)],
    ) -> Result<(VmSize, Option<String>, Option<String>), SizingError> {
        let host = policy::Host {
            memory_mib: 8192,
            usable_cpus: 8,
            cpus: 8,
            numa_nodes: 2,
        };
        let env = |k: &str| {
            env.iter()
                .find(|(e, _)| *e == k)
                .map(|(_, v)| v.to_string())
        };
        let mut s = spec(v);
        let size = size_vm_under(&s, HostPolicy::from_env_on(&env, &host)?, env)?;
        fit_cpuset(&mut s, &size)?;
        let cpu = s
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .and_then(|r| r.cpu().clone())
            .unwrap_or_default();
        Ok((size, cpu.cpus().clone(), cpu.mems().clone()))
    }

    /// `linux.memoryPolicy.nodes` the host has map to the guest's node 0;
    /// a node it lacks is refused naming the field; mode and flags stay.
    #[test]
    fn memory_policy_nodes_map_to_the_guests_node() {
        let host = policy::Host {
            memory_mib: 8192,
            usable_cpus: 8,
            cpus: 8,
            numa_nodes: 2,
        };
        let fit = |mp: serde_json::Value| -> Result<serde_json::Value, String> {
            let mut s = spec(serde_json::json!(
                {"ociVersion": "1.0.2", "linux": {"memoryPolicy": mp}}));
            let size = size_vm_under(&s, HostPolicy::from_env_on(&no_env, &host).unwrap(), no_env)
                .unwrap();
            fit_cpuset(&mut s, &size).map_err(|e| e.to_string())?;
            Ok(serde_json::to_value(s.linux().as_ref().unwrap().memory_policy()).unwrap())
        };
        let got = fit(serde_json::json!(
            {"mode": "MPOL_INTERLEAVE", "nodes": "0-1", "flags": ["MPOL_F_STATIC_NODES"]}))
        .unwrap();
        assert_eq!(
            got,
            serde_json::json!(
                {"mode": "MPOL_INTERLEAVE", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]})
        );
        let got = fit(serde_json::json!({"mode": "MPOL_LOCAL"})).unwrap();
        assert_eq!(got, serde_json::json!({"mode": "MPOL_LOCAL"}));
        assert_eq!(
            fit(serde_json::json!({"mode": "MPOL_BIND", "nodes": "3"})).unwrap_err(),
            "linux.memoryPolicy.nodes \"3\": names NUMA node 3, and the host has NUMA nodes 0-1"
        );
    }

    fn with_cpu(cpu: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"ociVersion": "1.0.2", "linux": {"resources": {"cpu": cpu}}})
    }

    /// The VM covers the cpuset (the cpuset used to name CPUs the VM did
    /// not have: `cpuset.cpus: Numerical result out of range` in the
    /// guest); where it cannot, the container gets as many vCPUs as its
    /// cpuset has CPUs; CPUs or nodes the host lacks are refused.
    #[test]
    fn cpuset_sizes_the_vm_and_fits_the_guest() {
        let (s, cpus, _) = sized(with_cpu(serde_json::json!({"cpus": "2-3"})), &[]).unwrap();
        assert_eq!((s.vcpus, cpus.as_deref()), (4, Some("2-3")));
        let quota = serde_json::json!({"cpus": "1", "quota": 350000, "period": 100000});
        let (s, cpus, _) = sized(with_cpu(quota), &[]).unwrap();
        assert_eq!(
            (s.vcpus, cpus.as_deref()),
            (4, Some("1")),
            "the quota asks more"
        );
        // The operator allows 2 vCPUs: the container gets 2 of them.
        let (s, cpus, _) = sized(
            with_cpu(serde_json::json!({"cpus": "4-7"})),
            &[("HUSK_MAX_VCPUS", "2")],
        )
        .unwrap();
        assert_eq!((s.vcpus, cpus.as_deref()), (2, Some("0-1")));
        // husk.vcpus wins over the cpuset; a single CPU maps to vCPU 0.
        let mut v = with_cpu(serde_json::json!({"cpus": "6"}));
        v["annotations"] = serde_json::json!({"husk.vcpus": "1"});
        let (s, cpus, _) = sized(v, &[]).unwrap();
        assert_eq!((s.vcpus, cpus.as_deref()), (1, Some("0")));
        // CPUs beyond the host are refused, naming the field.
        let e = sized(with_cpu(serde_json::json!({"cpus": "0-8"})), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "linux.resources.cpu.cpus \"0-8\": names CPU 8, and the host has CPUs 0-7"
        );
        let e = sized(with_cpu(serde_json::json!({"cpus": "0-x"})), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("linux.resources.cpu.cpus \"0-x\": "), "{e}");
        // The guest has node 0 only; nodes the host has map to it.
        let (_, cpus, mems) = sized(with_cpu(serde_json::json!({"mems": "1"})), &[]).unwrap();
        assert_eq!((cpus, mems.as_deref()), (None, Some("0")));
        let e = sized(with_cpu(serde_json::json!({"mems": "0-2"})), &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "linux.resources.cpu.mems \"0-2\": names NUMA node 2, and the host has NUMA nodes 0-1"
        );
        // Empty is unset, as with runc.
        let (s, cpus, mems) =
            sized(with_cpu(serde_json::json!({"cpus": "", "mems": ""})), &[]).unwrap();
        assert_eq!(
            (s.vcpus, cpus.as_deref(), mems.as_deref()),
            (1, Some(""), Some(""))
        );
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
