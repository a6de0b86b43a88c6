//! `containerd-shim-husk-v2`: the containerd runtime v2 shim (runtime type
//! `io.containerd.husk.v2`).
//!
//! One shim process serves one VM. containerd starts a shim per container,
//! except that containers of one Kubernetes pod share the shim (and so the
//! VM) of their sandbox: `start` groups them by the
//! `io.kubernetes.cri.sandbox-id` annotation and hands back the address of
//! the running shim. The first `Create` boots the VM with a plain
//! `husk-vmm` monitor (no container section); every container, the sandbox's
//! pause container included, is then created inside it through the agent,
//! with its rootfs and bind sources bind-mounted under the VM's share
//! directory (`share/<container-id>/...`), which is a shared mount made
//! before virtiofsd starts so that later mounts reach virtiofsd's sandbox.
//! Since the guest can write that directory, each container's tree is
//! built in the VM's `staging/` directory and attached by fd (see [`vm`]).
//!
//! | module | owns |
//! | --- | --- |
//! | [`vm`] | the pod VM: state dir, shared share dir, monitor, agent, teardown |
//! | [`task`] | the ttrpc task service |
//! | `io` | containerd's FIFOs pumped to and from the agent's stdio streams |
//! | `metrics` | the agent's cgroup v2 numbers as containerd's v2 metrics |
//! | [`options`] | runtime options (`ConfigPath`): engine, kernel, initramfs, vmm |

mod io;
mod metrics;
pub mod options;
pub mod task;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags, StartOpts};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// Where the per-VM state directories live unless `HUSK_SHIM_ROOT` says
/// otherwise.
pub const DEFAULT_ROOT: &str = "/run/husk-shim";
/// The CRI annotation naming a container's kind (`sandbox` or `container`).
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming the pod sandbox a container belongs to.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation containerd 1.7+ sets to the pod's memory limit in bytes.
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// Why a shim operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A runtime library operation.
    #[error(transparent)]
    Op(#[from] crate::ops::OpError),
    /// The agent.
    #[error("agent")]
    Agent(#[from] husk_protocol::client::ClientError),
    /// The task or process does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// It already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Bad request.
    #[error("{0}")]
    Invalid(String),
    /// The task is not in a state that allows the request (pausing a
    /// task that is not running).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A host-side I/O failure.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
        let what = what.into();
        move |source| ShimError::Io { what, source }
    }
}

impl From<ShimError> for containerd_shim::protos::ttrpc::Error {
    fn from(e: ShimError) -> Self {
        use containerd_shim::protos::ttrpc::{get_status, Code};
        let code = match &e {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::Invalid(_) => Code::INVALID_ARGUMENT,
            ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            ShimError::Agent(a) => match a.code() {
                Some(husk_protocol::ErrorCode::NotFound) => Code::NOT_FOUND,
                Some(husk_protocol::ErrorCode::AlreadyExists) => Code::ALREADY_EXISTS,
                Some(husk_protocol::ErrorCode::InvalidArgument) => Code::INVALID_ARGUMENT,
                Some(husk_protocol::ErrorCode::FailedPrecondition) => Code::FAILED_PRECONDITION,
                _ => Code::UNKNOWN,
            },
            _ => Code::UNKNOWN,
        };
        containerd_shim::protos::ttrpc::Error::RpcStatus(get_status(code, crate::error_chain(&e)))
    }
}

/// The state root of the shim's VMs.
pub fn shim_root() -> PathBuf {
    std::env::var_os("HUSK_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_ROOT.into())
}

/// The VM state directory of `grouping` in containerd namespace `ns`: a short
/// hash, because the sockets inside must fit a Unix socket path and CRI ids
/// are 64 characters.
pub fn vm_dir(root: &Path, ns: &str, grouping: &str) -> PathBuf {
    // FNV-1a, 64 bits: stable across builds, no extra dependency.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ns.bytes().chain([b'/']).chain(grouping.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    root.join(format!("{h:016x}"))
}

/// The shim grouping of a bundle: its pod's sandbox id, else `id`.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    spec.as_ref()
        .and_then(|s| s["annotations"][CRI_SANDBOX_ID].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or(id)
        .to_owned()
}

/// The file of a shim's ttrpc address (`unix:///run/containerd/s/HASH`).
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Removes the shim socket file at `path`: only a socket (never another
/// kind of file at that path), and a missing one is no error. Whether one
/// was removed.
pub fn remove_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::fs::remove_file(path) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot remove the shim socket");
                false
            }
        },
        Ok(_) => {
            tracing::warn!(socket = %path.display(), "not a socket: left alone");
            false
        }
        Err(_) => false,
    }
}

/// Removes the socket at `path` of a shim that is gone (the `delete`
/// action's cleanup): one that still accepts a connection belongs to a
/// live shim (a pod's shim serves its other containers) and stays.
pub fn remove_dead_socket(path: &Path) -> bool {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        tracing::info!(socket = %path.display(), "a shim still serves this socket: left");
        return false;
    }
    remove_socket(path)
}

/// The [`containerd_shim::Shim`] of husk.
pub struct HuskShim {
    id: String,
    namespace: String,
    /// containerd's own address (`-address`), from which the socket of a
    /// grouping's shim is computed.
    containerd: String,
    /// The socket this shim serves on (`-socket`), when serving.
    socket: Option<PathBuf>,
    exit: Arc<ExitSignal>,
    stopping: Arc<std::sync::Mutex<Option<Arc<vm::PodVm>>>>,
}

impl std::fmt::Debug for HuskShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HuskShim")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl containerd_shim::Shim for HuskShim {
    type T = task::TaskService;

    fn new(_runtime_id: &str, args: &Flags, config: &mut containerd_shim::Config) -> Self {
        config.no_setup_logger = true;
        // containerd 1.6 reads `start`'s stdout and stderr together as the
        // address: nothing may be logged there.
        if args.action != "start" {
            init_logging(args.action.is_empty(), args.debug);
            // Serving and `delete` run containerd-shim's reaper.
            crate::child::exits_come_from_the_shim_monitor();
        }
        HuskShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            containerd: args.address.clone(),
            socket: (!args.socket.is_empty()).then(|| socket_path(&args.socket)),
            exit: Arc::new(ExitSignal::default()),
            stopping: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let cwd = std::env::current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "cwd".into(),
            err: e,
        })?;
        let group = grouping(&cwd, &opts.id);
        tracing::info!(id = %opts.id, grouping = %group, "start");
        let (_pid, address) = containerd_shim::spawn(opts, &group, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd calls this when the shim is gone (or never answered):
        // undo what a dead shim left behind for this container.
        let bundle = std::env::current_dir().unwrap_or_default();
        let group = grouping(&bundle, &self.id);
        let dir = vm_dir(&shim_root(), &self.namespace, &group);
        tracing::info!(id = %self.id, dir = %dir.display(), "delete: cleaning up after the shim");
        vm::cleanup_dead(&dir, &self.id);
        // The socket a dead shim left in containerd's socket directory.
        let socket = socket_path(&containerd_shim::socket_address(
            &self.containerd,
            &self.namespace,
            &group,
        ));
        if remove_dead_socket(&socket) {
            tracing::info!(socket = %socket.display(), "removed the dead shim's socket");
        }
        let _ = crate::bundle::unmount_all(&[bundle.join("rootfs")]);
        let mut r = DeleteResponse::new();
        r.exit_status = 137;
        r.exited_at = Some(task::now_timestamp()).into();
        Ok(r)
    }

    fn wait(&mut self) {
        self.exit.wait();
        let vm = self
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(vm) = vm {
            let t = std::time::Instant::now();
            vm.shutdown();
            tracing::info!(ms = t.elapsed().as_millis() as u64, "VM stopped");
        }
        // As runc's shim does on Shutdown; here once the VM is stopped
        // (a `start` for this grouping meanwhile still finds this shim,
        // which refuses it, instead of starting a second one on the same
        // VM directory). containerd-shim's own removal after this reads
        // the socket's address from the bundle, which containerd has
        // removed by then: the socket was left in /run/containerd/s.
        if let Some(s) = &self.socket {
            if remove_socket(s) {
                tracing::debug!(socket = %s.display(), "removed the shim socket");
            }
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::TaskService::new(
            self.namespace.clone(),
            publisher,
            self.exit.clone(),
            self.stopping.clone(),
            shim_root(),
        )
    }
}

/// Logs go to containerd's `log` FIFO in the bundle directory when serving
/// (containerd copies it into its own log), else to stderr.
fn init_logging(serving: bool, debug: bool) {
    use tracing_subscriber::EnvFilter;
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("HUSK_SHIM_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let fifo = serving
        .then(|| std::fs::OpenOptions::new().write(true).open("log").ok())
        .flatten();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match fifo {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).try_init(),
        None => b.with_writer(std::io::stderr).try_init(),
    };
}

/// The binary's entry point.
pub fn main() {
    // The operator's configuration file fills in the environment first,
    // before containerd-shim starts any thread.
    match crate::settings::FileSettings::load_default() {
        Ok(s) => s.fill_env(),
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {}", crate::error_chain(&e));
            std::process::exit(1);
        }
    }
    containerd_shim::run::<HuskShim>(RUNTIME_ID, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_once() {
        let e = ShimError::Agent(husk_protocol::client::ClientError::Agent(
            husk_protocol::ProtocolError {
                code: husk_protocol::ErrorCode::InvalidArgument,
                message: "bad spec".into(),
            },
        ));
        let s = crate::error_chain(&e);
        assert_eq!(s.matches("bad spec").count(), 1, "{s}");
        let e = ShimError::io("open x")(std::io::ErrorKind::NotFound.into());
        assert_eq!(crate::error_chain(&e).matches("not found").count(), 1);
    }

    #[test]
    fn vm_dir_is_short_and_stable() {
        let a = vm_dir(Path::new("/run/husk-shim"), "k8s.io", &"a".repeat(64));
        assert_eq!(
            a,
            vm_dir(Path::new("/run/husk-shim"), "k8s.io", &"a".repeat(64))
        );
        assert_ne!(
            a,
            vm_dir(Path::new("/run/husk-shim"), "default", &"a".repeat(64))
        );
        assert_eq!(a.as_os_str().len(), "/run/husk-shim/".len() + 16);
    }

    /// A shim removes its socket when it exits (containerd's socket
    /// directory kept one per pod); the `delete` cleanup removes a dead
    /// shim's, never a live one's, and only a socket.
    #[test]
    fn the_shim_socket_is_removed_when_the_shim_exits_or_is_dead() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s").join("0123abcd");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut shim = HuskShim {
            id: "c1".into(),
            namespace: "k8s.io".into(),
            containerd: "/run/containerd/containerd.sock".into(),
            socket: Some(socket_path(&format!("unix://{}", path.display()))),
            exit: Arc::new(ExitSignal::default()),
            stopping: Arc::default(),
        };
        shim.exit.signal();
        containerd_shim::Shim::wait(&mut shim);
        assert!(!path.exists(), "the shim's socket is left");
        drop(listener);

        // A live shim's socket stays; a dead one's goes.
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!remove_dead_socket(&path));
        assert!(path.exists());
        drop(live);
        assert!(remove_dead_socket(&path));
        assert!(!path.exists());
        // Only a socket is removed; a missing one is no error.
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(!remove_socket(&path));
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        assert!(!remove_socket(&path));
    }

    #[test]
    fn socket_paths_drop_the_scheme() {
        assert_eq!(
            socket_path("unix:///run/containerd/s/abc"),
            Path::new("/run/containerd/s/abc")
        );
        assert_eq!(socket_path("/x/y"), Path::new("/x/y"));
    }

    #[test]
    fn grouping_follows_the_sandbox_annotation() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(grouping(t.path(), "c1"), "c1");
        std::fs::write(
            t.path().join("config.json"),
            serde_json::json!({"annotations": {CRI_SANDBOX_ID: "pod1"}}).to_string(),
        )
        .unwrap();
        assert_eq!(grouping(t.path(), "c1"), "pod1");
    }
}
