//! Small typed messages between the agent and a container child over a
//! `SOCK_SEQPACKET` socketpair (one JSON datagram per message), youki style.
//! The child's end is close-on-exec, so a successful exec reads as EOF.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use husk_protocol::ErrorCode;
use nix::sys::socket::{send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

/// Child -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChildMsg {
    /// The child unshared a user namespace: write its uid/gid maps, then
    /// answer [`ParentMsg::Continue`].
    MapIds,
    /// The pid (in the agent's pid namespace) of the process that will exec.
    Pid(i32),
    /// The container is built; waiting for [`ParentMsg::Start`].
    Ready,
    /// The pty master, made inside the container, rides along (SCM_RIGHTS).
    PtyMaster,
    /// A step failed; the child exits after sending this.
    Error {
        /// The protocol error code to answer with.
        code: ErrorCode,
        /// What failed, naming the thing.
        message: String,
    },
}

/// Agent -> child.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParentMsg {
    /// The uid/gid maps are written.
    Continue,
    /// Exec the process.
    Start,
}

/// Why a sync message could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The socket failed.
    #[error("sync socket")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a message.
    #[error("malformed sync message")]
    Json(#[from] serde_json::Error),
    /// Nothing arrived in time.
    #[error("timed out waiting for the container process")]
    Timeout,
}

/// A connected pair: (agent end, child end), both close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends one message.
pub fn send_msg<T: Serialize>(fd: impl AsFd, msg: &T) -> Result<(), SyncError> {
    let body = serde_json::to_vec(msg)?;
    send(fd.as_fd().as_raw_fd(), &body, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)?;
    Ok(())
}

/// Sends one message with an fd attached.
pub fn send_msg_fd<T: Serialize>(
    fd: impl AsFd,
    msg: &T,
    attached: impl AsFd,
) -> Result<(), SyncError> {
    use nix::sys::socket::{sendmsg, ControlMessage};
    let body = serde_json::to_vec(msg)?;
    let fds = [attached.as_fd().as_raw_fd()];
    let iov = [io::IoSlice::new(&body)];
    sendmsg::<()>(
        fd.as_fd().as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// Receives one message; `None` on EOF (the peer exec'd or exited).
pub fn recv_msg<T: for<'de> Deserialize<'de>>(
    fd: impl AsFd,
    timeout: Duration,
) -> Result<Option<T>, SyncError> {
    Ok(recv_msg_fd(fd, timeout)?.map(|(m, _)| m))
}

/// Like [`recv_msg`], also returning an fd sent along with the message.
pub fn recv_msg_fd<T: for<'de> Deserialize<'de>>(
    fd: impl AsFd,
    timeout: Duration,
) -> Result<Option<(T, Option<OwnedFd>)>, SyncError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    let deadline = Instant::now() + timeout;
    let raw = fd.as_fd().as_raw_fd();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SyncError::Timeout);
        }
        let mut pfd = [libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        }];
        if crate::sys::poll(&mut pfd, left.as_millis().min(i32::MAX as u128) as i32)? == 0 {
            continue;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let got =
            recvmsg::<()>(raw, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).map(|m| {
                let fd = m.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                });
                (m.bytes, fd.map(crate::sys::own_received_fd))
            });
        match got {
            Ok((0, _)) => return Ok(None),
            Ok((n, fd)) => return Ok(Some((serde_json::from_slice(&buf[..n])?, fd))),
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(nix::errno::Errno::ECONNRESET) => return Ok(None),
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
}
