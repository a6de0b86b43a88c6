//! `kubectl port-forward` for a VM pod.
//!
//! containerd's CRI answers PortForward by dialling `localhost:PORT` inside
//! the pod's network namespace on the host (1.6 and 2.x alike). The pod's
//! processes listen in the guest, so nothing would answer there: the tc
//! mirror carries the veth's frames, not the namespace's loopback. The
//! shim leads that loopback into the guest's: one listener on 127.0.0.1 in
//! the namespace, an iptables `nat OUTPUT` rule that redirects every other
//! loopback TCP connection there, and for each connection the port it was
//! made to (`SO_ORIGINAL_DST`) asked of the agent, which connects to
//! 127.0.0.1:PORT in the guest ([`husk_protocol::Hello::Port`]) and pumps
//! both ways. (Kata Containers has no answer here: there, port-forward
//! fails with "connection refused".) containerd dials `tcp4` first, so
//! IPv4 is all that is forwarded.
//!
//! The rule lives in the pod's namespace and goes with it; [`PortForward::stop`]
//! removes it earlier, when the pod's VM stops.

use std::io;
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_protocol::client::AgentAddr;

use crate::network::{in_netns, run, NetworkError};

/// A running forwarder of one pod namespace's loopback.
#[derive(Debug)]
pub struct PortForward {
    netns: PathBuf,
    port: u16,
    listener: Arc<TcpListener>,
}

/// The iptables arguments of the redirect to `port` (`-A` or `-D`).
fn rule(op: &str, port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "-w",
        "-t",
        "nat",
        op,
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Adds (`-A`) or deletes (`-D`) the redirect to `port`, in the calling
/// thread's network namespace.
fn iptables(op: &str, port: u16) -> Result<(), NetworkError> {
    let args = rule(op, port);
    run(
        "iptables",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map(drop)
}

impl PortForward {
    /// Starts forwarding the loopback of the namespace at `netns` to the
    /// guest the agent at `agent` runs in. Needs `iptables` (with the nat
    /// table) on the host, which a Kubernetes node has.
    pub fn start(netns: &Path, agent: AgentAddr) -> Result<PortForward, NetworkError> {
        let (listener, port) = in_netns(netns, || {
            // CNI's loopback plugin brings lo up; make sure of it.
            run("ip", &["link", "set", "lo", "up"])?;
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| NetworkError::Io {
                what: "cannot listen on 127.0.0.1 in the pod's network namespace".into(),
                source: e,
            })?;
            let port = l
                .local_addr()
                .map_err(|e| NetworkError::Io {
                    what: "the forwarder's address".into(),
                    source: e,
                })?
                .port();
            iptables("-A", port)?;
            Ok((l, port))
        })?;
        let listener = Arc::new(listener);
        let l = listener.clone();
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&l, port, &agent))
            .map_err(|e| NetworkError::Io {
                what: "cannot start the port-forward thread".into(),
                source: e,
            })?;
        tracing::info!(netns = %netns.display(), port, "pod loopback forwarded into the guest");
        Ok(PortForward {
            netns: netns.to_owned(),
            port,
            listener,
        })
    }

    /// The port the forwarder listens on in the pod's namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting and removes the rule (when the namespace is still
    /// there); connections already made run to their end.
    pub fn stop(&self) {
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if !self.netns.exists() {
            return;
        }
        let port = self.port;
        let r = in_netns(&self.netns, move || iptables("-D", port));
        if let Err(e) = r {
            tracing::warn!(netns = %self.netns.display(), error = %e, "cannot remove the port-forward rule");
        }
    }
}

fn accept_loop(listener: &TcpListener, own_port: u16, agent: &AgentAddr) {
    loop {
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Shut down by `stop`, or the shim is going away.
            Err(_) => return,
        };
        let agent = agent.clone();
        let _ = std::thread::Builder::new()
            .name("port-forward-conn".into())
            .spawn(move || serve(conn, own_port, &agent));
    }
}

/// One forwarded connection: its original port to the guest's loopback.
fn serve(conn: TcpStream, own_port: u16, agent: &AgentAddr) {
    let port = match original_port(&conn) {
        Ok(p) if p != own_port => p,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "a forwarded connection has no original destination");
            return;
        }
    };
    match agent.open_port(port) {
        Ok(guest) => {
            tracing::debug!(port, "port forward to the guest");
            splice(conn, guest);
        }
        Err(e) => tracing::warn!(port, error = %e, "cannot forward to the guest"),
    }
}

/// The port a redirected connection was made to (`SO_ORIGINAL_DST`).
fn original_port(conn: &TcpStream) -> io::Result<u16> {
    let addr = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)?;
    Ok(u16::from_be(addr.sin_port))
}

/// How long a connection whose client has stopped sending waits for the
/// guest's side to end.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Copies both ways. The guest's side ending (its server closed) ends the
/// connection. vhost-device-vsock 0.3.0 turns a half-close of the host's
/// end into a reset, so a client's EOF is not passed on: the answer to what
/// the client sent still comes back, until the guest closes or for
/// [`LINGER`].
fn splice(tcp: TcpStream, guest: UnixStream) {
    let (Ok(mut tcp_rd), Ok(mut guest_wr), Ok(mut tcp_wr)) =
        (tcp.try_clone(), guest.try_clone(), tcp.try_clone())
    else {
        return;
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut guest_rd = guest;
    let down = std::thread::spawn(move || {
        let _ = io::copy(&mut guest_rd, &mut tcp_wr);
        // Ends the client's side too, and with it the copy below.
        let _ = tcp_wr.shutdown(Shutdown::Both);
        let _ = done_tx.send(());
    });
    let _ = io::copy(&mut tcp_rd, &mut guest_wr);
    if done_rx.recv_timeout(LINGER).is_err() {
        let _ = guest_wr.shutdown(Shutdown::Both);
    }
    let _ = down.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_redirects_loopback_tcp_but_the_forwarders_own_port() {
        assert_eq!(
            rule("-A", 40123).join(" "),
            "-w -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.1 ! --dport 40123 -j REDIRECT --to-ports 40123"
        );
        assert_eq!(rule("-D", 1)[3], "-D");
    }
}
