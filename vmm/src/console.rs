//! The guest's serial console, bounded. Both engines hand what the guest
//! writes to COM1 to one pipe (the builtin engine's 16550A writes into it,
//! qemu gets its write end as `-add-fd` + a `file` chardev on
//! `/dev/fdset/N`), and a relay thread in the monitor (`husk-console`)
//! reads it into [`BoundedLog`]:
//!
//! - a token bucket limits what reaches the log to
//!   [`ConsoleConfig::rate_bytes_per_s`] after a burst of
//!   [`ConsoleConfig::burst_bytes`]; what is over is dropped and counted,
//!   and the next byte that fits is preceded by a
//!   `[husk-vmm: N bytes of console output dropped]` line;
//! - the file never grows past [`ConsoleConfig::max_bytes`]: when a write
//!   would cross it, the last half of the cap is moved to the start of the
//!   file and the rest cut off, so the tail is kept.
//!
//! The relay also scans everything the guest writes, dropped bytes
//! included, for the agent's ready line ([`crate::vm::AGENT_READY_LINE`]),
//! so the monitor learns readiness from the relay (an atomic flag and an
//! eventfd it can poll) and never reads the log back.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use husk_vmm_contract::config::{ConsoleConfig, MIN_CONSOLE_BURST_BYTES};

/// The console log could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The log file could not be created.
    #[error("cannot create console log {path}")]
    Create {
        /// The log.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The pipe, eventfds or the relay thread.
    #[error("cannot start the console relay: {what}")]
    Relay {
        /// Which step.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A token bucket over bytes, driven by the caller's clock.
#[derive(Debug)]
struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// Nanoseconds not yet turned into a whole token.
    carry_ns: u128,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            carry_ns: 0,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ns = now.saturating_duration_since(self.last).as_nanos() + self.carry_ns;
        self.last = now;
        let earned = ns * u128::from(self.rate) / 1_000_000_000;
        if earned == 0 {
            self.carry_ns = ns;
            return;
        }
        self.carry_ns = ns - earned * 1_000_000_000 / u128::from(self.rate);
        self.tokens = u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(self.tokens)
            .min(self.burst);
        if self.tokens == self.burst {
            self.carry_ns = 0;
        }
    }

    /// Takes up to `want` tokens; returns how many it got.
    fn take(&mut self, want: u64, now: Instant) -> u64 {
        self.refill(now);
        let got = want.min(self.tokens);
        self.tokens -= got;
        got
    }
}

/// The console log file: rate limited, capped, the tail kept.
#[derive(Debug)]
pub struct BoundedLog {
    file: File,
    /// Where the next byte goes (the file's length).
    len: u64,
    max: u64,
    /// Only regular files are capped (a console on `/dev/null` is not).
    regular: bool,
    bucket: TokenBucket,
    dropped: u64,
    dropped_total: u64,
}

impl BoundedLog {
    /// Creates (truncates) the log at `path`.
    pub fn create(path: &Path, limits: &ConsoleConfig, now: Instant) -> io::Result<Self> {
        // Read too: keeping the tail reads it back.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let regular = file.metadata()?.is_file();
        Ok(BoundedLog {
            file,
            len: 0,
            max: limits.max_bytes,
            regular,
            bucket: TokenBucket::new(limits.rate_bytes_per_s, limits.burst_bytes, now),
            dropped: 0,
            dropped_total: 0,
        })
    }

    /// Writes what the rate limit lets through of `data` at time `now`;
    /// keeps the file under the cap. Once output was dropped, nothing more
    /// goes in until the bucket holds [`BoundedLog::resume_at`] tokens;
    /// then a marker line saying how much was dropped (paid for with
    /// tokens too, so markers cannot flood the log) and the output again.
    pub fn write(&mut self, data: &[u8], now: Instant) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.bucket.refill(now);
        if self.dropped > 0 {
            if self.bucket.tokens < self.resume_at() {
                self.dropped += data.len() as u64;
                self.dropped_total += data.len() as u64;
                return Ok(());
            }
            let marker = format!(
                "\n[husk-vmm: {} bytes of console output dropped]\n",
                self.dropped
            );
            self.dropped = 0;
            self.bucket.tokens = self.bucket.tokens.saturating_sub(marker.len() as u64);
            self.append(marker.as_bytes())?;
        }
        let got = self.bucket.take(data.len() as u64, now) as usize;
        let over = (data.len() - got) as u64;
        if over > 0 {
            tracing::debug!("console rate limit reached: dropping output");
            self.dropped += over;
            self.dropped_total += over;
        }
        self.append(&data[..got])
    }

    /// The tokens the bucket must hold before output resumes after a drop:
    /// a second's worth, at least [`MIN_CONSOLE_BURST_BYTES`]` / 2`, at
    /// most the burst.
    pub fn resume_at(&self) -> u64 {
        self.bucket
            .rate
            .max(MIN_CONSOLE_BURST_BYTES / 2)
            .min(self.bucket.burst)
    }

    /// Bytes dropped by the rate limit so far.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// The log's current length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is in the log.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.regular {
            return (&self.file).write_all(data);
        }
        let keep = self.max / 2;
        if data.len() as u64 > keep {
            // Only the tail of this write can survive anyway.
            data = &data[data.len() - keep as usize..];
        }
        if self.len + data.len() as u64 > self.max {
            // Keep the last `keep - data.len()` bytes of the file, then
            // this write: the file ends at most `keep` long.
            let tail = (keep - data.len() as u64).min(self.len);
            let mut buf = vec![0u8; tail as usize];
            self.file.read_exact_at(&mut buf, self.len - tail)?;
            self.file.write_all_at(&buf, 0)?;
            self.file.set_len(tail)?;
            self.len = tail;
        }
        self.file.write_all_at(data, self.len)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

/// Finds a needle in a stream fed in pieces (it may straddle two).
#[derive(Debug)]
pub struct LineWatch {
    needle: &'static [u8],
    carry: Vec<u8>,
    found: bool,
}

impl LineWatch {
    /// Watches for `needle`.
    pub fn new(needle: &'static str) -> Self {
        LineWatch {
            needle: needle.as_bytes(),
            carry: Vec::new(),
            found: false,
        }
    }

    /// Feeds the next piece; true once the needle was seen.
    pub fn feed(&mut self, data: &[u8]) -> bool {
        if self.found || self.needle.is_empty() {
            self.found = true;
            return true;
        }
        let n = self.needle.len();
        self.carry.extend_from_slice(data);
        if self.carry.windows(n).any(|w| w == self.needle) {
            self.found = true;
            self.carry = Vec::new();
            return true;
        }
        let keep = self.carry.len().min(n - 1);
        self.carry.drain(..self.carry.len() - keep);
        false
    }
}

/// Readiness the relay reports: a flag and an eventfd that becomes (and
/// stays) readable when it is set.
#[derive(Debug)]
struct Ready {
    flag: AtomicBool,
    evt: EventFd,
}

impl Ready {
    fn set(&self) {
        if !self.flag.swap(true, Ordering::SeqCst) {
            let _ = self.evt.write(1);
        }
    }
}

/// The running relay: the pipe's read end in a thread writing the log.
#[derive(Debug)]
pub struct ConsoleRelay {
    ready: Arc<Ready>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

/// What the relay reads at once.
const CHUNK: usize = 16 * 1024;

impl ConsoleRelay {
    /// Creates the log at `path` and a pipe, and starts the relay thread
    /// reading the pipe into the log. Returns the relay and the pipe's
    /// write end (close-on-exec) for the engine. The thread confines itself
    /// ([`crate::seccomp::ThreadKind::Console`]) before reading.
    pub fn start(path: &Path, limits: &ConsoleConfig) -> Result<(Self, OwnedFd), ConsoleError> {
        let relay_err = |what| move |source| ConsoleError::Relay { what, source };
        let log = BoundedLog::create(path, limits, Instant::now()).map_err(|source| {
            ConsoleError::Create {
                path: path.to_owned(),
                source,
            }
        })?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| relay_err("pipe")(io::Error::from(e)))?;
        let ready = Arc::new(Ready {
            flag: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)
                .map_err(relay_err("eventfd"))?,
        });
        let stop = Arc::new(
            EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK).map_err(relay_err("eventfd"))?,
        );
        let (r, s) = (ready.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("husk-console".into())
            .spawn(move || {
                if let Err(e) = crate::confine::this_thread(crate::seccomp::ThreadKind::Console) {
                    tracing::error!(error = %e, "cannot confine the console relay");
                    r.set();
                    return;
                }
                relay(rd, log, &r, &s);
            })
            .map_err(relay_err("thread"))?;
        Ok((
            ConsoleRelay {
                ready,
                stop,
                thread: Some(thread),
            },
            wr,
        ))
    }

    /// Whether the agent's ready line has come by.
    pub fn announced(&self) -> bool {
        self.ready.flag.load(Ordering::SeqCst)
    }

    /// Readable once [`ConsoleRelay::announced`] is true.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the eventfd is owned by `self.ready`, which lives as long
        // as `self`, so it outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.ready.evt.as_raw_fd()) }
    }

    /// Logs what is still in the pipe and ends the thread. Idempotent.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            if t.join().is_err() {
                tracing::error!("the console relay panicked");
            }
        }
    }
}

impl Drop for ConsoleRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The relay loop: until EOF (every writer closed) or `stop`, then what
/// is left in the pipe.
fn relay(rd: OwnedFd, mut log: BoundedLog, ready: &Ready, stop: &EventFd) {
    let mut watch = LineWatch::new(crate::vm::AGENT_READY_LINE);
    let mut buf = vec![0u8; CHUNK];
    let mut stopping = false;
    loop {
        if !stopping {
            // SAFETY: the eventfd outlives this borrow (the Arc is held by
            // the caller for the whole loop).
            let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
            let mut fds = [
                PollFd::new(rd.as_fd(), PollFlags::POLLIN),
                PollFd::new(stop_fd, PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "console relay: poll failed");
                    return;
                }
                Ok(_) => {}
            }
            if fds[1].any().unwrap_or(false) {
                stopping = true;
                // Drain without blocking from here on.
                let _ = nix::fcntl::fcntl(
                    rd.as_raw_fd(),
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                );
            }
        }
        let n = match nix::unistd::read(rd.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) if stopping => break,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => {
                tracing::error!(error = %e, "console relay: read failed");
                break;
            }
        };
        // Logged before the ready line is announced, so that whoever hears
        // of it finds the whole line in the log.
        if let Err(e) = log.write(&buf[..n], Instant::now()) {
            tracing::warn!(error = %e, "console relay: cannot write the log");
        }
        if watch.feed(&buf[..n]) {
            ready.set();
        }
    }
    if log.dropped_total() > 0 {
        tracing::warn!(
            dropped = log.dropped_total(),
            "console output over the rate limit was dropped"
        );
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
