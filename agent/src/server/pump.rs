//! A one-way byte pump between two non-blocking fds (a stdio pipe or pty
//! master and a stream connection), with a bounded buffer so a slow reader
//! back-pressures the writer instead of losing bytes.

use std::os::fd::{AsRawFd, OwnedFd};

use husk_protocol::StreamKind;
use nix::errno::Errno;
use nix::sys::socket::{shutdown, Shutdown};

// One page per write. Larger writes to a vsock socket become packets that
// vhost-device-vsock 0.3.0 (virtio-vsock 0.10) sometimes fails to parse
// ("DescriptorLengthTooSmall"); it drops them and the connection's credit
// never recovers, so output stalls after a few tens of KiB. Page-sized
// packets pass; measured: 10 MiB byte-exact through the qemu engine.
const CHUNK: usize = 4 * 1024;

/// What a pump is attached to, for CloseStdin and RemoveContainer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpKey {
    /// The container.
    pub container_id: String,
    /// The process (`None`: init).
    pub exec_id: Option<String>,
    /// The stream.
    pub stream: StreamKind,
}

/// One direction of a stream.
#[derive(Debug)]
pub struct Pump {
    /// Read side.
    pub src: OwnedFd,
    /// Write side.
    pub dst: OwnedFd,
    /// Bytes read and not yet written.
    pub buf: Vec<u8>,
    /// The source reached EOF (or EIO for a pty whose slave closed).
    pub src_eof: bool,
    /// Shut down the write side of `dst` (a socket) at the end, so the host
    /// sees EOF even while another pump holds the same socket.
    pub shutdown_dst: bool,
    /// What the pump serves.
    pub key: PumpKey,
}

/// The outcome of servicing a pump.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpState {
    /// Keep polling.
    Open,
    /// Finished or broken; drop it.
    Done,
}

impl Pump {
    /// Whether to poll the source for input.
    pub fn wants_read(&self) -> bool {
        !self.src_eof && self.buf.is_empty()
    }

    /// Whether to poll the destination for output room.
    pub fn wants_write(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Moves what it can without blocking.
    pub fn service(&mut self) -> PumpState {
        // Bounded, so one busy stream cannot starve the others.
        for _ in 0..64 {
            if self.buf.is_empty() {
                if self.src_eof {
                    return self.finish();
                }
                let mut chunk = vec![0u8; CHUNK];
                match nix::unistd::read(self.src.as_raw_fd(), &mut chunk) {
                    Ok(0) | Err(Errno::EIO) | Err(Errno::ECONNRESET) => self.src_eof = true,
                    Ok(n) => {
                        chunk.truncate(n);
                        self.buf = chunk;
                    }
                    Err(Errno::EAGAIN) => return PumpState::Open,
                    Err(Errno::EINTR) => {}
                    Err(_) => self.src_eof = true,
                }
            } else {
                match nix::unistd::write(&self.dst, &self.buf) {
                    Ok(n) => {
                        self.buf.drain(..n);
                    }
                    Err(Errno::EAGAIN) => return PumpState::Open,
                    Err(Errno::EINTR) => {}
                    Err(_) => return PumpState::Done,
                }
            }
        }
        PumpState::Open
    }

    fn finish(&mut self) -> PumpState {
        if self.shutdown_dst {
            let _ = shutdown(self.dst.as_raw_fd(), Shutdown::Write);
        }
        PumpState::Done
    }
}
