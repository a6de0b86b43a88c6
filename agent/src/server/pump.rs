//! A one-way byte pump between two non-blocking fds (a stdio pipe, pty
//! master or forwarded TCP socket and a stream connection), with a bounded buffer so a slow reader
//! back-pressures the writer instead of losing bytes.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use husk_protocol::StreamKind;
use nix::errno::Errno;
use nix::sys::socket::{shutdown, Shutdown};

// 64 KiB per read and write: the largest vsock packet the guest sends
// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE), so one write is one packet and one
// notification of the device. The host's vsock backend (husk-vsockd) takes
// a packet whose payload spans several descriptors (vhost-device-vsock
// 0.3.0 refused them and forced one page per write). Under emulation the
// guest's CPU is what limits a stream, so the pump also reuses its buffer
// instead of allocating (and zeroing) one per read.
const CHUNK: usize = 64 * 1024;

// The most one splice moves: more than a pipe holds, so one call empties it.
const SPLICE_MAX: usize = 1 << 20;

// Reads and writes per `service` call (1 MiB at most), so one busy stream
// cannot starve the others.
const ROUNDS: usize = 32;

/// What a pump is attached to, for RemoveContainer.
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
    /// Bytes read; those from `pos` on are not written yet.
    pub buf: Vec<u8>,
    /// How much of `buf` is written.
    pub pos: usize,
    /// The source reached EOF (or EIO for a pty whose slave closed).
    pub src_eof: bool,
    /// Move bytes with splice(2) (`src` is a pipe, `dst` a socket): the
    /// kernel copies from the pipe's pages into the socket's packets, one
    /// copy instead of a read into `buf` and a write out of it, which under
    /// emulation is what a process's output stream costs the guest. Cleared
    /// (read and write from then on) if the kernel refuses the pair.
    pub splice: bool,
    /// The last splice found bytes in the pipe but no room in `dst`: wait
    /// for `dst`, not for the pipe.
    pub dst_full: bool,
    /// Shut down the write side of `dst` (a socket) at the end, so the host
    /// sees EOF even while another pump holds the same socket.
    pub shutdown_dst: bool,
    /// The process stream the pump serves; `None` for a port forward,
    /// which belongs to no process.
    pub key: Option<PumpKey>,
    /// A port forward's other direction, dropped with this one: when
    /// either direction ends the whole connection ends, because
    /// vhost-device-vsock 0.3.0 carries no half-close (a host-side
    /// `shutdown(SHUT_WR)` resets the connection; a guest-side one never
    /// reaches the host), so only a close tells the host the guest is done.
    pub peer: Option<u64>,
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
        !self.src_eof && !self.has_pending() && !self.dst_full
    }

    /// Whether to poll the destination for output room.
    pub fn wants_write(&self) -> bool {
        self.has_pending() || self.dst_full
    }

    fn has_pending(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Moves what it can without blocking.
    pub fn service(&mut self) -> PumpState {
        self.dst_full = false;
        for _ in 0..ROUNDS {
            if !self.has_pending() {
                if self.src_eof {
                    return self.finish();
                }
                if self.splice {
                    match self.splice_once() {
                        Some(PumpState::Open) => return PumpState::Open,
                        Some(PumpState::Done) => return PumpState::Done,
                        None => continue,
                    }
                }
                // Zeroes only what the last short read left unused.
                self.buf.resize(CHUNK, 0);
                self.pos = 0;
                let r = nix::unistd::read(self.src.as_raw_fd(), &mut self.buf);
                self.buf.truncate(*r.as_ref().unwrap_or(&0));
                match r {
                    Ok(0) | Err(Errno::EIO) | Err(Errno::ECONNRESET) => self.src_eof = true,
                    Ok(_) => {}
                    Err(Errno::EAGAIN) => return PumpState::Open,
                    Err(Errno::EINTR) => {}
                    Err(_) => self.src_eof = true,
                }
            } else {
                match nix::unistd::write(&self.dst, &self.buf[self.pos..]) {
                    Ok(n) => {
                        self.pos += n;
                    }
                    Err(Errno::EAGAIN) => return PumpState::Open,
                    Err(Errno::EINTR) => {}
                    Err(_) => return PumpState::Done,
                }
            }
        }
        // EOF seen on the last round with nothing left to write: finish
        // now, since such a pump wants neither read nor write and would
        // never be polled again (its destination would stay open forever).
        if self.src_eof && !self.has_pending() {
            return self.finish();
        }
        PumpState::Open
    }

    /// One splice from the pipe to the socket: `None` to go on, else what
    /// `service` returns.
    fn splice_once(&mut self) -> Option<PumpState> {
        match crate::sys::splice(self.src.as_fd(), self.dst.as_fd(), SPLICE_MAX) {
            Ok(0) => self.src_eof = true,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                // Either side may be the one that would block; bytes still
                // in the pipe say it was the socket.
                self.dst_full = crate::sys::pending_bytes(self.src.as_fd()).unwrap_or(0) > 0;
                return Some(PumpState::Open);
            }
            Err(Errno::EINVAL) => {
                tracing::debug!("splice refused; the pump reads and writes");
                self.splice = false;
            }
            Err(_) => return Some(PumpState::Done),
        }
        None
    }

    fn finish(&mut self) -> PumpState {
        if self.shutdown_dst {
            let _ = shutdown(self.dst.as_raw_fd(), Shutdown::Write);
        }
        PumpState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        for fd in [&r, &w] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .unwrap();
        }
        (r, w)
    }

    fn splice_pump(src: OwnedFd, dst: OwnedFd) -> Pump {
        Pump {
            src,
            dst,
            buf: Vec::new(),
            pos: 0,
            src_eof: false,
            splice: true,
            dst_full: false,
            shutdown_dst: true,
            key: None,
            peer: None,
        }
    }

    /// A stdout pipe spliced into a socket: every byte arrives in order;
    /// while the socket is full the pump waits for the socket, not the pipe
    /// (which still holds bytes), and it resumes once the reader drains;
    /// at the pipe's EOF the socket's write side is shut down.
    #[test]
    fn splice_moves_everything_and_waits_for_a_full_socket() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (src_r, src_w) = pipe();
        nix::fcntl::fcntl(
            src_w.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
        )
        .unwrap();
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let data: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
        assert_eq!(nix::unistd::write(&src_w, &data).unwrap(), data.len());
        drop(src_w);
        let mut p = splice_pump(src_r, ours);
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let mut saw_full = false;
        for _ in 0..10_000 {
            let state = p.service();
            if p.dst_full {
                saw_full = true;
                assert!(p.wants_write() && !p.wants_read());
            }
            loop {
                match nix::unistd::read(theirs.as_raw_fd(), &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(Errno::EAGAIN) => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            if state == PumpState::Done {
                break;
            }
        }
        assert!(
            p.splice,
            "the kernel refused to splice a pipe into a unix socket"
        );
        assert!(saw_full, "1 MiB never filled the socket's buffer");
        // The shutdown: the reader sees EOF after the last byte.
        loop {
            match nix::unistd::read(theirs.as_raw_fd(), &mut chunk) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no EOF after the data: {e}"),
            }
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrived changed or out of order");
    }

    /// A pump resumed with a chunk still buffered (its destination was
    /// full) reads on even rounds, so the source's EOF can land on the last
    /// round of a `service` call; it must finish then, not stall.
    #[test]
    fn eof_on_the_last_round_finishes() {
        let (src_r, src_w) = pipe();
        let (dst_r, dst_w) = pipe();
        nix::fcntl::fcntl(
            dst_w.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
        )
        .unwrap();
        nix::fcntl::fcntl(
            src_w.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
        )
        .unwrap();
        // Round 1 writes the buffered chunk, rounds 2..ROUNDS read and
        // write ROUNDS / 2 - 1 chunks, the last round reads EOF.
        let data = vec![7u8; (ROUNDS / 2 - 1) * CHUNK];
        assert_eq!(nix::unistd::write(&src_w, &data).unwrap(), data.len());
        drop(src_w);
        let mut p = Pump {
            src: src_r,
            dst: dst_w,
            buf: vec![1u8; CHUNK],
            pos: 0,
            src_eof: false,
            splice: false,
            dst_full: false,
            shutdown_dst: false,
            key: Some(PumpKey {
                container_id: "c".into(),
                exec_id: None,
                stream: StreamKind::Stdin,
            }),
            peer: None,
        };
        assert_eq!(p.service(), PumpState::Done);
        let mut got = vec![0u8; 33 * CHUNK];
        let n = nix::unistd::read(dst_r.as_raw_fd(), &mut got).unwrap();
        assert_eq!(n, ROUNDS / 2 * CHUNK);
    }
}
