//! Signals reach the monitor through a signalfd: they are blocked in the
//! main thread before any other thread exists, so every later thread
//! inherits the mask and nothing runs in signal-handler context. Children
//! get a clean mask (std resets it before exec).

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the monitor handles: the stop signals, the pause signals,
/// and those container supervisor mode forwards to the container.
pub const HANDLED: [Signal; 9] = [
    Signal::SIGTSTP,
    Signal::SIGCONT,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Signals that stop a plain VM (and a container VM before the container
/// exists).
pub fn is_stop_signal(s: Signal) -> bool {
    matches!(
        s,
        Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT
    )
}

/// The monitor's pause control (`husk pause` / `resume`): SIGTSTP parks
/// the guest's vCPUs, SIGCONT runs them again. Never forwarded. The
/// monitor says which state the vCPUs are in in `STATE_DIR/vm-state`.
pub fn pause_request(s: Signal) -> Option<bool> {
    match s {
        Signal::SIGTSTP => Some(true),
        Signal::SIGCONT => Some(false),
        _ => None,
    }
}

/// The monitor's signalfd.
#[derive(Debug)]
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks [`HANDLED`] in the calling thread and opens a non-blocking
    /// signalfd for them. Call before spawning threads.
    pub fn block() -> nix::Result<Self> {
        let mut set = SigSet::empty();
        for s in HANDLED {
            set.add(s);
        }
        set.thread_block()?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// Readable when a signal is pending.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The next pending signal, without blocking.
    pub fn next_signal(&mut self) -> Option<Signal> {
        loop {
            let info = self.fd.read_signal().ok()??;
            if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
                return Some(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_signal_arrives_on_the_fd() {
        // Runs in its own thread so the mask stays local to it.
        std::thread::spawn(|| {
            let mut s = Signals::block().unwrap();
            assert_eq!(s.next_signal(), None);
            nix::sys::pthread::pthread_kill(nix::sys::pthread::pthread_self(), Signal::SIGUSR2)
                .unwrap();
            assert_eq!(s.next_signal(), Some(Signal::SIGUSR2));
            assert!(!is_stop_signal(Signal::SIGUSR2) && is_stop_signal(Signal::SIGTERM));
        })
        .join()
        .unwrap();
    }
}
