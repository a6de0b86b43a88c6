//! The state directory: `ROOT/ID/` holds what husk knows of one container.
//!
//! `state.json` is written atomically (write a temp file, fsync, rename), so
//! a reader never sees half a state. Creating the directory itself is the
//! atomic claim on the id: a second `create` with the same id fails on
//! `mkdir`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No container with this id.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    /// A container with this id exists already.
    #[error("container \"{0}\" already exists")]
    AlreadyExists(String),
    /// The id cannot be used as a directory name.
    #[error("invalid container id {0:?}: use 1-1024 characters of [A-Za-z0-9_.+-], not starting with '.'")]
    InvalidId(String),
    /// A file of the state could not be read or written.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `state.json` is corrupt.
    #[error("corrupt state file {path}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// The lifecycle status, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// Its process runs.
    Running,
    /// Its process has exited (or the VM is gone).
    Stopped,
    /// Its VM's vCPUs are paused.
    Paused,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Paused => "paused",
        };
        f.write_str(s)
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    /// The OCI version of the bundle's config.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The last status husk recorded (the live one also looks at the monitor).
    pub status: Status,
    /// The monitor's pid (`state.pid`): it exits with the container's status.
    pub pid: i32,
    /// The monitor's start time in clock ticks since boot (field 22 of
    /// /proc/PID/stat), so a recycled pid is not taken for the monitor.
    pub pid_start_time: u64,
    /// The absolute bundle path.
    pub bundle: PathBuf,
    /// The absolute host rootfs path.
    pub rootfs: PathBuf,
    /// RFC 3339 creation time.
    pub created: String,
    /// The spec's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The guest pid of the container's init, as the agent reported it.
    pub guest_pid: i32,
    /// The engine's pid (paused and resumed with SIGSTOP/SIGCONT), if known.
    pub engine_pid: Option<i32>,
    /// The monitor's hybrid vsock socket.
    pub vsock_uds: PathBuf,
    /// The agent's vsock port.
    pub agent_port: u32,
    /// Host paths husk bind-mounted into the share directory; unmounted on
    /// delete.
    pub mounts: Vec<PathBuf>,
    /// The tap and tc mirroring husk set up in the spec's network
    /// namespace; undone on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetState>,
    /// The spec's hooks as they were at create (an empty set when it had
    /// none): poststart and poststop run these, as runc runs the ones it
    /// recorded, whatever became of the bundle since. `None` in a state an
    /// older husk wrote: the bundle's are read then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<oci_spec::runtime::Hooks>,
    /// The container's `linux.resources` as its guest cgroup has them: the
    /// spec's at create (its cpuset fitted to the VM), then each `update`'s
    /// (runc keeps them in its state.json too). `None` in a state an older
    /// husk wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<oci_spec::runtime::LinuxResources>,
    /// The container's cgroup on the host, holding its VM's host
    /// processes; recorded before `create` makes it, killed and removed
    /// on delete ([`crate::host_cgroup`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<crate::host_cgroup::HostCgroupState>,
}

/// The state directory root (`--root`).
#[derive(Debug, Clone)]
pub struct StateRoot {
    root: PathBuf,
}

/// A container's lock ([`StateRoot::lock`]), released on drop.
#[derive(Debug)]
pub struct StateLock {
    _dir: nix::fcntl::Flock<fs::File>,
}

impl StateRoot {
    /// A root at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateRoot { root: root.into() }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id`.
    pub fn dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// Claims `id`: creates its directory, failing if it exists.
    pub fn claim(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir(id)?;
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .map_err(io_err(&self.root))?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StateError::AlreadyExists(id.to_owned()))
            }
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// Loads the state of `id`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        let path = self.dir(id)?.join("state.json");
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()))
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Writes the state of `state.id` atomically.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let dir = self.dir(&state.id)?;
        let body = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomic(&dir.join("state.json"), &body)
    }

    /// The ids of every container with a state directory, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| validate_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Takes `id`'s lock, waiting for whoever holds it: `flock(2)` on its
    /// state directory. Every command that changes a container's
    /// `state.json` (`start`, `pause`, `resume`, `delete`, and `state` and
    /// `list` recording a stop) holds it from reading the state to writing
    /// (or removing) it, so none writes back a stale copy over another's
    /// change or into a directory being removed. Released on drop.
    pub fn lock(&self, id: &str) -> Result<StateLock, StateError> {
        self.lock_with(id, false)
            .map(|l| l.expect("a blocking lock is taken"))
    }

    /// Like [`StateRoot::lock`] without waiting: `None` when another
    /// command holds it.
    pub fn try_lock(&self, id: &str) -> Result<Option<StateLock>, StateError> {
        self.lock_with(id, true)
    }

    fn lock_with(&self, id: &str, nonblock: bool) -> Result<Option<StateLock>, StateError> {
        use nix::errno::Errno;
        use nix::fcntl::{Flock, FlockArg};
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.dir(id)?;
        let mut f = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()))
            }
            Err(source) => return Err(StateError::Io { path: dir, source }),
        };
        let arg = if nonblock {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockExclusive
        };
        loop {
            match Flock::lock(f, arg) {
                Ok(locked) => return Ok(Some(StateLock { _dir: locked })),
                Err((back, Errno::EINTR)) => f = back,
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => {
                    return Err(StateError::Io {
                        path: dir,
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// Removes the directory of `id` and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }
}

/// Writes `body` to `path` so that readers see the old or the new file.
///
/// The temporary file gets a fresh random name in the target's directory
/// and is created with O_CREAT|O_EXCL, so nothing planted beforehand (a
/// symlink at `path.tmp` towards a root-owned file, say) is followed or
/// written through; the rename replaces a symlink at `path` itself rather
/// than the file it points to. Mode 0644, as runc's pid files.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let io_err = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut f = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err)?;
    f.write_all(body).map_err(io_err)?;
    f.as_file().sync_all().map_err(io_err)?;
    f.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// Checks that `id` is a safe single path component (runc's rule).
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_owned()))
    }
}

/// The start time of `pid` (clock ticks since boot), if it is alive.
pub fn process_start_time(pid: i32) -> Option<u64> {
    husk_vmm_contract::journal::start_time(pid)
}

impl ContainerState {
    /// Whether the monitor recorded in the state still runs.
    pub fn monitor_alive(&self) -> bool {
        self.pid > 0 && process_start_time(self.pid) == Some(self.pid_start_time)
    }

    /// For tests: container `id`, created, its "monitor" this (live) test
    /// process, no bundle on disk, its agent behind `vsock_uds` on the
    /// default port; each test changes what it needs.
    #[cfg(test)]
    pub(crate) fn sample(id: &str, vsock_uds: PathBuf) -> ContainerState {
        let me = std::process::id() as i32;
        ContainerState {
            oci_version: "1.0.2".into(),
            id: id.into(),
            status: Status::Created,
            pid: me,
            pid_start_time: process_start_time(me).unwrap(),
            bundle: "/nonexistent-bundle".into(),
            rootfs: "/nonexistent-bundle/rootfs".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: Default::default(),
            guest_pid: 1,
            engine_pid: None,
            vsock_uds,
            agent_port: husk_protocol::DEFAULT_AGENT_PORT,
            mounts: vec![],
            network: None,
            hooks: None,
            resources: None,
            host_cgroup: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local user who plants symlinks where husk writes (the old
    /// `<pidfile>.tmp`, or the pid file itself) cannot make husk write
    /// through them into another file.
    #[test]
    fn write_atomic_never_writes_through_planted_symlinks() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("shadow");
        fs::write(&victim, "root:secret\n").unwrap();
        let pid = t.path().join("c.pid");
        symlink(&victim, t.path().join("c.tmp")).unwrap();
        symlink(&victim, t.path().join("c.pid.tmp")).unwrap();
        write_atomic(&pid, b"42").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root:secret\n");
        assert_eq!(fs::read_to_string(&pid).unwrap(), "42");
        assert_eq!(
            fs::metadata(&pid).unwrap().permissions().mode() & 0o777,
            0o644
        );

        let link = t.path().join("l.pid");
        symlink(&victim, &link).unwrap();
        write_atomic(&link, b"43").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root:secret\n");
        assert!(!fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let left: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn claim_is_exclusive_and_state_roundtrips() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::new(tmp.path().join("root"));
        root.claim("a").unwrap();
        assert!(matches!(root.claim("a"), Err(StateError::AlreadyExists(_))));
        assert!(matches!(root.load("a"), Err(StateError::NotFound(_))));
        let s = ContainerState::sample("a", "/x.sock".into());
        root.save(&s).unwrap();
        assert_eq!(root.load("a").unwrap(), s);
        assert!(s.monitor_alive());
        assert_eq!(root.list().unwrap(), vec!["a".to_string()]);
        root.remove("a").unwrap();
        assert!(root.list().unwrap().is_empty());
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in ["", "..", ".hidden", "a/b", "a b", "x\n"] {
            assert!(validate_id(id).is_err(), "{id:?}");
        }
        validate_id("abc-DEF_1.2+3").unwrap();
    }

    #[test]
    fn corrupt_state_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let root = StateRoot::new(tmp.path());
        let d = root.claim("c").unwrap();
        fs::write(d.join("state.json"), b"{").unwrap();
        assert!(matches!(root.load("c"), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn dead_or_recycled_pid_is_not_alive() {
        let mut s = ContainerState::sample("d", "/x.sock".into());
        s.pid_start_time += 1;
        assert!(!s.monitor_alive());
        s.pid = 0;
        assert!(!s.monitor_alive());
    }
}
