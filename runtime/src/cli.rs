//! The `husk` command line: runc's commands, arguments and global flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A microVM-backed OCI container runtime with runc's command line.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about, propagate_version = true)]
pub struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/husk", env = "HUSK_ROOT")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
    /// linux.cgroupsPath is systemd's "slice:prefix:name" (as runc's);
    /// the VM's host cgroup is made at the path systemd would use.
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility (`--rootless`); husk needs root.
    #[arg(long, global = true, value_name = "BOOL")]
    pub rootless: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (what containerd asks for).
    Json,
}

/// `--format` of `list` and `ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table.
    Table,
    /// JSON.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container: boot its VM and build it, without starting its process.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start {
        /// The container id.
        id: String,
    },
    /// Create and start a container.
    Run(RunArgs),
    /// Print the OCI state of a container as JSON.
    State {
        /// The container id.
        id: String,
    },
    /// Send a signal to a container's init (or, with --all, every process).
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        /// The container id.
        id: String,
        /// Signal name or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container: stop its VM and remove its state.
    Delete {
        /// Kill a running container first.
        #[arg(short, long)]
        force: bool,
        /// The container id.
        id: String,
    },
    /// Run a further process in a running container.
    Exec(ExecArgs),
    /// List the processes of a container (guest pids).
    Ps {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The container id.
        id: String,
        /// Accepted for runc compatibility (ps options).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only print ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into the bundle directory.
    Spec {
        /// The bundle directory.
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print the runtime-spec features this runtime supports, as JSON.
    Features,
    /// Pause every process of a container (its VM's vCPUs stop).
    Pause {
        /// The container id.
        id: String,
    },
    /// Resume a paused container.
    Resume {
        /// The container id.
        id: String,
    },
    /// Update a container's resource limits.
    Update(UpdateArgs),
    /// Internal: pump an exec'd process's stdio and exit with its status.
    #[command(hide = true, name = "exec-attach")]
    ExecAttach {
        /// The container id.
        id: String,
        /// The exec id.
        exec_id: String,
        /// Use a pty (the stream is `pty`).
        #[arg(long)]
        tty: bool,
        /// The console socket to hand the pty master to.
        #[arg(long)]
        console_socket: Option<PathBuf>,
    },
}

/// Arguments shared by `create` and `run`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The bundle directory.
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid (its monitor) here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to receive the pty master of a terminal container.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility; the guest always pivots.
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Pass this many extra fds (3..3+N) to the container process:
    /// refused unless 0 (fds cannot cross into a VM).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// The container id.
    pub id: String,
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What `create` takes.
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once started instead of waiting for the container.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits (foreground only).
    #[arg(long)]
    pub keep: bool,
}

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A JSON file holding the OCI process to run.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// Return once started.
    #[arg(short, long)]
    pub detach: bool,
    /// Extra environment, KEY=VALUE (repeatable); overrides the spec's KEY.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// UID[:GID] to run as.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids (repeatable).
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Set no_new_privileges.
    #[arg(long)]
    pub no_new_privs: bool,
    /// Add a capability to the bounding, effective and permitted sets
    /// (and ambient, when the spec has an inheritable set), as runc does
    /// (repeatable).
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Write the exec's host-side pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to receive the pty master.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass this many extra fds to the process: refused unless 0 (fds
    /// cannot cross into a VM).
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    /// Exec into a paused container too: the exec goes ahead once the
    /// container is resumed (without it, a paused container is refused).
    #[arg(long)]
    pub ignore_paused: bool,
    /// Run the process in this existing sub-cgroup of the container's
    /// cgroup in the guest: `PATH`. runc's cgroup v1 form
    /// `CONTROLLER[,CONTROLLER]:PATH` is refused (the guest has cgroup v2
    /// only).
    #[arg(long, value_name = "[CONTROLLER:]PATH")]
    pub cgroup: Vec<String>,
    /// The container id.
    pub id: String,
    /// The command and its arguments (unless --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Arguments of `update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A JSON file (or - for stdin) of linux.resources.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<String>,
    /// Max number of processes.
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// CPU quota.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU period.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// The container id.
    pub id: String,
}
