//! `husk-agent`: PID 1 of every husk microVM. See the crate README.

use clap::Parser;

/// husk's in-guest init and container engine.
#[derive(Debug, Parser)]
#[command(name = "husk-agent", version, about)]
struct Args {
    /// Where to listen: `vsock:PORT` (default: the port from the kernel
    /// command line, else 1024) or `unix:PATH` (tests on the host).
    #[arg(long)]
    listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("husk-agent: not implemented yet")
}
