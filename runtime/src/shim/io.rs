//! containerd's stdio FIFOs as host ends of `husk_protocol::attach`. The
//! exit of a process is reported only after its output drained, so a
//! client sees all output before the exit.

use std::path::PathBuf;

use husk_protocol::attach::{Attached, HostEnds, Sink, Source, Target};
use husk_protocol::client::AgentAddr;
use husk_protocol::StdioSpec;

use super::ShimError;

/// The FIFO paths containerd gave for one process.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// Read by the shim, written by the client.
    pub stdin: String,
    /// Written by the shim.
    pub stdout: String,
    /// Written by the shim (unused with a terminal).
    pub stderr: String,
    /// One pty stream instead of three.
    pub terminal: bool,
}

impl StdioPaths {
    /// Which streams the agent should keep for the host.
    pub fn spec(&self) -> StdioSpec {
        self.ends().spec()
    }

    /// The host ends: the FIFOs, opened by the pump threads (opening a
    /// FIFO blocks until the client opens its side).
    fn ends(&self) -> HostEnds {
        let fifo = |p: &String| (!p.is_empty()).then(|| PathBuf::from(p));
        HostEnds {
            stdin: fifo(&self.stdin).map(Source::Fifo),
            stdout: fifo(&self.stdout).map(Sink::Fifo),
            stderr: fifo(&self.stderr)
                .filter(|_| !self.terminal)
                .map(Sink::Fifo),
            terminal: self.terminal,
        }
    }
}

/// The running pumps of one process.
pub type Pumps = Attached;

/// Attaches the streams of process (`container`, `exec`) to its FIFOs.
pub fn attach(
    addr: &AgentAddr,
    container: &str,
    exec: Option<&str>,
    paths: &StdioPaths,
) -> Result<Pumps, ShimError> {
    let target = Target {
        container_id: container,
        exec_id: exec,
    };
    Ok(husk_protocol::attach::attach(
        addr,
        target,
        paths.ends(),
        None,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_spec_follows_the_paths() {
        let p = StdioPaths {
            stdin: String::new(),
            stdout: "/x/out".into(),
            stderr: "/x/err".into(),
            terminal: false,
        };
        let s = p.spec();
        assert_eq!((s.stdin, s.stdout, s.stderr), (false, true, true));
        let t = StdioPaths {
            terminal: true,
            ..p
        };
        assert_eq!(t.spec(), StdioSpec::default());
    }
}
