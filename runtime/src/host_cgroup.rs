//! The container's cgroup on the host: the VM's host processes (the
//! monitor, and what it starts: the qemu engine or the builtin engine's
//! threads, virtiofsd, husk-vsockd) live in the cgroup
//! `linux.cgroupsPath` names, on every hierarchy the host has mounted, with
//! limits derived from the VM's size ([`HostLimits`]). The container's own
//! `linux.resources` are still enforced in the guest, by the agent; this
//! is what accounts for and bounds the VM as a whole on the host (Kata's
//! `sandbox_cgroup_only`), and what tools reading the container's cgroup on
//! the host find.
//!
//! Paths follow runc ([`CgroupPath`]):
//! - an absolute `cgroupsPath` is relative to each hierarchy's root;
//! - a relative one is relative to the runtime's own cgroup in each
//!   hierarchy (`/proc/self/cgroup`; on a pure cgroup v2 host, to its
//!   parent, as runc does: a v2 cgroup holding processes cannot hand
//!   controllers to children);
//! - unset, it is `/husk/<id>` (the operator's `HUSK_CGROUP_PARENT`
//!   replaces `/husk`);
//! - with `--systemd-cgroup`, `slice:prefix:name` is systemd's layout:
//!   `kubepods-burstable-podX.slice` nests as
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podX.slice`
//!   and the leaf is `prefix-name.scope` (unset: `system.slice:husk:<id>`).
//!   husk does not talk to systemd (the hosts it runs on have no D-Bus):
//!   it makes that path on cgroupfs directly.
//!
//! A `..` component, control characters, or a path naming a hierarchy's
//! root are refused, naming `linux.cgroupsPath`. The leaf must not exist
//! yet: `delete` kills whatever is left in it and removes it, so it is the
//! container's alone.
//!
//! Layouts ([`Layout`]): cgroup v1 (one hierarchy per mounted controller
//! set, `name=systemd` included), pure v2, and hybrid (v1 controllers plus
//! an empty cgroup2 at `/sys/fs/cgroup/unified`): the leaf is made in every
//! one of them. `memory`, `cpu` and `pids` must be found on some hierarchy
//! (a v1 mount, or the v2 root's `cgroup.controllers`); on v2 they are
//! enabled in each parent's `cgroup.subtree_control` on the way down; on v1
//! each new cpuset cgroup gets its parent's `cpuset.cpus` and
//! `cpuset.mems` (an empty cpuset cannot be joined).
//!
//! The monitor joins the cgroup between fork and exec ([`Joiner`]), so
//! everything it starts inherits it. `create` records the cgroup in the
//! container's state before it makes a directory, so a `delete` after a
//! crash still removes it ([`remove`]).
//!
//! Hand-written rather than `cgroups-rs` (0.5, in Cargo.lock through
//! containerd-shim): that crate drives either v1 or v2, not the hybrid
//! layout's both; its systemd support needs D-Bus; and runc's path rules,
//! the errors naming `linux.cgroupsPath` and the join between fork and
//! exec would be ours anyway. What is left is a few file writes.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxResources, Spec};
use procfs::process::MountInfo;
use serde::{Deserialize, Serialize};

use crate::sizing::VmSize;

/// The spec field this module is about.
pub const FIELD: &str = "linux.cgroupsPath";

/// The parent of the default cgroup (`/husk/<id>`); the operator's
/// [`PARENT_ENV`] replaces it.
pub const DEFAULT_PARENT: &str = "/husk";

/// The operator's setting for the parent of the default cgroup (a
/// cgroupfs path; not used with `--systemd-cgroup`).
pub const PARENT_ENV: &str = "HUSK_CGROUP_PARENT";

/// The default systemd slice (`system.slice:husk:<id>`).
pub const DEFAULT_SLICE: &str = "system.slice";

/// The scope prefix of the default systemd path.
pub const DEFAULT_PREFIX: &str = "husk";

/// Host memory the VM's processes need beyond guest RAM, MiB: the engine
/// (qemu's heap, and under TCG its translation cache: the largest part),
/// the monitor, virtiofsd and husk-vsockd, the kernel's memory for
/// them (page tables over the guest's RAM, sockets), and what virtiofsd
/// has in the page cache (reclaimable, so it only makes the kernel reclaim
/// sooner). Measured (QEMU TCG, debug build, a busybox container writing
/// 300 MiB and walking its rootfs): guest RAM touched (shmem) 138 MiB,
/// qemu's anonymous memory 60 MiB, kernel 5 MiB, the other processes
/// 3 MiB, page cache 100 MiB: about 70 MiB that is not guest RAM and
/// cannot be reclaimed. 192 leaves room for a larger translation cache.
pub const HOST_MEMORY_OVERHEAD_MIB: u64 = 192;

/// Host CPUs the VM may use beyond its vCPUs, when the spec sets a CPU
/// quota: the monitor's I/O threads, qemu's main loop and virtiofsd's
/// workers serve the guest while its vCPUs run.
pub const HOST_CPU_OVERHEAD: u64 = 1;

/// Host tasks (threads count as tasks in the `pids` controller) the VM
/// may have beyond [`HOST_PIDS_PER_VCPU`] per vCPU: measured 17 for an
/// idle 1-vCPU VM on qemu (monitor 5, qemu 3, vhost-device-vsock 5,
/// virtiofsd 4), and qemu's and virtiofsd's worker pools grow under I/O
/// (qemu's to 64 threads). The base bounds a runaway or hijacked daemon
/// and is never reached by a working VM.
pub const HOST_PIDS_BASE: u64 = 256;
/// Host tasks per vCPU (a vCPU thread, and qemu's per-vCPU helpers).
pub const HOST_PIDS_PER_VCPU: u64 = 4;

/// The controllers husk sets limits with; each must be on some hierarchy.
const REQUIRED: [&str; 3] = ["memory", "cpu", "pids"];

/// Why the container's host cgroup cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FIELD} {shown}: {reason}")]
pub struct HostCgroupError {
    /// The path as the spec gave it (quoted), or the default it got.
    pub shown: String,
    /// What is wrong.
    pub reason: String,
}

/// Where a container's cgroup is, before it is placed on the host's
/// hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath {
    /// `linux.cgroupsPath` quoted, or `(unset, so "/husk/ID")`, for
    /// messages.
    pub shown: String,
    /// Its components, from the root (or from the runtime's own cgroup).
    pub parts: Vec<String>,
    /// Relative to the runtime's own cgroup.
    pub relative: bool,
}

impl CgroupPath {
    /// The path of a container `id` whose spec says `value`
    /// (`linux.cgroupsPath`, `None` or empty when unset), in systemd's
    /// `slice:prefix:name` form when `systemd`. Unset, it is
    /// `PARENT/<id>`, `parent` being the operator's [`PARENT_ENV`] or
    /// [`DEFAULT_PARENT`] (with `systemd`: `system.slice:husk:<id>`).
    pub fn resolve(
        value: Option<&str>,
        id: &str,
        systemd: bool,
        parent: Option<&str>,
    ) -> Result<Self, HostCgroupError> {
        match value.filter(|v| !v.is_empty()) {
            Some(v) => Self::parse(v, systemd),
            None => {
                let parent = parent.filter(|p| !p.is_empty() && !systemd);
                let default = if systemd {
                    format!("{DEFAULT_SLICE}:{DEFAULT_PREFIX}:{id}")
                } else {
                    let parent = parent.unwrap_or(DEFAULT_PARENT);
                    format!("{}/{id}", parent.trim_end_matches('/'))
                };
                let shown = match parent {
                    Some(p) => format!("(unset, so {default:?}, under {PARENT_ENV}={p:?})"),
                    None => format!("(unset, so {default:?})"),
                };
                let mut p = Self::parse(&default, systemd).map_err(|e| HostCgroupError {
                    shown: shown.clone(),
                    reason: e.reason,
                })?;
                p.shown = shown;
                Ok(p)
            }
        }
    }

    /// Parses a set `linux.cgroupsPath`; refuses what cannot name a cgroup
    /// of the container's own.
    pub fn parse(value: &str, systemd: bool) -> Result<Self, HostCgroupError> {
        let shown = format!("{value:?}");
        let bad = |reason: String| HostCgroupError {
            shown: shown.clone(),
            reason,
        };
        if value.chars().any(|c| c.is_control()) {
            return Err(bad("has a control character".into()));
        }
        let (parts, relative) = if systemd {
            (systemd_parts(value).map_err(bad)?, false)
        } else {
            let mut parts = Vec::new();
            for c in value.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        return Err(bad(
                            "has a \"..\" component: a cgroup path may not climb out of \
                             its parent"
                                .into(),
                        ))
                    }
                    c => parts.push(c.to_owned()),
                }
            }
            (parts, !value.starts_with('/'))
        };
        if parts.is_empty() {
            return Err(bad(if relative {
                "names the runtime's own cgroup, not one of the container's".into()
            } else {
                "names the root cgroup, not one of the container's".into()
            }));
        }
        Ok(CgroupPath {
            shown,
            parts,
            relative,
        })
    }

    /// The path as a string (`/a/b`, or `a/b` when relative).
    pub fn display(&self) -> String {
        let joined = self.parts.join("/");
        if self.relative {
            joined
        } else {
            format!("/{joined}")
        }
    }

    fn error(&self, reason: impl Into<String>) -> HostCgroupError {
        HostCgroupError {
            shown: self.shown.clone(),
            reason: reason.into(),
        }
    }
}

/// Whether `value` has systemd's `slice:prefix:name` shape (the shim takes
/// such a `cgroupsPath` as systemd's, as containerd's CRI writes it with
/// `SystemdCgroup`; a cgroupfs path from CRI starts with `/`).
pub fn looks_like_systemd(value: &str) -> bool {
    !value.starts_with('/') && value.split(':').count() == 3
}

/// systemd's `slice:prefix:name` as path components (runc's expansion).
fn systemd_parts(value: &str) -> Result<Vec<String>, String> {
    let fields: Vec<&str> = value.split(':').collect();
    let [slice, prefix, name] = fields[..] else {
        return Err("with --systemd-cgroup it must be \"slice:prefix:name\"".into());
    };
    let slice = if slice.is_empty() {
        DEFAULT_SLICE
    } else {
        slice
    };
    if name.is_empty() {
        return Err("the name (after the second ':') is empty".into());
    }
    if name.contains('/') || prefix.contains('/') {
        return Err("a systemd unit name has no '/'".into());
    }
    if name == ".." || name == "." {
        return Err(format!("{name:?} is not a unit name"));
    }
    let mut parts = expand_slice(slice)?;
    parts.push(if name.ends_with(".slice") {
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    });
    Ok(parts)
}

/// systemd's nesting of a slice name: `a-b-c.slice` is
/// `a.slice/a-b.slice/a-b-c.slice`, `-.slice` the root.
pub fn expand_slice(slice: &str) -> Result<Vec<String>, String> {
    let invalid = || format!("invalid slice name {slice:?}");
    let stem = slice.strip_suffix(".slice").ok_or_else(invalid)?;
    if slice.contains('/') {
        return Err(invalid());
    }
    if stem == "-" {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    let mut prefix = String::new();
    for word in stem.split('-') {
        // "-a.slice", "a--b.slice", "a-.slice" and ".slice" are not slices.
        if word.is_empty() {
            return Err(invalid());
        }
        parts.push(format!("{prefix}{word}.slice"));
        prefix.push_str(word);
        prefix.push('-');
    }
    Ok(parts)
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The cgroup at the top of the mount (mountinfo's root field: `/`
    /// unless a subtree is bind-mounted).
    pub mount_root: String,
    /// cgroup v2.
    pub unified: bool,
    /// The controllers: a v1 mount's (`cpu`, `name=systemd`), or those a v2
    /// root offers (`cgroup.controllers` at the top of the mount).
    pub controllers: Vec<String>,
    /// This process's cgroup in it, as `/proc/self/cgroup` says.
    pub own: String,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// The directory of cgroup `path` (`/a/b`, as `/proc/PID/cgroup` names
    /// it) under this mount, if the mount shows it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let root = self.mount_root.trim_end_matches('/');
        let rest = path.strip_prefix(root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let mut dir = self.mount.clone();
        dir.extend(rest.split('/').filter(|c| !c.is_empty()));
        Some(dir)
    }
}

/// The host's cgroup hierarchies, as this process sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Every hierarchy this process is in that is mounted.
    pub hierarchies: Vec<Hierarchy>,
}

impl Layout {
    /// This host's layout, from `/proc/self/mountinfo`, `/proc/self/cgroup`
    /// and the v2 root's `cgroup.controllers`.
    pub fn probe() -> io::Result<Layout> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let cgroup = fs::read_to_string("/proc/self/cgroup")?;
        Ok(Layout::parse(&mountinfo, &cgroup, |p| {
            fs::read_to_string(p).ok()
        }))
    }

    /// The layout from the text of `/proc/self/mountinfo` and
    /// `/proc/self/cgroup`, reading a v2 mount's `cgroup.controllers`
    /// through `read`.
    pub fn parse(mountinfo: &str, cgroup: &str, read: impl Fn(&Path) -> Option<String>) -> Layout {
        let mounts: Vec<MountInfo> = crate::mounts::parse_mountinfo(mountinfo)
            .into_iter()
            .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
            .collect();
        let mut hierarchies = Vec::new();
        for line in cgroup.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_id), Some(ctrls), Some(own)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let controllers: Vec<String> = ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect();
            let unified = controllers.is_empty();
            let found = mounts.iter().find(|m| {
                if unified {
                    m.fs_type == "cgroup2"
                } else {
                    m.fs_type == "cgroup"
                        && controllers.iter().all(|c| has_option(&m.super_options, c))
                }
            });
            let Some(MountInfo {
                mount_point: mount,
                root: mount_root,
                ..
            }) = found
            else {
                continue;
            };
            let controllers = if unified {
                read(&mount.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            } else {
                controllers
            };
            hierarchies.push(Hierarchy {
                mount: mount.clone(),
                mount_root: mount_root.clone(),
                unified,
                controllers,
                own: own.to_owned(),
            });
        }
        Layout { hierarchies }
    }

    /// Whether every hierarchy is cgroup v2.
    pub fn pure_v2(&self) -> bool {
        !self.hierarchies.is_empty() && self.hierarchies.iter().all(|h| h.unified)
    }

    /// Where `path` is on every hierarchy; refuses a host without one of
    /// the [`REQUIRED`] controllers, or a relative path where this
    /// process's cgroup is not visible.
    pub fn place(&self, path: &CgroupPath) -> Result<Placement, HostCgroupError> {
        if self.hierarchies.is_empty() {
            return Err(path.error("the host has no cgroup hierarchy mounted"));
        }
        for c in REQUIRED {
            if !self.hierarchies.iter().any(|h| h.has(c)) {
                return Err(path.error(format!(
                    "the host has no {c} controller (on a cgroup v1 mount or in the v2 \
                     root's cgroup.controllers): the VM's {c} cannot be limited"
                )));
            }
        }
        let pure_v2 = self.pure_v2();
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let base = if path.relative {
                let own = if pure_v2 {
                    // runc's rule on v2: next to the runtime's cgroup.
                    match h.own.rsplit_once('/') {
                        Some(("", _)) | None => "/",
                        Some((parent, _)) => parent,
                    }
                } else {
                    h.own.as_str()
                };
                h.dir_of(own).ok_or_else(|| {
                    path.error(format!(
                        "relative to this process's cgroup {own}, which {} does not show",
                        h.mount.display()
                    ))
                })?
            } else {
                h.mount.clone()
            };
            let mut leaf = base;
            leaf.extend(&path.parts);
            dirs.push(Placed {
                top: h.mount.clone(),
                leaf,
                unified: h.unified,
                controllers: h.controllers.clone(),
            });
        }
        Ok(Placement {
            path: path.clone(),
            dirs,
        })
    }
}

/// Whether mount options `opts` hold `opt` (`cpu`, or `name=systemd`
/// as a key with its value).
fn has_option(opts: &HashMap<String, Option<String>>, opt: &str) -> bool {
    match opt.split_once('=') {
        Some((k, v)) => opts.get(k).is_some_and(|x| x.as_deref() == Some(v)),
        None => opts.contains_key(opt),
    }
}

/// A cgroup's directory on one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The hierarchy's mount point.
    pub top: PathBuf,
    /// The container's cgroup.
    pub leaf: PathBuf,
    /// cgroup v2.
    pub unified: bool,
    /// The controllers of the hierarchy.
    pub controllers: Vec<String>,
}

/// A container's cgroup on every hierarchy, not made yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The path it came from.
    pub path: CgroupPath,
    /// One per hierarchy.
    pub dirs: Vec<Placed>,
}

/// What a container's state records of its host cgroup, so that `delete`
/// (also after a crash of `create`) removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroupState {
    /// The path (`/husk/c1`, `/kubepods.slice/.../x.scope`).
    pub path: String,
    /// The container's cgroup on each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// Directories above them that did not exist before `create` made
    /// them, deepest first: removed on delete when nothing else uses them.
    pub parents: Vec<PathBuf>,
}

impl Placement {
    /// Checks that the container's cgroup does not exist on any hierarchy
    /// yet (it is the container's alone: `delete` kills what is in it),
    /// and lists what `create` will make, for the state.
    pub fn claim(&self) -> Result<HostCgroupState, HostCgroupError> {
        let mut parents = Vec::new();
        for d in &self.dirs {
            if d.leaf.exists() {
                return Err(self.path.error(format!(
                    "{} exists already: the container's cgroup must be its own (delete \
                     the other container, or remove the cgroup)",
                    d.leaf.display()
                )));
            }
            let mut up = d.leaf.parent();
            let mut missing = Vec::new();
            while let Some(p) = up.filter(|p| p.starts_with(&d.top) && *p != d.top) {
                if p.exists() {
                    break;
                }
                missing.push(p.to_owned());
                up = p.parent();
            }
            parents.extend(missing);
        }
        Ok(HostCgroupState {
            path: self.path.display(),
            dirs: self.dirs.iter().map(|d| d.leaf.clone()).collect(),
            parents,
        })
    }

    /// Makes the container's cgroup on every hierarchy with `limits`. On
    /// failure, what it made stays listed in the state [`Placement::claim`]
    /// returned, for [`remove`] to take away.
    pub fn create(&self, limits: &HostLimits) -> Result<(), HostCgroupError> {
        for d in &self.dirs {
            self.create_one(d, limits)?;
        }
        Ok(())
    }

    fn create_one(&self, d: &Placed, limits: &HostLimits) -> Result<(), HostCgroupError> {
        let io_err = |what: &str, path: &Path, e: io::Error| {
            self.path
                .error(format!("cannot {what} {}: {e}", path.display()))
        };
        let wanted: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|c| d.controllers.iter().any(|h| h == c))
            .collect();
        let rel = d.leaf.strip_prefix(&d.top).unwrap_or(&d.leaf).to_owned();
        let n = rel.components().count();
        // A parent that another container's delete removes while this
        // walk is under way is made again.
        let mut retries = 3;
        'walk: loop {
            let mut cur = d.top.clone();
            for (i, c) in rel.components().enumerate() {
                if d.unified {
                    enable_controllers(&cur, &wanted)
                        .map_err(|(p, e)| io_err("enable the controllers it needs in", &p, e))?;
                }
                cur.push(c);
                let leaf = i + 1 == n;
                match fs::create_dir(&cur) {
                    Ok(()) => {
                        if !d.unified && d.controllers.iter().any(|c| c == "cpuset") {
                            inherit_cpuset(&cur).map_err(|(p, e)| io_err("set", &p, e))?;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !leaf && cur.is_dir() => {
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && leaf => {
                        return Err(self.path.error(format!(
                            "{} exists already: the container's cgroup must be its own",
                            cur.display()
                        )))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && retries > 0 => {
                        retries -= 1;
                        continue 'walk;
                    }
                    Err(e) => return Err(io_err("create", &cur, e)),
                }
            }
            break;
        }
        limits.write(d).map_err(|(p, e)| io_err("write", &p, e))
    }
}

/// Enables `wanted` controllers (those `dir` offers and does not pass on
/// yet) in `dir`'s `cgroup.subtree_control`.
fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), (PathBuf, io::Error)> {
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
    let offered = read("cgroup.controllers");
    let enabled = read("cgroup.subtree_control");
    let has = |s: &str, c: &str| s.split_whitespace().any(|w| w == c);
    let add: Vec<String> = wanted
        .iter()
        .filter(|c| has(&offered, c) && !has(&enabled, c))
        .map(|c| format!("+{c}"))
        .collect();
    if add.is_empty() {
        return Ok(());
    }
    let file = dir.join("cgroup.subtree_control");
    fs::write(&file, add.join(" ")).map_err(|e| (file, e))
}

/// Gives a new v1 cpuset cgroup its parent's CPUs and memory nodes.
fn inherit_cpuset(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let parent = dir.parent().unwrap_or(dir);
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(f);
        let mine = fs::read_to_string(&file).map_err(|e| (file.clone(), e))?;
        if !mine.trim().is_empty() {
            continue;
        }
        let theirs = fs::read_to_string(parent.join(f)).map_err(|e| (parent.join(f), e))?;
        fs::write(&file, theirs.trim()).map_err(|e| (file, e))?;
    }
    Ok(())
}

/// The limits of a VM's host cgroup, derived from its size
/// ([`HostLimits::derive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// `memory.max` / `memory.limit_in_bytes`.
    pub memory_bytes: u64,
    /// `cpu.max` / `cpu.cfs_quota_us` and `cpu.cfs_period_us`: (quota,
    /// period) in µs.
    pub cpu_max: Option<(u64, u64)>,
    /// `cpu.shares` (v1); `cpu.weight` on v2 is converted as runc does.
    pub cpu_shares: Option<u64>,
    /// `pids.max`.
    pub pids_max: u64,
}

impl HostLimits {
    /// The host limits of a VM of `size` for a container with `resources`:
    /// - memory: guest RAM (the container's limit + the guest's overhead,
    ///   [`crate::sizing::MEMORY_OVERHEAD_MIB`], or the default size) +
    ///   [`HOST_MEMORY_OVERHEAD_MIB`] for the host processes. Always set:
    ///   a VM never needs more, whatever its spec says.
    /// - CPU: only when the spec sets a quota (as runc): its vCPUs, each a
    ///   host thread that may take a whole CPU, + [`HOST_CPU_OVERHEAD`],
    ///   over the spec's period. The container's own quota holds in the
    ///   guest. `cpu.shares` is passed on as the spec gives it (a weight
    ///   among the host's cgroups, as Kubernetes sets it from requests).
    /// - pids: [`HOST_PIDS_BASE`] + [`HOST_PIDS_PER_VCPU`] per vCPU: the
    ///   VM's host threads, not the container's processes (those are the
    ///   guest's, limited there by `pids.limit`).
    pub fn derive(size: &VmSize, resources: Option<&LinuxResources>) -> HostLimits {
        let cpu = resources.and_then(|r| r.cpu().as_ref());
        let cpu_max = cpu.and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => {
                // The kernel's bounds on a period: 1 ms to 1 s.
                let p = p.clamp(1_000, 1_000_000);
                Some((
                    (u64::from(size.vcpus) + HOST_CPU_OVERHEAD).saturating_mul(p),
                    p,
                ))
            }
            _ => None,
        });
        HostLimits {
            memory_bytes: (u64::from(size.memory_mib) + HOST_MEMORY_OVERHEAD_MIB) << 20,
            cpu_max,
            cpu_shares: cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
            pids_max: HOST_PIDS_BASE + HOST_PIDS_PER_VCPU * u64::from(size.vcpus),
        }
    }

    /// [`HostLimits::derive`] from a spec.
    pub fn for_spec(size: &VmSize, spec: &Spec) -> HostLimits {
        HostLimits::derive(
            size,
            spec.linux().as_ref().and_then(|l| l.resources().as_ref()),
        )
    }

    /// Writes the limits the hierarchy of `d` carries into its leaf.
    fn write(&self, d: &Placed) -> Result<(), (PathBuf, io::Error)> {
        let has = |c: &str| d.controllers.iter().any(|h| h == c);
        let put = |file: &str, value: String| {
            let path = d.leaf.join(file);
            fs::write(&path, value).map_err(|e| (path, e))
        };
        if has("memory") {
            let file = if d.unified {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            put(file, self.memory_bytes.to_string())?;
        }
        if has("pids") {
            put("pids.max", self.pids_max.to_string())?;
        }
        if has("cpu") {
            if let Some((quota, period)) = self.cpu_max {
                if d.unified {
                    put("cpu.max", format!("{quota} {period}"))?;
                } else {
                    // v1 refuses a quota above an ancestor's (v2 takes the
                    // smaller one itself): keep within theirs.
                    let quota = match ancestors_cpu_ratio(d) {
                        Some((aq, ap)) => {
                            let cap = (u128::from(aq) * u128::from(period) / u128::from(ap))
                                .min(u128::from(u64::MAX))
                                as u64;
                            if cap < quota {
                                tracing::info!(
                                    cgroup = %d.leaf.display(),
                                    quota,
                                    cap,
                                    "the host CPU quota is cut to an ancestor's"
                                );
                            }
                            quota.min(cap).max(1000)
                        }
                        None => quota,
                    };
                    put("cpu.cfs_period_us", period.to_string())?;
                    put("cpu.cfs_quota_us", quota.to_string())?;
                }
            }
            if let Some(shares) = self.cpu_shares {
                if d.unified {
                    put("cpu.weight", cpu_weight(shares).to_string())?;
                } else {
                    put("cpu.shares", shares.to_string())?;
                }
            }
        }
        Ok(())
    }
}

/// runc's conversion of v1 `cpu.shares` (2..262144) to v2 `cpu.weight`
/// (1..10000).
pub fn cpu_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + (s - 2) * 9999 / 262_142
}

/// The smallest CPU quota of the leaf's v1 ancestors, as (quota, period).
fn ancestors_cpu_ratio(d: &Placed) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64)> = None;
    let mut up = d.leaf.parent();
    while let Some(p) = up.filter(|p| p.starts_with(&d.top)) {
        let read =
            |f: &str| -> Option<i64> { fs::read_to_string(p.join(f)).ok()?.trim().parse().ok() };
        if let (Some(q), Some(per)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
            if q > 0 && per > 0 {
                let (q, per) = (q as u64, per as u64);
                // q/per < bq/bp, without division.
                if best.is_none_or(|(bq, bp)| {
                    u128::from(q) * u128::from(bp) < u128::from(bq) * u128::from(per)
                }) {
                    best = Some((q, per));
                }
            }
        }
        if p == d.top {
            break;
        }
        up = p.parent();
    }
    best
}

/// The open `cgroup.procs` of a container's cgroup on every hierarchy: a
/// process started with [`Joiner::join`] between fork and exec is in it
/// from its first instruction, and so is everything it starts.
#[derive(Debug)]
pub struct Joiner {
    files: Vec<OwnedFd>,
    path: String,
}

impl Joiner {
    /// Opens the `cgroup.procs` of every directory of `st`.
    pub fn open(st: &HostCgroupState) -> Result<Joiner, HostCgroupError> {
        let files = st
            .dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(|e| HostCgroupError {
                        shown: format!("{:?}", st.path),
                        reason: format!("cannot open {}: {e}", p.display()),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Joiner {
            files,
            path: st.path.clone(),
        })
    }

    /// The cgroup's path (`/husk/c1`), for messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw fds, for [`Joiner::join`] in a `pre_exec` (the `Joiner`
    /// must outlive the spawn).
    pub fn fds(&self) -> Vec<RawFd> {
        self.files.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// Moves the calling process into the cgroup: writes `0` (the writer
    /// itself) to each `cgroup.procs`. Only `write(2)`: safe between fork
    /// and exec.
    pub fn join(fds: &[RawFd]) -> io::Result<()> {
        for fd in fds {
            // SAFETY: write(2) of a 1-byte static buffer to an fd the
            // caller holds open; async-signal-safe.
            let n = unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Makes the host cgroup of a container: claims it (it must be new),
/// records it through `record` (the state, before anything exists, so a
/// crash leaves it findable), creates it with `limits`, and opens it for
/// the monitor to join. On failure, what was made is removed.
pub fn setup(
    layout: &Layout,
    path: &CgroupPath,
    limits: &HostLimits,
    record: impl FnOnce(&HostCgroupState) -> Result<(), String>,
) -> Result<(HostCgroupState, Joiner), HostCgroupError> {
    let placement = layout.place(path)?;
    let st = placement.claim()?;
    record(&st).map_err(|e| path.error(format!("cannot record it in the state: {e}")))?;
    let made = placement.create(limits).and_then(|()| Joiner::open(&st));
    match made {
        Ok(j) => {
            tracing::debug!(path = %st.path, dirs = ?st.dirs, ?limits, "host cgroup made");
            Ok((st, j))
        }
        Err(e) => {
            remove(&st);
            Err(e)
        }
    }
}

/// How long [`remove`] keeps killing what is left in a cgroup.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes a container's host cgroup: kills every process left in it (a
/// crashed monitor's children), removes it on every hierarchy with any
/// cgroup made below it, then the parents `create` made, when empty. Best
/// effort, logged.
pub fn remove(st: &HostCgroupState) {
    // Never a hierarchy's root (its parent is no cgroup), nor a cgroup
    // this process is in: a state file naming one would have the kill
    // below hit the host.
    let me = std::process::id() as i32;
    let dirs: Vec<PathBuf> = st
        .dirs
        .iter()
        // (A create that stopped before making it.)
        .filter(|d| d.exists())
        .filter(|d| {
            let ok = removable(d, me);
            if !ok {
                tracing::warn!(dir = %d.display(), "not a container's host cgroup: left alone");
            }
            ok
        })
        .cloned()
        .collect();
    // A killed process leaves `cgroup.procs` once its last thread began
    // to exit, but keeps the cgroup busy until it has exited: remove
    // until nothing is left, killing what shows up meanwhile.
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = procs_below(&dirs);
        if !pids.is_empty() {
            tracing::debug!(path = %st.path, ?pids, "killing what is left in the host cgroup");
        }
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut busy = Vec::new();
        for d in &dirs {
            remove_tree(d, &mut busy);
        }
        if busy.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(path = %st.path, ?busy, ?pids, "cannot remove the host cgroup");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in &st.parents {
        match fs::remove_dir(p) {
            Ok(()) => {}
            // Another container's, or already gone.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::EBUSY | libc::ENOTEMPTY | libc::ENOTDIR)
                ) => {}
            Err(e) => {
                tracing::warn!(dir = %p.display(), error = %e, "cannot remove a host cgroup parent")
            }
        }
    }
}

/// Whether [`remove`] may kill what is in `d` and remove it: a cgroup
/// below another (not a hierarchy's root) that process `me` is not in.
fn removable(d: &Path, me: i32) -> bool {
    d.parent().is_some_and(|p| p.join("cgroup.procs").is_file())
        && !procs_below(&[d.to_owned()]).contains(&me)
}

/// The processes in `dirs` and the cgroups below them.
fn procs_below(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut todo: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = todo.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        todo.extend(subdirs(&d));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn subdirs(d: &Path) -> Vec<PathBuf> {
    fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes cgroup `d` and the cgroups below it, deepest first; what
/// cannot be removed (yet) goes to `busy` with the reason.
fn remove_tree(d: &Path, busy: &mut Vec<(PathBuf, io::Error)>) {
    for s in subdirs(d) {
        remove_tree(&s, busy);
    }
    match fs::remove_dir(d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => busy.push((d.to_owned(), e)),
    }
}

#[cfg(test)]
#[path = "host_cgroup_tests.rs"]
mod tests;
