//! containerd's stdio FIFOs pumped to and from the agent's stdio streams.
//!
//! Each FIFO is opened in its pump thread (opening a FIFO blocks until the
//! other side opens it). Output pumps end when the agent closes the stream
//! (every writer in the guest closed it); the exit of a process is reported
//! only after they drained, so a client sees all output before the exit.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use husk_protocol::client::AgentAddr;
use husk_protocol::{StdioSpec, StreamKind};

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
        if self.terminal {
            return StdioSpec::default();
        }
        StdioSpec {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty(),
        }
    }
}

/// The running pumps of one process.
#[derive(Debug, Default)]
pub struct Pumps {
    /// The stream that carries stdin (the pty stream with a terminal), to
    /// close it on `CloseIO`.
    pub stdin: Option<UnixStream>,
    /// Signalled when the stdin pump forwarded everything up to the FIFO's
    /// EOF (and half-closed the stream itself).
    stdin_done: Option<Receiver<()>>,
    /// The pty stream, closed once the process exited and its output
    /// drained (the agent may keep it open while the host side is).
    pty: Option<UnixStream>,
    done: Vec<Receiver<()>>,
}

impl Pumps {
    /// Waits until every output pump finished, at most `timeout`.
    pub fn drain(&mut self, timeout: Duration) {
        // A pty's output is all there shortly after the exit.
        let timeout = if self.pty.is_some() {
            timeout.min(Duration::from_millis(500))
        } else {
            timeout
        };
        let end = Instant::now() + timeout;
        for rx in self.done.drain(..) {
            let left = end.saturating_duration_since(Instant::now());
            let _ = rx.recv_timeout(left);
        }
        if let Some(s) = self.pty.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// `CloseIO`: the client closed its end of the stdin FIFO. Takes the
    /// stdin stream out so [`close_stdin`] can end it without holding the
    /// pumps' lock.
    pub fn take_stdin(&mut self) -> Option<(UnixStream, Option<Receiver<()>>)> {
        let s = self.stdin.take()?;
        Some((s, self.stdin_done.take()))
    }
}

/// How long `CloseIO` lets the stdin pump forward what is still in the
/// FIFO before it ends the stream regardless.
const STDIN_DRAIN: Duration = Duration::from_secs(2);

/// Ends stdin: the process reads EOF after every byte the client wrote.
/// The pump half-closes the stream itself at the FIFO's EOF; cutting the
/// stream (or asking the agent to close stdin) before that would lose bytes
/// still in the FIFO or in flight. Only a client that keeps the FIFO open
/// past `CloseIO` gets its stdin ended after [`STDIN_DRAIN`].
pub fn close_stdin(stream: UnixStream, done: Option<Receiver<()>>) {
    if let Some(rx) = done {
        if rx.recv_timeout(STDIN_DRAIN).is_ok() {
            return;
        }
    }
    // Write half only: a pty stream also carries the output.
    let _ = stream.shutdown(Shutdown::Write);
}

/// Attaches the streams of process (`container`, `exec`) to its FIFOs.
pub fn attach(
    addr: &AgentAddr,
    container: &str,
    exec: Option<&str>,
    paths: &StdioPaths,
) -> Result<Pumps, ShimError> {
    let mut pumps = Pumps::default();
    let open = |kind| addr.open_stream(container, exec, kind);
    if paths.terminal {
        let s = open(StreamKind::Pty)?;
        pumps.pty = Some(s.try_clone().map_err(ShimError::io("dup stream"))?);
        if !paths.stdin.is_empty() {
            let w = s.try_clone().map_err(ShimError::io("dup stream"))?;
            pumps.stdin = Some(w.try_clone().map_err(ShimError::io("dup stream"))?);
            pumps.stdin_done = Some(pump_in(paths.stdin.clone(), w, true));
        }
        if !paths.stdout.is_empty() {
            pumps.done.push(pump_out(s, paths.stdout.clone()));
        }
        return Ok(pumps);
    }
    if !paths.stdin.is_empty() {
        let s = open(StreamKind::Stdin)?;
        pumps.stdin = Some(s.try_clone().map_err(ShimError::io("dup stream"))?);
        pumps.stdin_done = Some(pump_in(paths.stdin.clone(), s, false));
    }
    if !paths.stdout.is_empty() {
        pumps
            .done
            .push(pump_out(open(StreamKind::Stdout)?, paths.stdout.clone()));
    }
    if !paths.stderr.is_empty() {
        pumps
            .done
            .push(pump_out(open(StreamKind::Stderr)?, paths.stderr.clone()));
    }
    Ok(pumps)
}

fn pump_out(mut from: UnixStream, fifo: String) -> Receiver<()> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        match OpenOptions::new().write(true).open(&fifo) {
            Ok(mut f) => {
                if let Err(e) = copy(&mut from, &mut f) {
                    tracing::debug!(fifo, error = %e, "output pump ended");
                }
            }
            Err(e) => tracing::warn!(fifo, error = %e, "cannot open the output FIFO"),
        }
        let _ = tx.send(());
    });
    rx
}

fn pump_in(fifo: String, mut to: UnixStream, terminal: bool) -> Receiver<()> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        match File::open(&fifo) {
            Ok(mut f) => {
                if let Err(e) = copy(&mut f, &mut to) {
                    tracing::debug!(fifo, error = %e, "stdin pump ended");
                }
            }
            Err(e) => tracing::warn!(fifo, error = %e, "cannot open the stdin FIFO"),
        }
        // EOF on the FIFO is EOF for the process (a pty keeps its output).
        let _ = to.shutdown(if terminal {
            Shutdown::Write
        } else {
            Shutdown::Both
        });
        let _ = tx.send(());
    });
    rx
}

/// Copies until EOF, flushing each chunk (a FIFO reader sees it at once).
fn copy(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
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

    #[test]
    fn copy_moves_everything() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            a.write_all(&vec![7u8; 100_000]).unwrap();
        });
        let mut out = Vec::new();
        let r = std::thread::spawn(move || {
            copy(&mut b, &mut out).unwrap();
            out
        });
        t.join().unwrap();
        assert_eq!(r.join().unwrap().len(), 100_000);
    }
}
