//! `husk-agent`: PID 1 of every husk microVM. See the crate README.

use anyhow::Context;
use clap::Parser;
use husk_agent::container::cgroups::CgroupRoot;
use husk_agent::server::{bind, Config, Listen, Server};

/// husk's in-guest init and container engine.
#[derive(Debug, Parser)]
#[command(name = "husk-agent", version, about)]
struct Args {
    /// Where to listen: `vsock:PORT` (default: the port from the kernel
    /// command line, else 1024) or `unix:PATH` (tests on the host).
    #[arg(long)]
    listen: Option<Listen>,
    /// The cgroup2 mount that container cgroups are made under (ignored,
    /// with a warning, when it is not cgroup2).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let pid1 = std::process::id() == 1;
    if pid1 && !husk_agent::switch_root::switched() && husk_agent::switch_root::on_initramfs() {
        if let Err(e) = husk_agent::switch_root::leave_initramfs() {
            eprintln!("husk-agent: cannot leave the initramfs (containers cannot pivot_root): {e}");
        }
    }
    if pid1 {
        // Before logging, so the logs reach the serial console.
        if let Err(e) = husk_agent::init::setup() {
            eprintln!("husk-agent: init setup: {e:#}");
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    if pid1 {
        husk_agent::init::share_mounts();
    }
    let result = run(pid1);
    if pid1 {
        if let Err(e) = &result {
            tracing::error!("{e:#}");
        }
        husk_agent::init::reboot();
    }
    result
}

fn run(pid1: bool) -> anyhow::Result<()> {
    let args = Args::parse();
    let listen = args
        .listen
        .unwrap_or_else(|| Listen::Vsock(husk_agent::init::agent_port()));
    let cgroup_root = CgroupRoot::detect(&args.cgroup_root);
    if cgroup_root.is_none() {
        tracing::warn!(
            "{} is not cgroup2: container resource limits are not applied",
            args.cgroup_root.display()
        );
    }
    let listener = bind(&listen).context("listen")?;
    let uptime_ms = husk_agent::init::uptime_ms();
    tracing::info!(%listen, pid1, uptime_ms, "husk-agent listening");
    let mut server = Server::new(Config { pid1, cgroup_root }, listener)?;
    let exit = server.run()?;
    tracing::info!(?exit, "husk-agent exiting");
    if let Listen::Unix(p) = &listen {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
