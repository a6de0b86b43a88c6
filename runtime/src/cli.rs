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
    /// Print a container's events as JSON lines: its stats every
    /// interval and its OOM kills, until it stops (runc's `events`).
    Events {
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// How often to print stats (a Go duration: 5s, 500ms, 1m30s).
        #[arg(long, default_value = "5s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// The container id.
        id: String,
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
    /// Say whether this host can run husk's containers, and how: /dev/kvm,
    /// the engine `auto` picks and why, the guest kernel and initramfs, the
    /// device daemons, QEMU, cgroups, the state root. Exits 1 when it
    /// cannot.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages and shell completions (bash, zsh, fish) into a
    /// directory, for packages.
    #[command(hide = true)]
    GenerateDocs {
        /// Where (`man1/`, `completions/` are made in it).
        out: PathBuf,
    },
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

/// Arguments of `update`: runc's flags. A value of 0 (an empty cpuset)
/// leaves the field as it is, as with runc; sizes take runc's units
/// (`64M`, `1g`; `-1` for no limit).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// A JSON file (or - for stdin) of the runtime spec's linux.resources;
    /// the other resource flags cannot be given with it.
    #[arg(short, long, value_name = "FILE|-", conflicts_with_all = [
        "blkio_weight", "cpu_period", "cpu_quota", "cpu_share", "cpu_rt_period",
        "cpu_rt_runtime", "cpuset_cpus", "cpuset_mems", "kernel_memory",
        "kernel_memory_tcp", "memory", "memory_reservation", "memory_swap", "pids_limit",
    ])]
    pub resources: Option<PathBuf>,
    /// Block IO weight, 10..=1000 (relative to other containers).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// CPU CFS period, microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU CFS quota per period, microseconds (-1: no limit).
    #[arg(long, allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight against other containers).
    #[arg(long, alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// Real-time CPU period, microseconds (refused: the guest has cgroup
    /// v2 only).
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// Real-time CPU runtime, microseconds (refused: the guest has cgroup
    /// v2 only).
    #[arg(long, allow_negative_numbers = true)]
    pub cpu_rt_runtime: Option<i64>,
    /// The vCPUs the container may use (0-3, 0,1); within the VM's.
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// The memory nodes it may use (the guest has one, 0).
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Kernel memory limit (refused: cgroup v2 has none).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory: Option<String>,
    /// Kernel TCP buffer memory limit (refused: cgroup v2 has none).
    #[arg(long, allow_hyphen_values = true)]
    pub kernel_memory_tcp: Option<String>,
    /// Memory limit (64M, 1g; -1: no limit); at most the VM's RAM.
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory soft limit (memory.low).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit (-1: no limit).
    #[arg(long, allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Maximum number of processes (-1: no limit).
    #[arg(long, allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Intel RDT L3 cache schema (refused: not available in the guest).
    #[arg(long)]
    pub l3_cache_schema: Option<String>,
    /// Intel RDT memory bandwidth schema (refused: not available in the
    /// guest).
    #[arg(long)]
    pub mem_bw_schema: Option<String>,
    /// The container id.
    pub id: String,
}

/// A Go duration (runc's `--interval`): numbers with a unit each (`ns`,
/// `us`, `µs`, `ms`, `s`, `m`, `h`), decimals allowed, summed (`1m30s`,
/// `1.5s`); it must be above zero.
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {s:?}: use a number and a unit, e.g. 5s, 500ms, 1m30s");
    let mut rest = s;
    let mut secs = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: a number has no unit"))?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        secs += n * scale;
    }
    let d = std::time::Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    if d.is_zero() {
        return Err(format!(
            "invalid duration {s:?}: the interval must be above zero"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intervals_are_go_durations() {
        for (s, want) in [
            ("5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h", Duration::from_secs(7200)),
            ("250us", Duration::from_micros(250)),
            ("100\u{b5}s", Duration::from_micros(100)),
            ("1000000ns", Duration::from_millis(1)),
        ] {
            assert_eq!(parse_interval(s), Ok(want), "{s}");
        }
        for bad in ["", "5", "s", "5x", "-5s", "1..2s", "0s", "0", "5s3"] {
            let e = parse_interval(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("invalid duration {bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn events_takes_runcs_flags() {
        let cli =
            Cli::try_parse_from(["husk", "events", "--stats", "--interval", "2s", "c1"]).unwrap();
        match cli.command {
            Command::Events {
                stats,
                interval,
                id,
            } => assert_eq!(
                (stats, interval, id.as_str()),
                (true, Duration::from_secs(2), "c1")
            ),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["husk", "events", "c1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Events { stats: false, interval, .. } if interval == Duration::from_secs(5)
        ));
        assert!(Cli::try_parse_from(["husk", "events", "--interval", "0s", "c1"]).is_err());
    }
}
