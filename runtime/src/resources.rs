//! Resource updates of a running container (`husk update`, the shim's
//! `Update`): what is asked is merged onto what the container has, checked
//! against its VM, and sent to the agent (`UpdateContainer`), which writes
//! it with the cgroup translation of its create.
//!
//! A VM is sized at create (`crate::sizing`) and cannot grow: a changed
//! memory limit or reservation above the guest's RAM, a cpuset naming a
//! CPU beyond its vCPUs, a CPU quota worth more CPUs than it has, or
//! memory nodes other than the guest's one are refused, naming the field,
//! the value and the VM's size. A value the container already has is not
//! asked for again (a pod container's cpuset, fitted to the VM at create,
//! comes back unchanged with every CRI update). The agent checks the same
//! against the guest's `MemTotal` and online CPUs.

use oci_spec::runtime::LinuxResources;

use crate::sizing::{IdList, IdListError, SizingError};

/// The type URL containerd gives `linux.resources` in an `Any` (typeurl's
/// name for the runtime spec's `LinuxResources`; the value is its JSON).
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// What an update is checked against: the VM's size, from its create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmBounds {
    /// Guest RAM, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
}

impl From<&crate::sizing::VmSize> for VmBounds {
    fn from(s: &crate::sizing::VmSize) -> Self {
        VmBounds {
            memory_mib: s.memory_mib,
            vcpus: s.vcpus,
        }
    }
}

/// Why the VM cannot grow, and what to do instead.
const CANNOT_GROW: &str = "the VM was sized at create and cannot grow (give the container a \
                           bigger VM when creating it: a larger limit, or the husk.memory_mib \
                           and husk.vcpus annotations)";

/// Decodes the `resources` of containerd's `UpdateTaskRequest`: an `Any`
/// of type [`LINUX_RESOURCES_TYPE_URL`] holding the runtime spec's JSON.
/// An error names the type, or the field that does not parse.
pub fn from_any(type_url: &str, value: &[u8]) -> Result<LinuxResources, String> {
    if type_url != LINUX_RESOURCES_TYPE_URL {
        return Err(format!(
            "resources: type {type_url:?} is not {LINUX_RESOURCES_TYPE_URL} (the runtime \
             spec's linux.resources, as containerd sends them)"
        ));
    }
    crate::bundle::parse_json(value).map_err(|e| format!("resources (linux.resources): {e}"))
}

/// `patch` laid over `current` as runc's `update` does: a field the patch
/// leaves out, or sets to 0 (an empty cpuset), keeps its current value;
/// a quota or period alone keeps the other.
pub fn merge(current: &LinuxResources, patch: &LinuxResources) -> LinuxResources {
    fn pick<T: Copy + PartialEq + Default>(new: Option<T>, old: Option<T>) -> Option<T> {
        new.filter(|v| *v != T::default()).or(old)
    }
    let mut out = current.clone();
    if let Some(p) = patch.memory() {
        let mut m = current.memory().unwrap_or_default();
        m.set_limit(pick(p.limit(), m.limit()));
        m.set_reservation(pick(p.reservation(), m.reservation()));
        m.set_swap(pick(p.swap(), m.swap()));
        #[allow(deprecated)]
        m.set_kernel(pick(p.kernel(), m.kernel()));
        m.set_kernel_tcp(pick(p.kernel_tcp(), m.kernel_tcp()));
        m.set_swappiness(p.swappiness().or(m.swappiness()));
        m.set_disable_oom_killer(p.disable_oom_killer().or(m.disable_oom_killer()));
        out.set_memory(Some(m));
    }
    if let Some(p) = patch.cpu() {
        let mut c = current.cpu().clone().unwrap_or_default();
        c.set_shares(pick(p.shares(), c.shares()));
        c.set_quota(pick(p.quota(), c.quota()));
        c.set_period(pick(p.period(), c.period()));
        c.set_realtime_runtime(pick(p.realtime_runtime(), c.realtime_runtime()));
        c.set_realtime_period(pick(p.realtime_period(), c.realtime_period()));
        c.set_idle(p.idle().or(c.idle()));
        c.set_burst(p.burst().or(c.burst()));
        let list = |new: &Option<String>, old: &Option<String>| {
            new.clone().filter(|v| !v.trim().is_empty()).or(old.clone())
        };
        c.set_cpus(list(p.cpus(), c.cpus()));
        c.set_mems(list(p.mems(), c.mems()));
        out.set_cpu(Some(c));
    }
    if let Some(p) = patch.pids() {
        if p.limit() != 0 {
            out.set_pids(Some(*p));
        }
    }
    if let Some(w) = patch.block_io().as_ref().and_then(|b| b.weight()) {
        if w != 0 {
            let mut b = current.block_io().clone().unwrap_or_default();
            b.set_weight(Some(w));
            out.set_block_io(Some(b));
        }
    }
    if patch.devices().is_some() {
        out.set_devices(patch.devices().clone());
    }
    if patch.hugepage_limits().is_some() {
        out.set_hugepage_limits(patch.hugepage_limits().clone());
    }
    if patch.network().is_some() {
        out.set_network(patch.network().clone());
    }
    if patch.rdma().is_some() {
        out.set_rdma(patch.rdma().clone());
    }
    if patch.unified().is_some() {
        out.set_unified(patch.unified().clone());
    }
    out
}

fn field(field: &'static str, value: impl ToString, reason: String) -> SizingError {
    SizingError::Field {
        field,
        value: value.to_string(),
        reason,
    }
}

/// Checks an update from `current` to `new` against the VM (see the
/// module docs): only the values that change are checked. Also refused:
/// a change to the fields husk's guest does not apply (device rules,
/// hugepage limits, `unified`, `network`, `rdma`), which would otherwise
/// be dropped silently.
pub fn check(
    current: &LinuxResources,
    new: &LinuxResources,
    vm: VmBounds,
) -> Result<(), SizingError> {
    let ram = u64::from(vm.memory_mib) << 20;
    let (old_mem, new_mem) = (
        current.memory().unwrap_or_default(),
        new.memory().unwrap_or_default(),
    );
    for (name, v, was) in [
        (
            "linux.resources.memory.limit",
            new_mem.limit(),
            old_mem.limit(),
        ),
        (
            "linux.resources.memory.reservation",
            new_mem.reservation(),
            old_mem.reservation(),
        ),
    ] {
        if let Some(v) = v.filter(|v| *v > 0 && Some(*v) != was) {
            if v as u64 > ram {
                return Err(field(
                    name,
                    v,
                    format!(
                        "asks for {} MiB, and the VM has {} MiB of RAM: {CANNOT_GROW}",
                        (v as u64).div_ceil(1 << 20),
                        vm.memory_mib
                    ),
                ));
            }
        }
    }
    let (old_cpu, new_cpu) = (
        current.cpu().clone().unwrap_or_default(),
        new.cpu().clone().unwrap_or_default(),
    );
    if (new_cpu.quota(), new_cpu.period()) != (old_cpu.quota(), old_cpu.period()) {
        if let Some(q) = new_cpu.quota().filter(|q| *q > 0) {
            let period = new_cpu.period().filter(|p| *p > 0).unwrap_or(100_000);
            let wants = (q as u64).div_ceil(period);
            if wants > u64::from(vm.vcpus) {
                return Err(field(
                    "linux.resources.cpu.quota",
                    q,
                    format!(
                        "{wants} CPUs' worth (period {period}), and the VM has {} vCPU{}: \
                         {CANNOT_GROW}",
                        vm.vcpus,
                        if vm.vcpus == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
    }
    for (name, v, was, limit) in [
        (
            crate::sizing::CPUSET_CPUS,
            new_cpu.cpus(),
            old_cpu.cpus(),
            vm.vcpus,
        ),
        (
            crate::sizing::CPUSET_MEMS,
            new_cpu.mems(),
            old_cpu.mems(),
            1,
        ),
    ] {
        let Some(v) = v.as_deref().filter(|v| Some(*v) != was.as_deref()) else {
            continue;
        };
        let mems = name == crate::sizing::CPUSET_MEMS;
        match IdList::parse(v, limit) {
            Ok(_) => {}
            Err(IdListError::Syntax(why)) => {
                return Err(field(
                    name,
                    v,
                    format!("{why} (expected a list such as 0-3,6)"),
                ))
            }
            Err(IdListError::Beyond(n)) if mems => {
                return Err(field(
                    name,
                    v,
                    format!("names NUMA node {n}, and the guest has one NUMA node, 0"),
                ))
            }
            Err(IdListError::Beyond(n)) => {
                return Err(field(
                    name,
                    v,
                    format!(
                        "names CPU {n}, and the VM has vCPUs 0-{}: {CANNOT_GROW}",
                        vm.vcpus.saturating_sub(1)
                    ),
                ))
            }
        }
    }
    const NOT_APPLIED: &str = "husk does not apply it in the guest, so an update of it \
                               cannot be honoured";
    let unapplied: [(&'static str, bool, String); 5] = [
        (
            "linux.resources.devices",
            new.devices() != current.devices(),
            json(new.devices()),
        ),
        (
            "linux.resources.hugepageLimits",
            new.hugepage_limits() != current.hugepage_limits(),
            json(new.hugepage_limits()),
        ),
        (
            "linux.resources.unified",
            new.unified() != current.unified(),
            json(new.unified()),
        ),
        (
            "linux.resources.network",
            new.network() != current.network(),
            json(new.network()),
        ),
        (
            "linux.resources.rdma",
            new.rdma() != current.rdma(),
            json(new.rdma()),
        ),
    ];
    for (name, changed, value) in unapplied {
        if changed {
            return Err(field(name, value, NOT_APPLIED.into()));
        }
    }
    Ok(())
}

/// A resources field as JSON, for an error message (`null` when unset).
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Parses a byte count as runc's `update` takes it (Docker's
/// `RAMInBytes`): a number, optionally with a fraction, then an optional
/// `k`, `m`, `g`, `t` or `p` (powers of 1024, any case), an optional `i`
/// and an optional `b`: `64M`, `1.5g`, `512KiB`, `1048576`. `-1` is no
/// limit.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let bad = || {
        format!("{s:?} is not a size (a number of bytes, or with a unit: 64M, 1.5g, 512KiB; -1 for no limit)")
    };
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad());
    }
    let mut unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    if unit.ends_with('b') {
        unit.pop();
    }
    if unit.len() == 2 && unit.ends_with('i') {
        unit.pop();
    }
    let shift = match unit.as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    const VM: VmBounds = VmBounds {
        memory_mib: 256,
        vcpus: 2,
    };

    #[test]
    fn sizes_parse_as_runc_takes_them() {
        for (s, want) in [
            ("64M", 64 << 20),
            ("64m", 64 << 20),
            ("64MB", 64 << 20),
            ("64MiB", 64 << 20),
            ("1.5g", 3 << 29),
            ("512 k", 512 << 10),
            ("1048576", 1 << 20),
            ("2t", 2 << 40),
            ("-1", -1),
        ] {
            assert_eq!(parse_bytes(s), Ok(want), "{s}");
        }
        for bad in [
            "", "M", "-2", "1.2.3", "64X", "64 MiBs", ".5m", "1e3", "64Mi b",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(parse_bytes("99999999p").unwrap_err().contains("too large"));
    }

    /// runc's rules: what the patch leaves out or sets to 0 keeps its
    /// value; a quota alone keeps the period.
    #[test]
    fn a_patch_changes_only_what_it_sets() {
        let current = res(serde_json::json!({
            "memory": {"limit": 128u64 << 20, "reservation": 1 << 20},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 100},
        }));
        let patch = res(serde_json::json!({
            "memory": {"limit": 64u64 << 20, "reservation": 0},
            "cpu": {"quota": 150000, "period": 0, "cpus": ""},
            "pids": {"limit": 20},
            "blockIO": {"weight": 0},
        }));
        let got = merge(&current, &patch);
        let want = res(serde_json::json!({
            "memory": {"limit": 64u64 << 20, "reservation": 1 << 20},
            "cpu": {"shares": 512, "quota": 150000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 20},
        }));
        assert_eq!(got, want);
        assert_eq!(merge(&current, &LinuxResources::default()), current);
        // Nothing before: the patch is the whole.
        let only = res(serde_json::json!({"pids": {"limit": 20}}));
        assert_eq!(merge(&LinuxResources::default(), &only), only);
    }

    /// Growing past the VM is refused naming the field, the value and the
    /// VM's size; within it, or unchanged, is fine.
    #[test]
    fn an_update_past_the_vm_is_refused() {
        let none = LinuxResources::default();
        let refused = |new: serde_json::Value| check(&none, &res(new), VM).unwrap_err().to_string();
        let e = refused(serde_json::json!({"memory": {"limit": 1u64 << 30}}));
        assert!(
            e.starts_with(
                "linux.resources.memory.limit \"1073741824\": asks for 1024 MiB, and the VM \
                 has 256 MiB of RAM: the VM was sized at create and cannot grow"
            ),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"cpus": "0-3"}}));
        assert!(
            e.starts_with(
                "linux.resources.cpu.cpus \"0-3\": names CPU 3, and the VM has vCPUs 0-1"
            ),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"quota": 250000, "period": 100000}}));
        assert!(
            e.starts_with("linux.resources.cpu.quota \"250000\": 3 CPUs' worth (period 100000), and the VM has 2 vCPUs"),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"mems": "1"}}));
        assert!(
            e.contains("names NUMA node 1, and the guest has one NUMA node, 0"),
            "{e}"
        );
        let e = refused(serde_json::json!({"unified": {"memory.high": "1"}}));
        assert!(e.starts_with("linux.resources.unified "), "{e}");
        check(
            &none,
            &res(serde_json::json!({"memory": {"limit": 256u64 << 20}, "cpu": {"cpus": "1", "quota": 200000, "mems": "0"}})),
            VM,
        )
        .unwrap();
        let big = res(
            serde_json::json!({"memory": {"limit": 1u64 << 40}, "cpu": {"cpus": "4-7"},
            "devices": [{"allow": false, "access": "rwm"}]}),
        );
        check(&big, &big, VM).unwrap();
    }

    #[test]
    fn containerd_resources_decode_by_their_type_url() {
        let json = br#"{"memory": {"limit": 67108864}, "cpu": {"shares": 2}}"#;
        let r = from_any(LINUX_RESOURCES_TYPE_URL, json).unwrap();
        assert_eq!(r.memory().unwrap().limit(), Some(67108864));
        let e = from_any(
            "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources",
            json,
        )
        .unwrap_err();
        assert!(e.contains("WindowsResources"), "{e}");
        let e = from_any(
            LINUX_RESOURCES_TYPE_URL,
            br#"{"memory": {"limit": "lots"}}"#,
        )
        .unwrap_err();
        assert!(e.contains("memory.limit"), "{e}");
    }
}
