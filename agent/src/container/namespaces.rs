//! Namespaces: which to create, which to join by path, in what order, and
//! the uid/gid maps the agent writes for a new user namespace.

use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType};

use super::{sys, SetupError};

/// What the child does about namespaces.
#[derive(Debug)]
pub struct NsPlan {
    /// Namespaces to join: (type, open fd, name for messages); user first.
    pub join: Vec<(CloneFlags, OwnedFd, String)>,
    /// Create a user namespace (before the others, so it owns them).
    pub new_user: bool,
    /// The other namespaces to create.
    pub new_flags: CloneFlags,
    /// A fork is needed afterwards so that the process lands in the pid
    /// (or time) namespace that was created or joined: both take effect
    /// for the children of the process that unshares them.
    pub fork_for_pid: bool,
    /// `/proc/self/timens_offsets` for a new time namespace, written
    /// between its unshare and the fork (`linux.timeOffsets`).
    pub time_offsets: Option<String>,
}

impl Default for NsPlan {
    fn default() -> Self {
        NsPlan {
            join: Vec::new(),
            new_user: false,
            new_flags: CloneFlags::empty(),
            fork_for_pid: false,
            time_offsets: None,
        }
    }
}

/// The clone flag and /proc name of a namespace type.
pub fn ns_flag(t: LinuxNamespaceType) -> Result<(CloneFlags, &'static str), SetupError> {
    Ok(match t {
        LinuxNamespaceType::Mount => (CloneFlags::CLONE_NEWNS, "mnt"),
        LinuxNamespaceType::Cgroup => (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
        LinuxNamespaceType::Uts => (CloneFlags::CLONE_NEWUTS, "uts"),
        LinuxNamespaceType::Ipc => (CloneFlags::CLONE_NEWIPC, "ipc"),
        LinuxNamespaceType::User => (CloneFlags::CLONE_NEWUSER, "user"),
        LinuxNamespaceType::Pid => (CloneFlags::CLONE_NEWPID, "pid"),
        LinuxNamespaceType::Network => (CloneFlags::CLONE_NEWNET, "net"),
        LinuxNamespaceType::Time => (time_flag(), "time"),
    })
}

/// CLONE_NEWTIME, which nix's `CloneFlags` does not name.
fn time_flag() -> CloneFlags {
    CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)
}

/// The text of `/proc/self/timens_offsets` for `linux.timeOffsets`: the
/// clocks a time namespace can shift are `monotonic` and `boottime`.
fn time_offsets_text(linux: &Linux) -> Result<Option<String>, SetupError> {
    let Some(offsets) = linux.time_offsets().as_ref().filter(|o| !o.is_empty()) else {
        return Ok(None);
    };
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = String::new();
    for (clock, off) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            return Err(SetupError::Invalid(format!(
                "linux.timeOffsets.{clock}: a time namespace shifts only the monotonic and boottime clocks"
            )));
        }
        let nanos = off.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(SetupError::Invalid(format!(
                "linux.timeOffsets.{clock}.nanosecs: {nanos} is not below one second"
            )));
        }
        text.push_str(&format!("{clock} {} {nanos}\n", off.secs().unwrap_or(0)));
    }
    Ok(Some(text))
}

/// The plan for a container's init, from `linux.namespaces`. Opens the
/// paths to join now, before anything changes.
pub fn plan_create(linux: &Linux) -> Result<NsPlan, SetupError> {
    let mut plan = NsPlan::default();
    for ns in linux.namespaces().clone().unwrap_or_default() {
        let (flag, name) = ns_flag(ns.typ())?;
        match ns.path() {
            Some(path) if !path.as_os_str().is_empty() => {
                let f = File::open(path)
                    .map_err(sys(format!("open {name} namespace {}", path.display())))?;
                plan.join.push((
                    flag,
                    f.into(),
                    format!("{name} namespace {}", path.display()),
                ));
                if flag == CloneFlags::CLONE_NEWPID || flag == time_flag() {
                    plan.fork_for_pid = true;
                }
            }
            _ if flag == CloneFlags::CLONE_NEWUSER => plan.new_user = true,
            _ => {
                plan.new_flags |= flag;
                if flag == CloneFlags::CLONE_NEWPID || flag == time_flag() {
                    plan.fork_for_pid = true;
                }
            }
        }
    }
    plan.join
        .sort_by_key(|(f, _, _)| *f != CloneFlags::CLONE_NEWUSER);
    // As runc: offsets need a time namespace of the container's own.
    plan.time_offsets = time_offsets_text(linux)?;
    if plan.time_offsets.is_some() && !plan.new_flags.contains(time_flag()) {
        return Err(SetupError::Invalid(
            "linux.timeOffsets is set, but linux.namespaces creates no time namespace \
             (a joined one keeps its own offsets)"
                .into(),
        ));
    }
    Ok(plan)
}

/// The plan for an exec: join every namespace of `init_pid` that differs
/// from the agent's own.
pub fn plan_exec(init_pid: i32) -> Result<NsPlan, SetupError> {
    let mut plan = NsPlan::default();
    for name in ["user", "mnt", "uts", "ipc", "net", "pid", "cgroup", "time"] {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let ours = format!("/proc/self/ns/{name}");
        let (Ok(t), Ok(o)) = (fs::metadata(&theirs), fs::metadata(&ours)) else {
            continue;
        };
        if t.ino() == o.ino() && t.dev() == o.dev() {
            continue;
        }
        let flag = match name {
            "user" => CloneFlags::CLONE_NEWUSER,
            "mnt" => CloneFlags::CLONE_NEWNS,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "net" => CloneFlags::CLONE_NEWNET,
            "pid" => CloneFlags::CLONE_NEWPID,
            "time" => time_flag(),
            _ => CloneFlags::CLONE_NEWCGROUP,
        };
        let f = File::open(&theirs).map_err(sys(format!("open {theirs}")))?;
        plan.join.push((flag, f.into(), theirs));
        if flag == CloneFlags::CLONE_NEWPID || flag == time_flag() {
            plan.fork_for_pid = true;
        }
    }
    Ok(plan)
}

/// Joins and creates namespaces. `map_ids` is called right after a new user
/// namespace is created (the agent writes the maps meanwhile).
pub fn enter(
    plan: &NsPlan,
    map_ids: impl FnOnce() -> Result<(), SetupError>,
) -> Result<(), SetupError> {
    for (flag, fd, what) in &plan.join {
        setns(fd, *flag).map_err(sys(format!("join {what}")))?;
    }
    if plan.new_user {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("create user namespace"))?;
        map_ids()?;
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(sys("become gid 0 in the user namespace"))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(sys("become uid 0 in the user namespace"))?;
    }
    if !plan.new_flags.is_empty() {
        unshare(plan.new_flags).map_err(sys(format!("create namespaces {:?}", plan.new_flags)))?;
        if let Some(text) = &plan.time_offsets {
            // Before any process enters it: the fork after this.
            fs::write("/proc/self/timens_offsets", text).map_err(sys(format!(
                "set the time namespace's offsets ({})",
                text.trim()
            )))?;
        }
        if plan.new_flags.contains(CloneFlags::CLONE_NEWNET) {
            // As with runc: a new network namespace has a working loopback.
            crate::network::loopback_up().map_err(|e| SetupError::Sys {
                what: "bring lo up in the new network namespace".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
    }
    Ok(())
}

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Writes the uid and gid maps of `pid`'s user namespace (run in the agent).
pub fn write_id_maps(pid: i32, linux: &Linux) -> std::io::Result<()> {
    let uid = linux.uid_mappings().clone().unwrap_or_default();
    let gid = linux.gid_mappings().clone().unwrap_or_default();
    if !uid.is_empty() {
        fs::write(format!("/proc/{pid}/uid_map"), map_text(&uid))?;
    }
    if !gid.is_empty() {
        fs::write(format!("/proc/{pid}/gid_map"), map_text(&gid))?;
    }
    Ok(())
}
