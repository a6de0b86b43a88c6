//! `husk-vsockd`: a vhost-user virtio-vsock backend for one guest, with
//! the hybrid Unix-socket convention for the host side.
//!
//! `husk-vsockd --socket VHOST_USER_SOCKET --uds-path UDS --guest-cid N`
//!
//! Host clients connect to `UDS`, write `CONNECT <port>\n` and read
//! `OK <host port>\n`; guest connections to host port P reach the Unix
//! socket `UDS_P`. See `muxer.rs` for the connection rules and
//! `packet.rs` for what is accepted from the guest.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use husk_vsockd::backend::{VsockBackend, HOST_EVENT};
use husk_vsockd::muxer::Muxer;

/// Command line (the subset of vhost-device-vsock's that husk uses).
#[derive(Debug, Parser)]
#[command(name = "husk-vsockd", version, about)]
struct Args {
    /// The vhost-user socket to listen on for the VMM.
    #[arg(long)]
    socket: PathBuf,
    /// The Unix socket host clients connect to (`CONNECT <port>\n`).
    #[arg(long)]
    uds_path: PathBuf,
    /// The guest's CID.
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..u64::from(u32::MAX)))]
    guest_cid: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let muxer = Muxer::new(args.guest_cid, &args.uds_path).map_err(|e| e.to_string())?;
    let backend = Arc::new(RwLock::new(
        VsockBackend::new(args.guest_cid, muxer).map_err(|e| format!("eventfd: {e}"))?,
    ));
    // One frontend at a time; a frontend that reconnects gets a fresh
    // device (its old connections are gone).
    loop {
        let mut daemon = VhostUserDaemon::new(
            "husk-vsockd".to_owned(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("vhost-user daemon: {e}"))?;
        let epoll_fd = backend
            .read()
            .map_err(|_| "backend lock poisoned".to_owned())?
            .muxer
            .epoll_fd();
        for handler in daemon.get_epoll_handlers() {
            handler
                .register_listener(epoll_fd, EventSet::IN, u64::from(HOST_EVENT))
                .map_err(|e| format!("registering the host sockets: {e}"))?;
        }
        let res = daemon.serve(&args.socket);
        tracing::info!("frontend disconnected: {res:?}");
        backend
            .write()
            .map_err(|_| "backend lock poisoned".to_owned())?
            .muxer
            .reset();
    }
}
