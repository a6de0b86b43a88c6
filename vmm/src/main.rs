//! `husk-vmm`: the per-container monitor process.

use clap::Parser;

/// Runs one husk microVM and its device daemons.
#[derive(Debug, Parser)]
#[command(name = "husk-vmm", version, about)]
struct Args {
    /// The VM configuration (JSON).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("husk-vmm: not implemented yet")
}
