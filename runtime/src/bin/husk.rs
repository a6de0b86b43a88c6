//! `husk`: the runc-compatible OCI runtime CLI.

use clap::Parser;

/// A microVM-backed OCI container runtime.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("husk: not implemented yet")
}
