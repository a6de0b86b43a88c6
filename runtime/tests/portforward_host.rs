//! `kubectl port-forward` on the host side: a connection to 127.0.0.1:PORT
//! inside a pod's network namespace (what containerd's CRI dials) reaches
//! the agent as a `Port` connection for PORT, both ways; `stop` removes the
//! redirect. The agent here is a fake on a Unix socket that answers in
//! upper case (the real agent's side is `agent/tests/protocol.rs`, the
//! whole path through containerd `tests/shim/cri/cni_test.py`). Needs root,
//! `ip` and `iptables`; skips with the reason otherwise.

use std::io::{BufRead, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

use husk_protocol::client::AgentAddr;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{Hello, Response, ResponseFrame};
use husk_runtime::portforward::PortForward;

fn prerequisites() -> Result<(), String> {
    husk_test_support::root().map_err(|e| format!("{e} (network namespaces, iptables)"))?;
    for (prog, flag) in [("ip", "-V"), ("iptables", "--version")] {
        let ok = Command::new(prog)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(format!("{prog} is not installed"));
        }
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("husk-pf-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        assert!(Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success());
        Netns(name)
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.0)
    }

    /// `iptables -t nat -S OUTPUT` in the namespace.
    fn nat_rules(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.0, "iptables", "-w", "-t", "nat", "-S", "OUTPUT",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Connects to 127.0.0.1:`port` from inside the namespace (as
    /// containerd does), sends `data` and a newline, half-closes (as
    /// `nc </dev/null` does: the answer must still come), returns the
    /// answer.
    fn dial(&self, port: u16, data: &str) -> String {
        let script = "import socket,sys\n\
            s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=20)\n\
            s.sendall(sys.argv[2].encode()+b'\\n'); s.shutdown(socket.SHUT_WR)\n\
            b=b''\n\
            while True:\n    d=s.recv(65536)\n    if not d: break\n    b+=d\n\
            sys.stdout.write(b.decode())\n";
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.0,
                "python3",
                "-c",
                script,
                &port.to_string(),
                data,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn loopback_connections_in_the_pod_namespace_reach_the_agent_by_port() {
    husk_test_support::require!(prerequisites());
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // The fake agent: acknowledges a Port hello, answers "PORT:" and the
    // request's first line in upper case, and closes (as a guest server
    // that closes after its answer).
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let Ok(Hello::Port { port, .. }) = read_frame::<_, Hello>(&mut s) else {
                    return;
                };
                write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty))).unwrap();
                let mut line = String::new();
                std::io::BufReader::new(&mut s)
                    .read_line(&mut line)
                    .unwrap();
                write!(s, "{port}:{}", line.trim_end().to_uppercase()).unwrap();
            });
        }
    });
    let ns = Netns::new();
    let pf = PortForward::start(&ns.path(), AgentAddr::Unix(sock)).unwrap();
    assert!(
        ns.nat_rules()
            .contains(&format!("--to-ports {}", pf.port())),
        "{}",
        ns.nat_rules()
    );
    assert_eq!(ns.dial(8080, "hello"), "8080:HELLO");
    assert_eq!(ns.dial(5432, "second"), "5432:SECOND");
    pf.stop();
    assert!(!ns.nat_rules().contains("REDIRECT"), "{}", ns.nat_rules());
}
