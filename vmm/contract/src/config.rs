//! The VM configuration: one JSON document (`husk-vmm --config FILE`) that
//! the runtime writes and the monitor's command-line flags can override,
//! and its validation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use husk_protocol::{ConfigureNetwork, CreateContainer, DEFAULT_AGENT_PORT};
use serde::{Deserialize, Serialize};

/// The longest path a Unix socket address can hold (`sun_path` less the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The most vCPUs a guest can have: the guest kernel is built with
/// `CONFIG_NR_CPUS=32` (`guest-kernel/fragments/00-base-console.config`;
/// a test checks the built config), and the builtin engine numbers vCPUs
/// in a `u8`. The runtime's limit is the least of this, the host's CPUs
/// and the operator's `HUSK_MAX_VCPUS`.
pub const MAX_VCPUS: u32 = 32;

/// The smallest guest RAM that boots reliably (kernel, agent, page cache).
pub const MIN_MEMORY_MIB: u32 = 128;

/// The largest guest RAM: RAM above the 4 GiB MMIO gap ends at
/// `MAX_MEMORY_MIB` + 768 MiB, below 2^39, the smallest guest physical
/// address width of current x86-64 CPUs with VT-x or AMD-V.
pub const MAX_MEMORY_MIB: u32 = 256 * 1024;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid JSON for [`VmConfig`].
    #[error("bad config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value that cannot work.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A file the VM needs does not exist.
    #[error("{what} {path} does not exist or is not a regular file")]
    MissingFile {
        /// What the file is for.
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// The state directory could not be created.
    #[error("cannot create state dir {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which engine runs the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineChoice {
    /// The builtin KVM engine where the host has hardware virtualization,
    /// else QEMU (TCG).
    #[default]
    Auto,
    /// The builtin KVM engine.
    Builtin,
    /// `qemu-system-x86_64` as a child process.
    Qemu,
}

impl std::str::FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EngineChoice::Auto),
            "builtin" => Ok(EngineChoice::Builtin),
            "qemu" => Ok(EngineChoice::Qemu),
            _ => Err(format!("unknown engine {s:?} (auto, builtin or qemu)")),
        }
    }
}

/// virtiofsd's `--cache` policy for a share.
///
/// The default is [`CachePolicy::Never`]: file data is direct I/O (never
/// in the guest's page cache, read and written in requests as large as the
/// guest's), and nothing about the directory is cached in the guest.
/// Measured under TCG (`tests/bench.sh fsmodes`): 3x the sequential read
/// and 2.5x the write of `auto`, same exec rate, about two thirds of its
/// small-file rate; the guest's own copy through its page cache is the slow
/// part there. It keeps both promises a container runtime makes about a
/// host directory: every `write(2)` is on the host when it returns (a VM
/// stopped or killed loses nothing), and what the host changes is seen at
/// once (kubelet updates a ConfigMap volume by swapping a symlink with a
/// rename: `metadata` and `always` cache the old entry for a day, `auto`
/// for a second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    /// Close-to-open consistency (entries and attributes cached for a
    /// second, data cached in the guest and dropped at each open).
    Auto,
    /// No guest caching: every lookup and access goes to the host; data is
    /// direct I/O. The default.
    #[default]
    Never,
    /// Entries and attributes cached for a day (host-side renames and
    /// replacements are missed), data is direct I/O.
    Metadata,
    /// Everything cached, for a day: only for directories nothing else
    /// changes. Executables stay in the guest's page cache across opens,
    /// which makes starting processes many times faster.
    Always,
}

impl std::str::FromStr for CachePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CachePolicy::Auto),
            "never" => Ok(CachePolicy::Never),
            "metadata" => Ok(CachePolicy::Metadata),
            "always" => Ok(CachePolicy::Always),
            _ => Err(format!(
                "unknown virtio-fs cache policy {s:?} (auto, never, metadata or always)"
            )),
        }
    }
}

impl CachePolicy {
    /// Whether file data bypasses the guest's page cache (direct I/O), so
    /// that shared mappings need virtiofsd's `--allow-mmap`.
    pub fn is_direct_io(self) -> bool {
        matches!(self, CachePolicy::Never | CachePolicy::Metadata)
    }

    /// The value virtiofsd's `--cache` takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            CachePolicy::Auto => "auto",
            CachePolicy::Never => "never",
            CachePolicy::Metadata => "metadata",
            CachePolicy::Always => "always",
        }
    }
}

/// virtiofsd's `--sandbox` mode. Only `namespace` isolates the daemon from
/// the rest of the host; the weaker modes must be chosen explicitly
/// (`virtiofsd_sandbox`, or `HUSK_VIRTIOFSD_SANDBOX` / `--virtiofsd-sandbox`
/// for `husk-vmm`) and are logged as a warning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtiofsdSandbox {
    /// Mount, pid and net namespaces plus pivot_root into the shared dir.
    #[default]
    Namespace,
    /// chroot into the shared dir: the daemon still sees the host's
    /// processes and network.
    Chroot,
    /// None: only virtiofsd's own path checks and seccomp.
    None,
}

impl VirtiofsdSandbox {
    /// The value of virtiofsd's `--sandbox`.
    pub fn as_arg(self) -> &'static str {
        match self {
            VirtiofsdSandbox::Namespace => "namespace",
            VirtiofsdSandbox::Chroot => "chroot",
            VirtiofsdSandbox::None => "none",
        }
    }
}

impl std::str::FromStr for VirtiofsdSandbox {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "namespace" => Ok(VirtiofsdSandbox::Namespace),
            "chroot" => Ok(VirtiofsdSandbox::Chroot),
            "none" => Ok(VirtiofsdSandbox::None),
            _ => Err(format!(
                "unknown virtiofsd sandbox {s:?} (namespace, chroot or none)"
            )),
        }
    }
}

/// One host directory shared with the guest over virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// The virtio-fs tag; the agent mounts it at `/run/husk/shares/TAG`.
    pub tag: String,
    /// The host directory.
    pub host_dir: PathBuf,
    /// virtiofsd's cache policy.
    #[serde(default)]
    pub cache: CachePolicy,
    /// Refuse guest writes (virtiofsd `--readonly`).
    #[serde(default)]
    pub readonly: bool,
    /// The guest's writeback cache (virtiofsd `--writeback`): `write(2)`
    /// returns once the data is in the guest's page cache, and reaches the
    /// host when the guest writes it back (at the latest at the agent's
    /// `Shutdown`, which syncs). Host processes reading the directory see
    /// writes late, and a VM killed without a `Shutdown` loses them: off
    /// by default.
    #[serde(default)]
    pub writeback: bool,
    /// virtiofsd's worker threads (`--thread-pool-size`); `None` leaves
    /// virtiofsd's default.
    #[serde(default)]
    pub threads: Option<u32>,
}

impl std::str::FromStr for ShareConfig {
    type Err = String;
    /// Parses `TAG=HOSTDIR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (tag, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("share {s:?} is not TAG=DIR"))?;
        Ok(ShareConfig {
            tag: tag.to_owned(),
            host_dir: PathBuf::from(dir),
            cache: CachePolicy::default(),
            readonly: false,
            writeback: false,
            threads: None,
        })
    }
}

/// The hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The Unix socket the host connects to (`CONNECT <port>`); default
    /// `STATE_DIR/vsock.sock`.
    #[serde(default)]
    pub uds_path: Option<PathBuf>,
    /// The guest's context id (>= 3).
    #[serde(default = "default_cid")]
    pub guest_cid: u32,
    /// The vsock port the agent listens on.
    #[serde(default = "default_agent_port")]
    pub agent_port: u32,
}

impl Default for VsockConfig {
    fn default() -> Self {
        VsockConfig {
            uds_path: None,
            guest_cid: default_cid(),
            agent_port: default_agent_port(),
        }
    }
}

/// Bounds on the guest serial console log (the monitor's `console`
/// module): the guest controls what it prints, and the log lives in the
/// state directory (tmpfs `/run`, so host RAM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The log never grows past this; when it would, the last half is
    /// kept and the rest cut off. Default 1 MiB.
    #[serde(default = "default_console_max")]
    pub max_bytes: u64,
    /// Sustained console bytes per second written to the log; more is
    /// dropped (and counted in a marker line). Default 16 KiB/s.
    #[serde(default = "default_console_rate")]
    pub rate_bytes_per_s: u64,
    /// Bytes the log takes at once before the rate applies (a boot's
    /// output). Default 256 KiB.
    #[serde(default = "default_console_burst")]
    pub burst_bytes: u64,
}

/// The smallest console cap accepted.
pub const MIN_CONSOLE_MAX_BYTES: u64 = 4096;
/// The smallest console burst accepted: room for the drop marker line and
/// some output after it.
pub const MIN_CONSOLE_BURST_BYTES: u64 = 256;

fn default_console_max() -> u64 {
    1 << 20
}
fn default_console_rate() -> u64 {
    16 << 10
}
fn default_console_burst() -> u64 {
    256 << 10
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            max_bytes: default_console_max(),
            rate_bytes_per_s: default_console_rate(),
            burst_bytes: default_console_burst(),
        }
    }
}

impl ConsoleConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_bytes < MIN_CONSOLE_MAX_BYTES {
            return Err(format!(
                "console.max_bytes {} is under {MIN_CONSOLE_MAX_BYTES}",
                self.max_bytes
            ));
        }
        if self.rate_bytes_per_s == 0 {
            return Err("console.rate_bytes_per_s must be over 0".into());
        }
        if self.burst_bytes < MIN_CONSOLE_BURST_BYTES {
            return Err(format!(
                "console.burst_bytes {} is under {MIN_CONSOLE_BURST_BYTES}",
                self.burst_bytes
            ));
        }
        Ok(())
    }
}

/// Explicit paths of the helper programs; unset ones are looked up in
/// `$PATH`, `/usr/local/bin`, then `~/.cargo/bin`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryPaths {
    /// `qemu-system-x86_64`.
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    /// `virtiofsd`.
    #[serde(default)]
    pub virtiofsd: Option<PathBuf>,
    /// `vhost-device-vsock`.
    #[serde(default)]
    pub vhost_device_vsock: Option<PathBuf>,
}

/// Container supervisor mode: after boot, create this container and
/// supervise it (see `vmm/README.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    /// The request sent to the agent; its `stdio` says which of the
    /// monitor's fds 0/1/2 are forwarded.
    pub create: CreateContainer,
    /// An inherited fd to report readiness on (one
    /// [`crate::ReadyReport`] line, then closed; [`crate::READY_FD`] when
    /// the runtime launched the monitor).
    #[serde(default)]
    pub ready_fd: Option<i32>,
    /// The guest network, sent to the agent before `create`.
    #[serde(default)]
    pub network: Option<ConfigureNetwork>,
}

/// One virtio-net device backed by a tap device the caller opened
/// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`) and handed to the monitor as an
/// inherited fd. Engine-neutral: the qemu engine passes the fd on to qemu,
/// an in-process device would read and write it itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The open tap fd in the monitor's fd table (3 or more;
    /// [`crate::TAP_FD`] when the runtime launched the monitor).
    pub tap_fd: i32,
    /// The guest interface's MAC address, `aa:bb:cc:dd:ee:ff` (unicast).
    pub mac: String,
    /// The MTU the device advertises to the guest.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

impl NetConfig {
    /// The MAC's six octets, if it is written `aa:bb:cc:dd:ee:ff`.
    pub fn mac_bytes(&self) -> Option<[u8; 6]> {
        let mut out = [0u8; 6];
        let mut parts = self.mac.split(':');
        for o in &mut out {
            let p = parts.next().filter(|p| p.len() == 2)?;
            *o = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(out)
    }

    fn validate(&self, i: usize) -> Result<(), String> {
        if self.tap_fd < 3 {
            return Err(format!("net[{i}].tap_fd {} is not 3 or more", self.tap_fd));
        }
        if self
            .mac_bytes()
            .is_none_or(|m| m[0] & 1 == 1 || m == [0; 6])
        {
            return Err(format!(
                "net[{i}].mac {:?} is not a unicast MAC address aa:bb:cc:dd:ee:ff",
                self.mac
            ));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(format!("net[{i}].mtu {} is outside 68..=65535", self.mtu));
        }
        Ok(())
    }
}

/// Everything needed to run one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The uncompressed guest kernel (`vmlinux`, PVH entry).
    pub kernel: PathBuf,
    /// The initramfs holding the agent as `/init`.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Extra guest kernel command-line arguments.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Guest vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Where the monitor keeps its sockets and logs (created if missing).
    pub state_dir: PathBuf,
    /// The vsock device.
    #[serde(default)]
    pub vsock: VsockConfig,
    /// virtio-fs shares.
    #[serde(default)]
    pub shares: Vec<ShareConfig>,
    /// Where the guest serial console is written; default
    /// `STATE_DIR/console.log`.
    #[serde(default)]
    pub console_path: Option<PathBuf>,
    /// Bounds on the console log.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// The engine.
    #[serde(default)]
    pub engine: EngineChoice,
    /// Helper program paths.
    #[serde(default)]
    pub binaries: BinaryPaths,
    /// Seconds to wait for the agent to answer after the engine starts.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Container supervisor mode.
    #[serde(default)]
    pub container: Option<ContainerConfig>,
    /// virtio-net devices on inherited tap fds.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// virtiofsd's sandbox. `namespace` (the default) or the start fails;
    /// `chroot` and `none` are an operator's explicit opt-in.
    #[serde(default)]
    pub virtiofsd_sandbox: VirtiofsdSandbox,
}

fn default_cid() -> u32 {
    3
}
fn default_agent_port() -> u32 {
    DEFAULT_AGENT_PORT
}
fn default_memory() -> u32 {
    256
}
fn default_vcpus() -> u32 {
    1
}
fn default_mtu() -> u32 {
    1500
}
fn default_boot_timeout() -> u64 {
    120
}

impl VmConfig {
    /// A config with defaults for everything but the kernel and state dir.
    pub fn new(kernel: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: None,
            memory_mib: default_memory(),
            vcpus: default_vcpus(),
            state_dir: state_dir.into(),
            vsock: VsockConfig::default(),
            shares: Vec::new(),
            console_path: None,
            console: ConsoleConfig::default(),
            engine: EngineChoice::default(),
            binaries: BinaryPaths::default(),
            boot_timeout_s: default_boot_timeout(),
            container: None,
            net: Vec::new(),
            virtiofsd_sandbox: VirtiofsdSandbox::default(),
        }
    }

    /// Parses a config document.
    pub fn from_json(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: origin.to_owned(),
            source,
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// The hybrid vsock socket the host connects to.
    pub fn vsock_uds_path(&self) -> PathBuf {
        self.vsock
            .uds_path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("vsock.sock"))
    }

    /// The vhost-user socket between the engine and vhost-device-vsock.
    pub fn vsock_backend_socket(&self) -> PathBuf {
        self.state_dir.join("vhost-vsock.sock")
    }

    /// The vhost-user socket between the engine and the share's virtiofsd.
    pub fn fs_backend_socket(&self, tag: &str) -> PathBuf {
        self.state_dir.join(format!("vhost-fs-{tag}.sock"))
    }

    /// The serial console log.
    pub fn console_log_path(&self) -> PathBuf {
        self.console_path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("console.log"))
    }

    /// Checks every field that can be checked without starting anything.
    /// Does not touch the file system beyond `stat`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        require_file("kernel", &self.kernel)?;
        if let Some(i) = &self.initramfs {
            require_file("initramfs", i)?;
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return invalid(format!(
                "memory_mib {} is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} \
                 (MIN_MEMORY_MIB boots, MAX_MEMORY_MIB the engines can map)",
                self.memory_mib
            ));
        }
        self.console.validate().map_err(ConfigError::Invalid)?;
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return invalid(format!(
                "vcpus {} is outside 1..={MAX_VCPUS} (MAX_VCPUS: the guest kernel's NR_CPUS)",
                self.vcpus
            ));
        }
        if self.vsock.guest_cid < 3 || self.vsock.guest_cid == u32::MAX {
            return invalid(format!(
                "guest_cid {} is reserved (use 3 or more)",
                self.vsock.guest_cid
            ));
        }
        if self.vsock.agent_port == 0 || self.vsock.agent_port == u32::MAX {
            return invalid(format!(
                "agent_port {} is not a usable port",
                self.vsock.agent_port
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return invalid("state_dir is empty".into());
        }
        if let Some(c) = &self.cmdline {
            if c.contains('\n') {
                return invalid("cmdline contains a newline".into());
            }
        }
        let mut tags = HashSet::new();
        for s in &self.shares {
            let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if s.tag.is_empty() || s.tag.len() > 36 || !s.tag.chars().all(ok_char) {
                return invalid(format!(
                    "share tag {:?} must be 1-36 characters of [A-Za-z0-9._-]",
                    s.tag
                ));
            }
            if !tags.insert(s.tag.as_str()) {
                return invalid(format!("share tag {:?} is used twice", s.tag));
            }
            if !s.host_dir.is_dir() {
                return invalid(format!(
                    "share {:?}: {} is not a directory",
                    s.tag,
                    s.host_dir.display()
                ));
            }
        }
        let mut sockets = vec![self.vsock_uds_path(), self.vsock_backend_socket()];
        sockets.extend(self.shares.iter().map(|s| self.fs_backend_socket(&s.tag)));
        for p in sockets {
            // vhost-device-vsock also listens on UDS_PORT for guest-initiated
            // connections: leave room for "_4294967295".
            if p.as_os_str().len() + 11 > MAX_SOCKET_PATH {
                return invalid(format!(
                    "socket path {} is too long for a Unix socket (shorten state_dir)",
                    p.display()
                ));
            }
        }
        let mut fds = HashSet::new();
        let mut macs = HashSet::new();
        for (i, n) in self.net.iter().enumerate() {
            n.validate(i).map_err(ConfigError::Invalid)?;
            if !fds.insert(n.tap_fd) || !macs.insert(n.mac.to_ascii_lowercase()) {
                return invalid(format!(
                    "net[{i}] repeats a tap_fd or mac of another device"
                ));
            }
            if let Some(r) = self.container.as_ref().and_then(|c| c.ready_fd) {
                if r == n.tap_fd {
                    return invalid(format!("net[{i}].tap_fd {r} is also the ready_fd"));
                }
            }
        }
        if let Some(c) = &self.container {
            if c.create.container_id.is_empty() {
                return invalid("container.create.container_id is empty".into());
            }
            for t in &c.create.shares {
                if !tags.contains(t.as_str()) {
                    return invalid(format!(
                        "container uses share {t:?}, which is not configured"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that every `net[].tap_fd` is open in this process and marks it
    /// close-on-exec, so only the engine (which clears the flag in its
    /// child) inherits it, not the device daemons.
    pub fn claim_net_fds(&self) -> Result<(), ConfigError> {
        for (i, n) in self.net.iter().enumerate() {
            // A closed fd gives EBADF.
            let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
            if let Err(e) = nix::fcntl::fcntl(n.tap_fd, cloexec) {
                return Err(ConfigError::Invalid(format!(
                    "net[{i}].tap_fd {} is not an open fd of the monitor: {e}",
                    n.tap_fd,
                )));
            }
        }
        Ok(())
    }

    /// Creates the state directory (mode 0700) if it is missing.
    pub fn ensure_state_dir(&self) -> Result<(), ConfigError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .map_err(|source| ConfigError::StateDir {
                path: self.state_dir.clone(),
                source,
            })
    }

    /// Checks that the state directory exists, without making it: a
    /// container's monitor runs in the directory its runtime made, and when
    /// that is gone (`delete --force` of a create that was killed while the
    /// monitor started) the monitor must stop rather than make it again.
    pub fn require_state_dir(&self) -> Result<(), ConfigError> {
        match std::fs::metadata(&self.state_dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ConfigError::StateDir {
                path: self.state_dir.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
            }),
            Err(source) => Err(ConfigError::StateDir {
                path: self.state_dir.clone(),
                source,
            }),
        }
    }
}

fn require_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::MissingFile {
            what,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
