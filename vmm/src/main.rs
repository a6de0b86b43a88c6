//! `husk-vmm`: the per-container monitor process. See `vmm/README.md`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::Parser;
use husk_vmm::monitor::{error_chain, ReadyFd, EXIT_FAILURE};
use husk_vmm::seccomp::SeccompMode;
use husk_vmm::signals::Signals;
use husk_vmm_contract::config::{
    CachePolicy, ContainerConfig, EngineChoice, ShareConfig, VirtiofsdSandbox, VmConfig,
};

/// Runs one husk microVM and its device daemons; with a container section,
/// runs that container and exits with its status.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version, about)]
struct Args {
    /// The VM configuration (JSON); the flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The guest kernel (uncompressed vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The initramfs (agent as /init).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Extra guest kernel command-line arguments.
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest RAM in MiB.
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Guest vCPUs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Directory for sockets and logs (created if missing).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The hybrid vsock Unix socket (default STATE_DIR/vsock.sock).
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The guest's vsock CID.
    #[arg(long)]
    guest_cid: Option<u32>,
    /// The agent's vsock port.
    #[arg(long)]
    agent_port: Option<u32>,
    /// A virtio-fs share, TAG=HOSTDIR (repeatable; replaces the config's).
    #[arg(long = "share")]
    shares: Vec<ShareConfig>,
    /// The serial console log (default STATE_DIR/console.log).
    #[arg(long)]
    console: Option<PathBuf>,
    /// auto, builtin or qemu.
    #[arg(long)]
    engine: Option<EngineChoice>,
    /// Path of qemu-system-x86_64.
    #[arg(long)]
    qemu: Option<PathBuf>,
    /// Path of virtiofsd.
    #[arg(long)]
    virtiofsd: Option<PathBuf>,
    /// Path of the vsock daemon (husk-vsockd; the flag keeps its old name).
    #[arg(long)]
    vhost_device_vsock: Option<PathBuf>,
    /// virtiofsd's sandbox: namespace (default), or the weaker chroot or
    /// none, which only an explicit choice here or in the config gives.
    #[arg(long, env = "HUSK_VIRTIOFSD_SANDBOX")]
    virtiofsd_sandbox: Option<VirtiofsdSandbox>,
    /// virtio-fs cache policy for every share: never (the default), auto,
    /// metadata or always.
    #[arg(long, env = "HUSK_VIRTIOFS_CACHE")]
    virtiofs_cache: Option<CachePolicy>,
    /// The guest's writeback cache on every writable share (off by
    /// default: writes reach the host late; see `ShareConfig::writeback`).
    #[arg(long, env = "HUSK_VIRTIOFS_WRITEBACK")]
    virtiofs_writeback: Option<bool>,
    /// virtiofsd's worker threads for every share (virtiofsd's default
    /// when unset).
    #[arg(long, env = "HUSK_VIRTIOFSD_THREADS")]
    virtiofsd_threads: Option<u32>,
    /// Seconds to wait for the agent.
    #[arg(long)]
    boot_timeout: Option<u64>,
    /// Container supervisor mode: a JSON file holding the CreateContainer
    /// request.
    #[arg(long)]
    container: Option<PathBuf>,
    /// Inherited fd to write one JSON readiness line to.
    #[arg(long)]
    ready_fd: Option<i32>,
    /// Log file (default: stderr; STATE_DIR/husk-vmm.log in container mode,
    /// where stderr is the container's).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Validate the configuration, print it as JSON and exit.
    #[arg(long)]
    check: bool,
    /// Print what this host offers (hardware virtualization, /dev/kvm, the
    /// engine `--engine` (default auto) picks and why, the helper programs
    /// found and their versions) as JSON and exit; `husk check` reads it.
    #[arg(long)]
    probe_host: bool,
    /// Seccomp filters on husk-vmm's own threads: `on` (a forbidden
    /// syscall kills the monitor with SIGSYS), `off` (escape hatch), `log`
    /// (the kernel logs forbidden syscalls and allows them).
    #[arg(long, env = "HUSK_VMM_SECCOMP", value_enum, default_value = "on")]
    seccomp: SeccompMode,
}

fn build_config(a: &Args) -> anyhow::Result<VmConfig> {
    let mut cfg = match &a.config {
        Some(p) => VmConfig::load(p)?,
        None => {
            let kernel = a
                .kernel
                .clone()
                .context("--kernel is required without --config")?;
            let state = a
                .state_dir
                .clone()
                .context("--state-dir is required without --config")?;
            VmConfig::new(kernel, state)
        }
    };
    macro_rules! set {
        ($flag:expr, $field:expr) => {
            if let Some(v) = $flag.clone() {
                $field = v;
            }
        };
    }
    set!(a.kernel, cfg.kernel);
    set!(a.state_dir, cfg.state_dir);
    set!(a.memory_mib, cfg.memory_mib);
    set!(a.vcpus, cfg.vcpus);
    set!(a.guest_cid, cfg.vsock.guest_cid);
    set!(a.agent_port, cfg.vsock.agent_port);
    set!(a.engine, cfg.engine);
    set!(a.boot_timeout, cfg.boot_timeout_s);
    set!(a.virtiofsd_sandbox, cfg.virtiofsd_sandbox);
    if a.initramfs.is_some() {
        cfg.initramfs = a.initramfs.clone();
    }
    if a.cmdline.is_some() {
        cfg.cmdline = a.cmdline.clone();
    }
    if a.vsock_uds.is_some() {
        cfg.vsock.uds_path = a.vsock_uds.clone();
    }
    if a.console.is_some() {
        cfg.console_path = a.console.clone();
    }
    if !a.shares.is_empty() {
        cfg.shares = a.shares.clone();
    }
    for share in &mut cfg.shares {
        set!(a.virtiofs_cache, share.cache);
        set!(a.virtiofs_writeback, share.writeback);
        if a.virtiofsd_threads.is_some() {
            share.threads = a.virtiofsd_threads;
        }
    }
    if a.qemu.is_some() {
        cfg.binaries.qemu = a.qemu.clone();
    }
    if a.virtiofsd.is_some() {
        cfg.binaries.virtiofsd = a.virtiofsd.clone();
    }
    if a.vhost_device_vsock.is_some() {
        cfg.binaries.vhost_device_vsock = a.vhost_device_vsock.clone();
    }
    if let Some(p) = &a.container {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let create = serde_json::from_str(&text)
            .with_context(|| format!("bad container request {}", p.display()))?;
        cfg.container = Some(ContainerConfig {
            create,
            ready_fd: None,
            network: None,
        });
    }
    if let (Some(fd), Some(c)) = (a.ready_fd, cfg.container.as_mut()) {
        c.ready_fd = Some(fd);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn init_logging(path: Option<PathBuf>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match path {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .with_context(|| format!("cannot open log {}", p.display()))?;
            b.with_ansi(false).with_writer(Mutex::new(f)).init();
        }
        None => b
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

fn real_main() -> anyhow::Result<i32> {
    husk_vmm::monitor::boot_clock_start();
    let args = Args::parse();
    // Block signals before anything could start a thread.
    let mut signals = Signals::block().context("cannot set up signal handling")?;
    if args.probe_host {
        let binaries = husk_vmm_contract::config::BinaryPaths {
            qemu: args.qemu.clone(),
            virtiofsd: args.virtiofsd.clone(),
            vhost_device_vsock: args.vhost_device_vsock.clone(),
        };
        let report = husk_vmm::probe::host_report(args.engine.unwrap_or_default(), &binaries);
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    let ready_fd = args.ready_fd;
    let cfg = match build_config(&args) {
        Ok(c) => c,
        Err(e) => {
            // Report on the ready fd too, so a parent waiting there learns why.
            if let Some(Ok(mut r)) = ready_fd.map(ReadyFd::from_inherited) {
                r.fail(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    if args.check {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(0);
    }
    let ready_fd = ready_fd.or(cfg.container.as_ref().and_then(|c| c.ready_fd));
    let ready = match ready_fd {
        Some(fd) => ReadyFd::from_inherited(fd).with_context(|| format!("bad --ready-fd {fd}"))?,
        None => ReadyFd::default(),
    };
    // A container's state directory is its runtime's; a plain VM's is made
    // here if missing.
    if cfg.container.is_some() {
        cfg.require_state_dir()?;
    } else {
        cfg.ensure_state_dir()?;
    }
    let log = args.log_file.clone().or_else(|| {
        cfg.container
            .as_ref()
            .map(|_| cfg.state_dir.join("husk-vmm.log"))
    });
    init_logging(log)?;
    husk_vmm::seccomp::set_mode(args.seccomp);
    if args.seccomp != SeccompMode::On {
        tracing::warn!(
            "seccomp filters are {:?} (--seccomp / HUSK_VMM_SECCOMP): a compromised monitor thread can make any syscall",
            args.seccomp
        );
    }
    let code = if cfg.container.is_some() {
        husk_vmm::supervise::run_container(&cfg, &mut signals, ready)?
    } else {
        husk_vmm::monitor::run_plain(&cfg, &mut signals, ready)?
    };
    Ok(code)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let chain: &dyn std::error::Error = e.as_ref();
            eprintln!("husk-vmm: error: {}", error_chain(chain));
            ExitCode::from(EXIT_FAILURE as u8)
        }
    }
}
