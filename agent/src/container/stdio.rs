//! The stdio of a container process: a pipe per attached stream, /dev/null
//! for the others, or one pty when `process.terminal` is set.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use husk_protocol::StdioSpec;
use nix::fcntl::OFlag;
use nix::unistd::pipe2;

/// The agent's ends: what the stream connections attach to.
#[derive(Debug, Default)]
pub struct AgentStdio {
    /// Write end of the process's stdin pipe.
    pub stdin: Option<OwnedFd>,
    /// Read end of the stdout pipe.
    pub stdout: Option<OwnedFd>,
    /// Read end of the stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// The pty master.
    pub pty: Option<OwnedFd>,
}

/// The child's ends, dup'ed onto 0, 1 and 2.
#[derive(Debug)]
pub struct ChildStdio {
    /// fds for 0, 1, 2.
    pub fds: [OwnedFd; 3],
    /// Whether the fds are a pty slave (to become the controlling tty).
    pub tty: bool,
}

fn devnull() -> io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/null")?
        .into())
}

/// Takes the pty master a child sent: non-blocking, sized.
pub fn adopt_master(
    agent: &mut AgentStdio,
    master: OwnedFd,
    size: Option<(u16, u16)>,
) -> io::Result<()> {
    if let Some((rows, cols)) = size {
        crate::sys::set_winsize(std::os::fd::AsFd::as_fd(&master), rows, cols)?;
    }
    crate::sys::set_nonblocking(master.as_raw_fd(), true)?;
    agent.pty = Some(master);
    Ok(())
}

// An output pipe's size: a process writing in large blocks fills 16
// pages (the default) at once and sleeps until the agent has spliced them
// into the stream; under emulation each such switch costs more than the
// copy. The pages are allocated only as they fill and charged to the
// writer's memory cgroup (the container's).
const OUTPUT_PIPE_SIZE: i32 = 1 << 20;

fn grow_pipe(w: &OwnedFd) {
    if let Err(e) = nix::fcntl::fcntl(
        w.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_SIZE),
    ) {
        // Only a slower stream: the default pipe still works.
        tracing::debug!(error = %e, "output pipe keeps its default size");
    }
}

/// Makes the pipes or the pty for one process.
pub fn make(spec: StdioSpec, terminal: bool) -> io::Result<(AgentStdio, ChildStdio)> {
    let mut agent = AgentStdio::default();
    if terminal {
        // The child opens the pty itself, through the container's
        // /dev/ptmx, and sends the master back ([`adopt_master`]).
        let fds = [devnull()?, devnull()?, devnull()?];
        return Ok((agent, ChildStdio { fds, tty: true }));
    }
    let stdin = if spec.stdin {
        let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
        crate::sys::set_nonblocking(w.as_raw_fd(), true)?;
        grow_pipe(&w);
        agent.stdin = Some(w);
        r
    } else {
        devnull()?
    };
    let out = |attach: bool, slot: &mut Option<OwnedFd>| -> io::Result<OwnedFd> {
        if attach {
            let (r, w) = pipe2(OFlag::O_CLOEXEC)?;
            crate::sys::set_nonblocking(r.as_raw_fd(), true)?;
            grow_pipe(&w);
            *slot = Some(r);
            Ok(w)
        } else {
            devnull()
        }
    };
    let stdout = out(spec.stdout, &mut agent.stdout)?;
    let stderr = out(spec.stderr, &mut agent.stderr)?;
    Ok((
        agent,
        ChildStdio {
            fds: [stdin, stdout, stderr],
            tty: false,
        },
    ))
}
