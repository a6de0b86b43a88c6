//! cgroup v2: one cgroup per container under the agent's cgroup2 mount,
//! `linux.resources` written to its files, stats read back.

use std::fs;
use std::path::{Path, PathBuf};

use husk_protocol::CgroupStats;
use oci_spec::runtime::LinuxResources;

/// The cgroup2 magic number of statfs.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file or directory could not be written.
    #[error("cgroup {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The spec's value cannot be expressed in cgroup v2.
    #[error("{0}")]
    Invalid(String),
}

/// Whether `dir` is a cgroup2 mount.
pub fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The cgroup2 hierarchy the agent manages containers in.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    root: PathBuf,
}

impl CgroupRoot {
    /// `root` if it is a cgroup2 mount, else `None` (hosts with cgroup v1).
    pub fn detect(root: &Path) -> Option<Self> {
        is_cgroup2(root).then(|| CgroupRoot {
            root: root.to_path_buf(),
        })
    }

    /// The directory of a container's cgroup: `linux.cgroupsPath` (relative
    /// to the root) or `husk/ID`.
    pub fn path_for(&self, id: &str, cgroups_path: Option<&Path>) -> Result<PathBuf, CgroupError> {
        let rel = match cgroups_path {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from(format!("husk/{id}")),
        };
        let joined = super::mounts::join_in_root(&self.root, &rel).map_err(|_| {
            CgroupError::Invalid(format!("cgroupsPath {} leaves the root", rel.display()))
        })?;
        if joined == self.root {
            return Err(CgroupError::Invalid(
                "cgroupsPath names the root cgroup".into(),
            ));
        }
        Ok(joined)
    }

    /// Removes `dir`, then its ancestors below the root that are left
    /// empty (best effort: one still in use stays).
    pub fn remove(&self, dir: &Path) -> Result<(), CgroupError> {
        remove(dir)?;
        let mut cur = dir.parent();
        while let Some(d) = cur.filter(|d| d.starts_with(&self.root) && *d != self.root) {
            if fs::remove_dir(d).is_err() {
                break;
            }
            cur = d.parent();
        }
        Ok(())
    }

    /// Creates `dir` and enables every available controller on the way down.
    pub fn create(&self, dir: &Path) -> Result<(), CgroupError> {
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        let mut cur = self.root.clone();
        for c in rel.components() {
            enable_controllers(&cur);
            cur.push(c);
            if !cur.exists() {
                fs::create_dir(&cur).map_err(|e| CgroupError::Io {
                    path: cur.clone(),
                    source: e,
                })?;
            }
        }
        Ok(())
    }
}

/// The sub-cgroup `sub` of a container's cgroup `base`, for an exec
/// (`runc exec --cgroup`). Like runc, `sub` is cleaned lexically and may
/// not leave `base` ("bad sub cgroup path"); `/` or an empty path is
/// `base` itself. It must already exist: runc does not create it either.
pub fn sub_cgroup(base: &Path, sub: &str) -> Result<PathBuf, CgroupError> {
    use std::path::Component;
    let mut rel = PathBuf::new();
    for c in Path::new(sub).components() {
        match c {
            Component::Normal(n) => rel.push(n),
            Component::ParentDir => {
                if !rel.pop() {
                    return Err(CgroupError::Invalid(format!(
                        "bad sub cgroup path: {sub} (leaves the container's cgroup)"
                    )));
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let dir = base.join(rel);
    if !dir.join("cgroup.procs").is_file() {
        return Err(CgroupError::Invalid(format!(
            "sub cgroup {sub}: {} does not exist or is not a cgroup",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Writes `+ctrl` for each controller of `dir` into its subtree_control
/// (best effort: a controller may be busy or missing).
pub fn enable_controllers(dir: &Path) {
    let Ok(avail) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for c in avail.split_whitespace() {
        let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

fn write(dir: &Path, file: &str, value: String) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value.as_bytes()).map_err(|e| CgroupError::Io { path, source: e })
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// The files [`apply`] may write: what [`update`] saves first and writes
/// back when one of its writes fails.
const RESOURCE_FILES: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "cpu.weight",
    "cpu.max",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "io.weight",
];

/// Writes new `linux.resources` into the cgroup `dir` of a container that
/// runs (an `UpdateContainer`), with [`apply`]: the translation its create
/// used. All or nothing: when a write fails, the files written before it
/// get their old contents back.
pub fn update(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    let saved: Vec<(&str, String)> = RESOURCE_FILES
        .iter()
        .filter_map(|f| Some((*f, fs::read_to_string(dir.join(f)).ok()?)))
        .collect();
    let Err(e) = apply(dir, r) else {
        return Ok(());
    };
    for (file, old) in saved.iter().rev() {
        if fs::read_to_string(dir.join(file)).ok().as_ref() == Some(old) {
            continue;
        }
        if let Err(re) = write(dir, file, old.trim_end().to_owned()) {
            tracing::warn!(
                cgroup = %dir.display(),
                file,
                error = %husk_protocol::error_chain(&re),
                "an update failed and the old value could not be written back"
            );
        }
    }
    Err(e)
}

/// Why an update is refused: a VM cannot grow.
const CANNOT_GROW: &str = "the VM was sized at create and cannot grow";

/// What the guest has, the most an update may ask for: its memory and
/// its online CPUs and NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// `MemTotal` of /proc/meminfo, in bytes.
    pub mem_total: u64,
    /// The online CPUs (/sys/devices/system/cpu/online), as ranges.
    pub cpus: Vec<(u32, u32)>,
    /// The online NUMA nodes (/sys/devices/system/node/online).
    pub nodes: Vec<(u32, u32)>,
}

impl Capacity {
    /// The capacity of the machine the agent runs on.
    pub fn read() -> Result<Capacity, CgroupError> {
        let read = |p: &str| {
            fs::read_to_string(p).map_err(|e| CgroupError::Io {
                path: p.into(),
                source: e,
            })
        };
        let meminfo = read("/proc/meminfo")?;
        let cpus = read("/sys/devices/system/cpu/online")?;
        // A kernel without NUMA has no node directory: node 0 only.
        let nodes = read("/sys/devices/system/node/online").unwrap_or_else(|_| "0".into());
        Capacity::parse(&meminfo, &cpus, &nodes).map_err(CgroupError::Invalid)
    }

    /// The capacity from the contents of /proc/meminfo and the `online`
    /// CPU and node lists.
    pub fn parse(meminfo: &str, cpus: &str, nodes: &str) -> Result<Capacity, String> {
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no MemTotal in /proc/meminfo")?;
        let list = |s: &str, what: &str| {
            id_list(s).ok_or_else(|| format!("cannot read the online {what} list {s:?}"))
        };
        Ok(Capacity {
            mem_total: kib.saturating_mul(1024),
            cpus: list(cpus, "CPU")?,
            nodes: list(nodes, "NUMA node")?,
        })
    }

    fn cpu_count(&self) -> u64 {
        self.cpus
            .iter()
            .map(|(lo, hi)| u64::from(hi - lo) + 1)
            .sum()
    }
}

/// A list of CPU or node numbers (`0-3,6`) as ranges; `None` when it is
/// not one. Empty is an empty list.
fn id_list(s: &str) -> Option<Vec<(u32, u32)>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|part| {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let n = part.trim().parse().ok()?;
                    (n, n)
                }
            };
            (lo <= hi).then_some((lo, hi))
        })
        .collect()
}

/// The first number of `list` that `have` does not hold.
fn first_missing(list: &[(u32, u32)], have: &[(u32, u32)]) -> Option<u32> {
    list.iter()
        .flat_map(|(lo, hi)| *lo..=*hi)
        .find(|n| !have.iter().any(|(a, b)| (*a..=*b).contains(n)))
}

fn show_list(list: &[(u32, u32)]) -> String {
    let parts: Vec<String> = list
        .iter()
        .map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    parts.join(",")
}

/// Checks the resources an update asks for (`new`) against the guest
/// (`cap`): every value that differs from the container's current ones
/// (`old`) must fit the VM, which cannot grow; the fields cgroup v2 does
/// not have (kernel memory, real-time CPU time) cannot be set. A value
/// the container already had is not asked for again. Errors name the
/// field, the value and what the guest has.
pub fn check_update(
    old: Option<&LinuxResources>,
    new: &LinuxResources,
    cap: &Capacity,
) -> Result<(), CgroupError> {
    let bad = |s: String| Err(CgroupError::Invalid(s));
    let old_mem = old.and_then(|o| *o.memory()).unwrap_or_default();
    let old_cpu = old.and_then(|o| o.cpu().clone()).unwrap_or_default();
    let mib = cap.mem_total >> 20;
    if let Some(m) = new.memory() {
        for (field, v, was) in [
            ("limit", m.limit(), old_mem.limit()),
            ("reservation", m.reservation(), old_mem.reservation()),
        ] {
            if let Some(v) = v.filter(|v| *v > 0 && Some(*v) != was) {
                if v as u64 > cap.mem_total {
                    return bad(format!(
                        "linux.resources.memory.{field} {v}: asks for {} MiB, more than the \
                         guest's memory ({mib} MiB, MemTotal): {CANNOT_GROW}",
                        (v as u64).div_ceil(1 << 20)
                    ));
                }
            }
        }
        #[allow(deprecated)]
        for (field, v, was) in [
            ("kernel", m.kernel(), old_mem.kernel()),
            ("kernelTCP", m.kernel_tcp(), old_mem.kernel_tcp()),
        ] {
            if let Some(v) = v.filter(|v| *v != 0 && Some(*v) != was) {
                return bad(format!(
                    "linux.resources.memory.{field} {v}: cgroup v2, the guest's only cgroup \
                     version, has no kernel memory limit"
                ));
            }
        }
    }
    let Some(c) = new.cpu() else {
        return Ok(());
    };
    let rt_period = c
        .realtime_period()
        .filter(|v| *v != 0 && Some(*v) != old_cpu.realtime_period())
        .map(|v| v.to_string());
    let rt_runtime = c
        .realtime_runtime()
        .filter(|v| *v != 0 && Some(*v) != old_cpu.realtime_runtime())
        .map(|v| v.to_string());
    for (field, changed) in [
        ("realtimePeriod", rt_period),
        ("realtimeRuntime", rt_runtime),
    ] {
        if let Some(v) = changed {
            return bad(format!(
                "linux.resources.cpu.{field} {v}: cgroup v2, the guest's only cgroup version, \
                 has no real-time CPU time"
            ));
        }
    }
    if (c.quota(), c.period()) != (old_cpu.quota(), old_cpu.period()) {
        let period = c.period().unwrap_or(100_000);
        if c.period().is_some() && !(1000..=1_000_000).contains(&period) {
            return bad(format!(
                "linux.resources.cpu.period {period}: cgroup v2 takes 1000..=1000000 microseconds"
            ));
        }
        if let Some(q) = c.quota().filter(|q| *q > 0) {
            if q < 1000 {
                return bad(format!(
                    "linux.resources.cpu.quota {q}: cgroup v2 takes at least 1000 microseconds \
                     (or -1, no limit)"
                ));
            }
            let wants = (q as u64).div_ceil(period);
            let has = cap.cpu_count();
            if wants > has {
                return bad(format!(
                    "linux.resources.cpu.quota {q} (period {period}): {wants} CPUs' worth, and \
                     the guest has {has} vCPU{}: {CANNOT_GROW}",
                    if has == 1 { "" } else { "s" }
                ));
            }
        }
    }
    for (field, v, was, have, what) in [
        ("cpus", c.cpus(), old_cpu.cpus(), &cap.cpus, "vCPU"),
        ("mems", c.mems(), old_cpu.mems(), &cap.nodes, "NUMA node"),
    ] {
        let Some(v) = v
            .as_deref()
            .filter(|v| !v.trim().is_empty() && Some(*v) != was.as_deref())
        else {
            continue;
        };
        let Some(list) = id_list(v) else {
            return bad(format!(
                "linux.resources.cpu.{field} {v:?}: not a list such as 0-3,6"
            ));
        };
        if let Some(n) = first_missing(&list, have) {
            return bad(format!(
                "linux.resources.cpu.{field} {v:?}: names {what} {n}, and the guest has {what}s \
                 {}: {CANNOT_GROW}",
                show_list(have)
            ));
        }
    }
    Ok(())
}

/// Asks the kernel to freeze (`true`) or thaw the cgroup `dir` (cgroup v2
/// `cgroup.freeze`); [`is_frozen`] says when it is done.
pub fn set_frozen(dir: &Path, frozen: bool) -> Result<(), CgroupError> {
    write(dir, "cgroup.freeze", if frozen { "1" } else { "0" }.into())
}

/// Whether the cgroup `dir` is frozen, as its `cgroup.events` says
/// (`None`: it cannot be read).
pub fn is_frozen(dir: &Path) -> Option<bool> {
    frozen_in(&fs::read_to_string(dir.join("cgroup.events")).ok()?)
}

/// The `frozen` key of a `cgroup.events` file's contents.
pub fn frozen_in(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| l.strip_prefix("frozen "))
        .map(|v| v.trim() == "1")
}

/// Writes `linux.resources` into the cgroup `dir`.
pub fn apply(dir: &Path, r: &LinuxResources) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            let v = if l < 0 {
                "max".to_string()
            } else {
                l.to_string()
            };
            write(dir, "memory.max", v)?;
            if let Some(s) = m.swap() {
                let v = if s < 0 {
                    "max".to_string()
                } else {
                    (s - l.max(0)).max(0).to_string()
                };
                let _ = write(dir, "memory.swap.max", v);
            }
        }
        if let Some(res) = m.reservation() {
            write(dir, "memory.low", res.to_string())?;
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            write(dir, "cpu.weight", shares_to_weight(s).to_string())?;
        }
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().unwrap_or(100_000);
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            write(dir, "cpu.max", format!("{quota} {period}"))?;
        }
        if let Some(cpus) = c.cpus() {
            write(dir, "cpuset.cpus", cpus.clone())?;
        }
        if let Some(mems) = c.mems() {
            write(dir, "cpuset.mems", mems.clone())?;
        }
    }
    if let Some(p) = r.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        write(dir, "pids.max", v)?;
    }
    if let Some(io) = r.block_io() {
        if let Some(w) = io.weight() {
            // `io.weight` is there only with an I/O controller that weighs
            // (iocost, BFQ); the guest has neither, and no block device to
            // weigh (its root is virtio-fs): a clear refusal, not a failed
            // write of a file that is not there.
            if !dir.join("io.weight").exists() {
                return Err(CgroupError::Invalid(format!(
                    "linux.resources.blockIO.weight {w}: the guest has no block devices \
                     (its root is virtio-fs) and no I/O controller that weighs, so an I/O \
                     weight cannot be honoured in the VM"
                )));
            }
            // blkio weight 10..1000 to io.weight 1..10000.
            let w = 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
            write(dir, "io.weight", format!("default {w}"))?;
        }
    }
    Ok(())
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file)).ok()?.trim().parse().ok()
}

fn read_keyed(dir: &Path, file: &str) -> Vec<(String, u64)> {
    let Ok(s) = fs::read_to_string(dir.join(file)) else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the numbers of the cgroup `dir`.
pub fn stats(dir: &Path) -> CgroupStats {
    let cpu = read_keyed(dir, "cpu.stat");
    let get = |k: &str| cpu.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    let mem_stat = read_keyed(dir, "memory.stat");
    CgroupStats {
        memory_usage: read_u64(dir, "memory.current"),
        memory_limit: read_u64(dir, "memory.max"),
        memory_stat: mem_stat
            .into_iter()
            .filter(|(k, _)| k == "anon" || k == "file")
            .collect(),
        cpu_usage_usec: get("usage_usec"),
        cpu_user_usec: get("user_usec"),
        cpu_system_usec: get("system_usec"),
        pids_current: read_u64(dir, "pids.current"),
        pids_limit: read_u64(dir, "pids.max"),
        memory_events: read_keyed(dir, MEMORY_EVENTS),
    }
}

/// The file in which cgroup v2 counts memory events (`oom_kill` among
/// them) for a cgroup and its descendants; the kernel notifies each change
/// (see [`EventsFile`]).
pub const MEMORY_EVENTS: &str = "memory.events";

/// The `oom_kill` count of a `memory.events` text (0 without one).
pub fn parse_oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "oom_kill")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// How many processes the OOM killer has killed in the cgroup `dir` and
/// below (0 without the memory controller).
pub fn oom_kills(dir: &Path) -> u64 {
    fs::read_to_string(dir.join(MEMORY_EVENTS))
        .map(|t| parse_oom_kills(&t))
        .unwrap_or(0)
}

/// A cgroup v2 events file (`memory.events`, `cgroup.events`) held open
/// so that poll(2) tells when it changes: the kernel reports `POLLPRI`
/// (with `POLLERR`) on the open file once a value in it changed after its
/// last read. Reading it again ([`EventsFile::read`]) arms it for the
/// next change, so nothing is read until something happened (no busy
/// polling; the guest kernel has no inotify). The kernel sends at most
/// one notification per file every 10 ms.
#[derive(Debug)]
pub struct EventsFile {
    file: fs::File,
}

impl EventsFile {
    /// Opens `path` and reads it once (arming it): the file and what it
    /// holds now.
    pub fn open(path: &Path) -> std::io::Result<(Self, String)> {
        let mut f = EventsFile {
            file: fs::File::open(path)?,
        };
        let text = f.read()?;
        Ok((f, text))
    }

    /// Reads the whole file from its start again, arming it for the next
    /// change.
    pub fn read(&mut self) -> std::io::Result<String> {
        use std::io::{Read, Seek};
        self.file.rewind()?;
        let mut text = String::new();
        self.file.read_to_string(&mut text)?;
        Ok(text)
    }
}

impl std::os::fd::AsFd for EventsFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// `dir` and every cgroup below it, parents before their children
/// (iteratively: the depth is up to whoever made the sub-cgroups).
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The pids in the cgroup `dir` and its sub-cgroups (an exec's
/// `--cgroup`, or ones the container made).
pub fn procs(dir: &Path) -> Vec<i32> {
    tree(dir)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Removes the cgroup `dir`, its sub-cgroups first (they must be empty of
/// processes).
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    for d in tree(dir).iter().rev() {
        remove_one(d)?;
    }
    Ok(())
}

fn remove_one(dir: &Path) -> Result<(), CgroupError> {
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => {
                return Err(CgroupError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    Err(CgroupError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blockIO weight where the cgroup has no `io.weight` (the guest's)
    /// is refused naming the field; where it has one, it is written.
    #[test]
    fn a_blkio_weight_without_io_weight_is_refused_naming_the_field() {
        let r: LinuxResources = serde_json::from_str(r#"{"blockIO": {"weight": 500}}"#).unwrap();
        let t = tempfile::tempdir().unwrap();
        let e = apply(t.path(), &r).unwrap_err().to_string();
        assert!(e.contains("linux.resources.blockIO.weight 500"), "{e}");
        assert!(!t.path().join("io.weight").exists());
        fs::write(t.path().join("io.weight"), "default 100\n").unwrap();
        apply(t.path(), &r).unwrap();
        assert_eq!(
            fs::read_to_string(t.path().join("io.weight")).unwrap(),
            format!("default {}", 1 + (500 - 10) * 9999 / 990)
        );
    }

    #[test]
    fn procs_include_the_sub_cgroups() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        for (d, pids) in [("", "1\n2\n"), ("a", "3\n"), ("a/b", "4\n"), ("c", "")] {
            fs::create_dir_all(base.join(d)).unwrap();
            fs::write(base.join(d).join("cgroup.procs"), pids).unwrap();
        }
        let mut got = procs(base);
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[test]
    fn sub_cgroups_stay_inside_and_must_exist() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("husk/c");
        for d in ["", "a", "a/b"] {
            fs::create_dir_all(base.join(d)).unwrap();
            fs::write(base.join(d).join("cgroup.procs"), "").unwrap();
        }
        fs::create_dir_all(base.join("plain")).unwrap();
        assert_eq!(sub_cgroup(&base, "a").unwrap(), base.join("a"));
        assert_eq!(sub_cgroup(&base, "/a/b").unwrap(), base.join("a/b"));
        assert_eq!(sub_cgroup(&base, "a/b/../.").unwrap(), base.join("a"));
        assert_eq!(sub_cgroup(&base, "/").unwrap(), base);
        assert_eq!(sub_cgroup(&base, "").unwrap(), base);
        for bad in ["..", "a/../..", "/../c", "../../husk/c"] {
            let e = sub_cgroup(&base, bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("bad sub cgroup path: {bad} (leaves the container's cgroup)")
            );
        }
        for missing in ["nope", "plain"] {
            let e = sub_cgroup(&base, missing).unwrap_err().to_string();
            assert!(e.starts_with(&format!("sub cgroup {missing}: ")), "{e}");
            assert!(e.ends_with("does not exist or is not a cgroup"), "{e}");
        }
    }

    /// A cgroup directory with the files `apply` writes, as a fresh
    /// cgroup v2 has them.
    fn fake_cgroup() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (f, v) in [
            ("memory.max", "max\n"),
            ("memory.swap.max", "max\n"),
            ("memory.low", "0\n"),
            ("cpu.weight", "100\n"),
            ("cpu.max", "max 100000\n"),
            ("cpuset.cpus", "\n"),
            ("cpuset.mems", "\n"),
            ("pids.max", "max\n"),
        ] {
            fs::write(t.path().join(f), v).unwrap();
        }
        t
    }

    fn res(v: serde_json::Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    fn read(t: &tempfile::TempDir, f: &str) -> String {
        fs::read_to_string(t.path().join(f)).unwrap()
    }

    /// An update goes through the create's translation (`apply`).
    #[test]
    fn an_update_writes_what_a_create_would() {
        let t = fake_cgroup();
        let r = res(serde_json::json!({
            "memory": {"limit": 67108864, "reservation": 1048576},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
            "pids": {"limit": 20},
        }));
        update(t.path(), &r).unwrap();
        assert_eq!(read(&t, "memory.max"), "67108864");
        assert_eq!(read(&t, "memory.low"), "1048576");
        assert_eq!(read(&t, "cpu.weight"), shares_to_weight(1024).to_string());
        assert_eq!(read(&t, "cpu.max"), "50000 100000");
        assert_eq!(read(&t, "cpuset.cpus"), "0");
        assert_eq!(read(&t, "pids.max"), "20");
    }

    /// A write that fails part way leaves every file as it was.
    #[test]
    fn a_failed_update_writes_the_old_values_back() {
        let t = fake_cgroup();
        // pids.max cannot be written (a directory where the file was).
        fs::remove_file(t.path().join("pids.max")).unwrap();
        fs::create_dir(t.path().join("pids.max")).unwrap();
        let r = res(serde_json::json!({
            "memory": {"limit": 67108864}, "cpu": {"quota": 50000}, "pids": {"limit": 20},
        }));
        let e = update(t.path(), &r).unwrap_err().to_string();
        assert!(e.contains("pids.max"), "{e}");
        assert_eq!(read(&t, "memory.max"), "max");
        assert_eq!(read(&t, "cpu.max"), "max 100000");
    }

    fn guest() -> Capacity {
        Capacity::parse(
            "MemTotal:         247000 kB\nMemFree: 1 kB\n",
            "0-1\n",
            "0\n",
        )
        .unwrap()
    }

    #[test]
    fn the_guest_capacity_parses() {
        let c = guest();
        assert_eq!(c.mem_total, 247_000 * 1024);
        assert_eq!((c.cpus.clone(), c.cpu_count()), (vec![(0, 1)], 2));
        assert_eq!(id_list("0-3,6,8-9\n"), Some(vec![(0, 3), (6, 6), (8, 9)]));
        for bad in ["x", "3-1", "1,,2", "-1"] {
            assert_eq!(id_list(bad), None, "{bad}");
        }
        assert!(Capacity::parse("MemFree: 1 kB\n", "0", "0").is_err());
    }

    /// What a VM cannot honour is refused naming the field, the value and
    /// what the guest has; a value the container already had is not
    /// asked for again, and less than the guest has is fine.
    #[test]
    fn an_update_beyond_the_guest_is_refused_naming_the_field() {
        let cap = guest();
        let ok = |old: serde_json::Value, new: serde_json::Value| {
            check_update(Some(&res(old)), &res(new), &cap)
        };
        let refused =
            |new: serde_json::Value| check_update(None, &res(new), &cap).unwrap_err().to_string();
        let e = refused(serde_json::json!({"memory": {"limit": 1u64 << 30}}));
        assert_eq!(
            e,
            "linux.resources.memory.limit 1073741824: asks for 1024 MiB, more than the guest's \
             memory (241 MiB, MemTotal): the VM was sized at create and cannot grow"
        );
        let e = refused(serde_json::json!({"cpu": {"cpus": "0-3"}}));
        assert_eq!(
            e,
            "linux.resources.cpu.cpus \"0-3\": names vCPU 2, and the guest has vCPUs 0-1: \
             the VM was sized at create and cannot grow"
        );
        let e = refused(serde_json::json!({"cpu": {"quota": 300000, "period": 100000}}));
        assert!(e.starts_with("linux.resources.cpu.quota 300000 (period 100000): 3 CPUs' worth, and the guest has 2 vCPUs"), "{e}");
        let e = refused(serde_json::json!({"cpu": {"mems": "1"}}));
        assert!(
            e.starts_with("linux.resources.cpu.mems \"1\": names NUMA node 1"),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"cpus": "a"}}));
        assert!(
            e.starts_with("linux.resources.cpu.cpus \"a\": not a list"),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"period": 10}}));
        assert!(e.starts_with("linux.resources.cpu.period 10: "), "{e}");
        let e = refused(serde_json::json!({"memory": {"kernel": 1048576}}));
        assert!(
            e.starts_with("linux.resources.memory.kernel 1048576: "),
            "{e}"
        );
        let e = refused(serde_json::json!({"cpu": {"realtimeRuntime": 950000}}));
        assert!(
            e.starts_with("linux.resources.cpu.realtimeRuntime 950000: "),
            "{e}"
        );
        // Within the guest, or unlimited.
        let fits = serde_json::json!({"memory": {"limit": 64u64 << 20, "swap": -1},
            "cpu": {"cpus": "1", "quota": 200000, "period": 100000, "mems": "0"},
            "pids": {"limit": 20}});
        ok(serde_json::json!({}), fits).unwrap();
        ok(
            serde_json::json!({}),
            serde_json::json!({"memory": {"limit": -1}, "cpu": {"quota": -1}}),
        )
        .unwrap();
        // Unchanged: a pod container's cpuset or limit from its create.
        let big = serde_json::json!({"memory": {"limit": 1u64 << 40}, "cpu": {"cpus": "4-7"}});
        ok(big.clone(), big).unwrap();
    }

    #[test]
    fn frozen_is_read_from_cgroup_events() {
        assert_eq!(frozen_in("populated 1\nfrozen 1\n"), Some(true));
        assert_eq!(frozen_in("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(frozen_in("populated 1\n"), None);
    }

    #[test]
    fn oom_kills_come_from_memory_events() {
        let text = "low 0\nhigh 3\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), 2);
        assert_eq!(parse_oom_kills("oom 1\n"), 0);
        assert_eq!(parse_oom_kills("oom_kill x\n"), 0);
        let t = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(t.path()), 0, "no memory controller");
        fs::write(t.path().join(MEMORY_EVENTS), text).unwrap();
        assert_eq!(oom_kills(t.path()), 2);
        let s = stats(t.path());
        assert_eq!(s.oom_kills(), 2);
        assert_eq!(s.memory_events[2], ("max".to_owned(), 17));
        // The same open file reads what it holds now, every time.
        let (mut f, first) = EventsFile::open(&t.path().join(MEMORY_EVENTS)).unwrap();
        assert_eq!(parse_oom_kills(&first), 2);
        fs::write(t.path().join(MEMORY_EVENTS), "oom_kill 15\n").unwrap();
        assert_eq!(parse_oom_kills(&f.read().unwrap()), 15);
    }

    /// Whether `f` polls `POLLPRI` within `ms` milliseconds.
    fn notified(f: &EventsFile, ms: i32) -> bool {
        use std::os::fd::{AsFd, AsRawFd};
        let mut p = [libc::pollfd {
            fd: f.as_fd().as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        }];
        crate::sys::poll(&mut p, ms).unwrap() == 1 && p[0].revents & libc::POLLPRI != 0
    }

    /// The kernel's notification of a cgroup v2 events file, as the
    /// agent's loop waits for `memory.events`: on this host's (empty)
    /// cgroup2 hierarchy through `cgroup.events`, whose `populated`
    /// changes when a process joins or leaves (the kernel notifies both
    /// the same way). Silent until a change, notified once per change,
    /// armed again by a read.
    #[test]
    fn an_events_file_polls_pollpri_once_per_change() {
        let Some(root) = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|p| is_cgroup2(p))
        else {
            husk_test_support::skip!("no cgroup2 hierarchy on this host");
        };
        husk_test_support::require!(husk_test_support::root(), "making a cgroup");
        /// The test's cgroup and its process, gone however the test ends.
        struct Scratch(PathBuf, Option<std::process::Child>);
        impl Drop for Scratch {
            fn drop(&mut self) {
                if let Some(mut c) = self.1.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = remove(&self.0);
            }
        }
        let mut scratch = Scratch(
            root.join(format!("husk-events-test-{}", std::process::id())),
            None,
        );
        fs::create_dir(&scratch.0).unwrap();
        let (mut f, text) = EventsFile::open(&scratch.0.join("cgroup.events")).unwrap();
        assert!(text.contains("populated 0"), "{text}");
        assert!(!notified(&f, 200), "notified without a change");
        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        scratch.1 = Some(child);
        fs::write(scratch.0.join("cgroup.procs"), pid.to_string()).unwrap();
        assert!(notified(&f, 5000), "no notification when a process joined");
        // Still pending until read; then quiet again.
        assert!(notified(&f, 0));
        assert!(f.read().unwrap().contains("populated 1"));
        assert!(!notified(&f, 200), "notified again without a change");
        let mut child = scratch.1.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(notified(&f, 5000), "no notification when it left");
        assert!(f.read().unwrap().contains("populated 0"));
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }
}
