//! The host side of a guest process's stdio: the one attach layer the
//! monitor's container mode, `husk exec` and the shim share.
//!
//! A process's stdio reaches the host as stream connections to the agent
//! (one per stdin, stdout and stderr, or one pty stream both ways; see the
//! crate doc). [`attach`] opens them for the host ends a caller has (its
//! own fds, a host pty, containerd's FIFOs) and pumps bytes between them,
//! one thread per direction:
//!
//! - Output pumps run until the agent ends the stream (every writer in the
//!   guest closed it) and keep reading after the host end stops taking
//!   bytes, so a process never blocks on a reader that went away.
//!   [`Attached::drain`] waits for them once the process exited, so a
//!   caller reports an exit only after its output.
//! - The input pump half-closes its stream (`shutdown(SHUT_WR)`) at the
//!   host end's EOF: that is the process's EOF, delivered after every byte
//!   before it because it travels on the same connection. There is no
//!   separate "close stdin" request: one on the control connection would
//!   race the bytes still in flight on the stream. [`StdinHandle::close`]
//!   is containerd's `CloseIO` on top of the same half-close.
//!
//! What vhost-device-vsock 0.3.0 needs is kept here too: a handshake that
//! may never be answered is retried with timeouts ([`crate::client`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{AgentAddr, ClientError};
use crate::{Request, ResizeTty, StdioSpec, StreamKind};

/// How long [`Attached::drain`] waits for a pty's output: it is all there
/// shortly after the exit, and the agent may keep a pty stream open while
/// another process in the guest holds the terminal.
pub const PTY_DRAIN: Duration = Duration::from_millis(500);

/// How long [`StdinHandle::close`] lets the input pump forward what its
/// host end still holds before it ends the stream regardless.
pub const STDIN_DRAIN: Duration = Duration::from_secs(2);

/// Where a process's input comes from on the host.
#[derive(Debug)]
pub enum Source {
    /// An open file: the caller's stdin, a host pty's slave.
    File(File),
    /// A FIFO, opened in the pump's thread (an open blocks until the other
    /// side opens it).
    Fifo(PathBuf),
}

/// Where a process's output goes on the host.
#[derive(Debug)]
pub enum Sink {
    /// An open file: the caller's stdout or stderr, a host pty's slave.
    File(File),
    /// A FIFO, opened for writing in the pump's thread.
    Fifo(PathBuf),
}

/// The host ends of one process's stdio. A stream without a host end is
/// not attached (the process has `/dev/null` there).
#[derive(Debug, Default)]
pub struct HostEnds {
    /// Sent to the process's stdin (its terminal's input with `terminal`).
    pub stdin: Option<Source>,
    /// Receives the process's stdout (its terminal's output).
    pub stdout: Option<Sink>,
    /// Receives the process's stderr; unused with `terminal`.
    pub stderr: Option<Sink>,
    /// The process has a terminal: one pty stream carries both ways.
    pub terminal: bool,
}

impl HostEnds {
    /// Which pipe streams the agent keeps for the host: none with a
    /// terminal, whose one pty stream is always attached.
    pub fn spec(&self) -> StdioSpec {
        if self.terminal {
            return StdioSpec::default();
        }
        StdioSpec {
            stdin: self.stdin.is_some(),
            stdout: self.stdout.is_some(),
            stderr: self.stderr.is_some(),
        }
    }
}

/// Run first in every pump thread (the monitor confines its threads with
/// seccomp); an error ends the thread before it moves a byte, which closes
/// its stream.
pub type ThreadInit = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Which process of which container.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The container.
    pub container_id: &'a str,
    /// The exec (`None`: the container's init).
    pub exec_id: Option<&'a str>,
}

/// One output pump: its end signal and its stream, cut off when it does
/// not drain in time.
#[derive(Debug)]
struct OutputPump {
    done: Receiver<()>,
    stream: UnixStream,
}

/// The pumps of one attached process.
#[derive(Debug, Default)]
pub struct Attached {
    stdin: Option<StdinHandle>,
    /// The pty stream, closed after the drain.
    pty: Option<UnixStream>,
    outputs: Vec<OutputPump>,
}

/// The input side of an attached process, for `CloseIO`.
#[derive(Debug)]
pub struct StdinHandle {
    stream: UnixStream,
    /// Signalled when the input pump reached its host end's EOF and
    /// half-closed the stream itself.
    done: Receiver<()>,
}

impl StdinHandle {
    /// Ends the process's input once the pump forwarded what its host end
    /// holds: the pump half-closes at the host end's EOF itself; a host end
    /// kept open past this call gets the stream half-closed after
    /// [`STDIN_DRAIN`] (only the write half: a pty stream also carries the
    /// output).
    pub fn close(self) {
        if self.done.recv_timeout(STDIN_DRAIN).is_ok() {
            return;
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

impl Attached {
    /// Waits until every output pump finished, at most `timeout` ([`PTY_DRAIN`]
    /// for a pty), and cuts off those that did not.
    pub fn drain(&mut self, timeout: Duration) {
        let timeout = if self.pty.is_some() {
            timeout.min(PTY_DRAIN)
        } else {
            timeout
        };
        let end = Instant::now() + timeout;
        for p in self.outputs.drain(..) {
            let left = end.saturating_duration_since(Instant::now());
            if p.done.recv_timeout(left).is_err() {
                tracing::warn!("output not drained within {timeout:?}; cutting it off");
                let _ = p.stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(s) = self.pty.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The input side, taken out so a `CloseIO` can wait on it without
    /// holding whatever lock guards these pumps.
    pub fn take_stdin(&mut self) -> Option<StdinHandle> {
        self.stdin.take()
    }
}

/// Opens the stdio streams of `target` for `ends` and starts their pumps.
/// Every stream is opened (and acknowledged by the agent) before the first
/// thread starts; a failure leaves nothing running.
pub fn attach(
    addr: &AgentAddr,
    target: Target<'_>,
    ends: HostEnds,
    init: Option<ThreadInit>,
) -> Result<Attached, ClientError> {
    let open = |kind| addr.open_stream(target.container_id, target.exec_id, kind);
    let dup = |s: &UnixStream| {
        s.try_clone().map_err(|e| ClientError::Connect {
            addr: addr.to_string(),
            source: e,
        })
    };
    // (stream, host end) pairs, all opened before any thread starts.
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut pty = None;
    if ends.terminal {
        let s = open(StreamKind::Pty)?;
        if let Some(src) = ends.stdin {
            inputs.push((dup(&s)?, src));
        }
        if let Some(sink) = ends.stdout {
            outputs.push((dup(&s)?, sink));
        }
        pty = Some(s);
    } else {
        if let Some(src) = ends.stdin {
            inputs.push((open(StreamKind::Stdin)?, src));
        }
        for (kind, sink) in [
            (StreamKind::Stdout, ends.stdout),
            (StreamKind::Stderr, ends.stderr),
        ] {
            if let Some(sink) = sink {
                outputs.push((open(kind)?, sink));
            }
        }
    }
    let mut attached = Attached {
        pty,
        ..Attached::default()
    };
    for (stream, src) in inputs {
        let kept = dup(&stream)?;
        let done = spawn_pump(&init, move |ok| {
            if ok {
                pump_in(src, &stream);
            }
            // The process's EOF, after every byte before it; the write
            // half only, as a pty stream also carries the output.
            let _ = stream.shutdown(Shutdown::Write);
        });
        attached.stdin = Some(StdinHandle { stream: kept, done });
    }
    for (stream, sink) in outputs {
        let kept = dup(&stream)?;
        let done = spawn_pump(&init, move |ok| {
            if ok {
                pump_out(stream, sink);
            }
        });
        attached.outputs.push(OutputPump { done, stream: kept });
    }
    Ok(attached)
}

/// Runs `work` in a new thread, told whether `init` succeeded there; the
/// receiver is signalled when it returns.
fn spawn_pump(init: &Option<ThreadInit>, work: impl FnOnce(bool) + Send + 'static) -> Receiver<()> {
    let (tx, done) = channel();
    let init = init.clone();
    thread::spawn(move || {
        work(run_init(init.as_ref()));
        let _ = tx.send(());
    });
    done
}

fn run_init(init: Option<&ThreadInit>) -> bool {
    match init.map(|f| f()) {
        Some(Err(e)) => {
            tracing::error!("stdio thread: {e}");
            false
        }
        _ => true,
    }
}

/// Copies the host end into the stream until the host end's EOF or the
/// stream breaks.
fn pump_in(src: Source, mut to: &UnixStream) {
    let mut from = match src {
        Source::File(f) => f,
        Source::Fifo(path) => match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(fifo = %path.display(), error = %e, "cannot open the stdin FIFO");
                return;
            }
        },
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // EIO on a pty whose other side is gone, or a broken FIFO.
            Err(_) => return,
        }
    }
}

/// Copies the stream into the host end until the agent ends the stream.
/// Once the host end stops taking bytes the rest is read and dropped, so
/// the process never blocks on a reader that went away.
fn pump_out(mut from: UnixStream, sink: Sink) {
    let mut to = match sink {
        Sink::File(f) => Some(f),
        Sink::Fifo(path) => match OpenOptions::new().write(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(fifo = %path.display(), error = %e, "cannot open the output FIFO");
                None
            }
        },
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!("output stream broke after {total} bytes: {e}");
                break;
            }
        };
        total += n as u64;
        if let Some(f) = &mut to {
            if f.write_all(&buf[..n]).is_err() {
                to = None;
            }
        }
    }
    tracing::debug!("output stream ended after {total} bytes");
}

/// The window size (rows, cols) of terminal `tty`, or None when it is not
/// a terminal or has no size yet (0 rows).
pub fn window_size(tty: impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`; `tty` is open.
    let r = unsafe { libc::ioctl(tty.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r >= 0 && ws.ws_row != 0).then_some((ws.ws_row, ws.ws_col))
}

/// The `ResizeTty` that copies host terminal `tty`'s window size to
/// `target`'s pty; None when `tty` has no size to copy.
pub fn resize_request(target: Target<'_>, tty: impl AsFd) -> Option<Request> {
    let (rows, cols) = window_size(tty)?;
    Some(Request::ResizeTty(ResizeTty {
        container_id: target.container_id.to_owned(),
        exec_id: target.exec_id.map(str::to_owned),
        rows,
        cols,
    }))
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
