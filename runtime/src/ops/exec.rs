//! `exec`: a further process in a running container, its stdio pumped
//! between this process (or a detached `husk exec-attach`) and the agent.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use husk_protocol::client::AgentClient;
use husk_protocol::{ExecProcess, Request, ResizeTty, StdioSpec, StreamKind};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use oci_spec::runtime::Process;

use super::stdio::{pump, raw_pty, send_console, std_fd};
use super::{OpError, Runtime, AGENT_TIMEOUT};
use crate::state::{write_atomic, Status};

/// What `exec` takes.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The process to run (already merged from --process or the flags).
    pub process: Process,
    /// Return once started; a detached `husk exec-attach` pumps the stdio.
    pub detach: bool,
    /// Where to write the host-side pid (the attach process).
    pub pid_file: Option<PathBuf>,
    /// Where the pty master goes.
    pub console_socket: Option<PathBuf>,
}

fn new_exec_id() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `opts.process` in container `id`. Returns its exit status, or 0
/// when detached.
pub fn exec(rt: &Runtime, id: &str, opts: &ExecOptions) -> Result<i32, OpError> {
    let st = rt.root.load(id)?;
    if !st.monitor_alive() || st.status == Status::Paused {
        let status = if st.monitor_alive() {
            st.status
        } else {
            Status::Stopped
        };
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "cannot exec in it",
        });
    }
    let tty = opts.process.terminal().unwrap_or(false);
    if tty && opts.detach && opts.console_socket.is_none() {
        return Err(OpError::Invalid(
            "exec --tty --detach needs --console-socket".into(),
        ));
    }
    let exec_id = new_exec_id();
    let mut agent = rt.agent(&st)?;
    let req = ExecProcess {
        container_id: id.into(),
        exec_id: exec_id.clone(),
        process: opts.process.clone(),
        stdio: StdioSpec {
            stdin: !tty,
            stdout: !tty,
            stderr: !tty,
        },
    };
    agent
        .call(Request::ExecProcess(Box::new(req)))
        .map_err(|source| OpError::Agent {
            id: id.into(),
            source,
        })?;
    if !opts.detach {
        if let Some(p) = &opts.pid_file {
            write_atomic(p, std::process::id().to_string().as_bytes())?;
        }
        return exec_attach(rt, id, &exec_id, tty, opts.console_socket.as_deref());
    }
    let mut cmd = Command::new(&rt.self_binary);
    cmd.arg("--root")
        .arg(rt.root.path())
        .args(["exec-attach", id, &exec_id]);
    if tty {
        cmd.arg("--tty");
    }
    if let Some(s) = &opts.console_socket {
        cmd.arg("--console-socket").arg(s);
    }
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(OpError::io("cannot start husk exec-attach"))?;
    if let Some(p) = &opts.pid_file {
        write_atomic(p, child.id().to_string().as_bytes())?;
    }
    std::mem::forget(child);
    Ok(0)
}

/// Pumps the stdio of exec `exec_id` until it exits; returns its status.
pub fn exec_attach(
    rt: &Runtime,
    id: &str,
    exec_id: &str,
    tty: bool,
    console_socket: Option<&std::path::Path>,
) -> Result<i32, OpError> {
    let st = rt.root.load(id)?;
    let addr = Runtime::agent_addr(&st);
    let agent_err = |source| OpError::Agent {
        id: id.into(),
        source,
    };
    let mut waiter = AgentClient::connect(&addr, AGENT_TIMEOUT).map_err(agent_err)?;
    let mut pumps = Vec::new();
    let mut restore = None;
    if tty {
        // Block SIGWINCH before any thread starts so only the resize
        // thread receives it.
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        let _ = winch.thread_block();
        let stream = addr
            .open_stream(id, Some(exec_id), StreamKind::Pty)
            .map_err(agent_err)?;
        let (input, output) = match console_socket {
            Some(sock) => {
                let pty = raw_pty().map_err(OpError::io("cannot open a pty"))?;
                send_console(sock, &pty).map_err(OpError::io("cannot send the pty"))?;
                // SAFETY: TIOCSCTTY on the slave we own, in our own session
                // (exec-attach runs after setsid), so resizes reach us.
                unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
                let slave = std::fs::File::from(pty.slave);
                (slave.try_clone().map_err(OpError::io("dup"))?, slave)
            }
            None => {
                let stdin = std_fd(0).map_err(OpError::io("stdin"))?;
                if let Ok(t) = tcgetattr(&stdin) {
                    let mut raw = t.clone();
                    cfmakeraw(&mut raw);
                    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
                    restore = Some((stdin.try_clone().map_err(OpError::io("dup"))?, t));
                }
                (stdin, std_fd(1).map_err(OpError::io("stdout"))?)
            }
        };
        resize(&addr, id, exec_id, &output);
        let size_src = output.try_clone().map_err(OpError::io("dup"))?;
        let (a, i, e) = (addr.clone(), id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || loop {
            if winch.wait().is_ok() {
                resize(&a, &i, &e, &size_src);
            }
        });
        let to_guest = stream.try_clone().map_err(OpError::io("dup"))?;
        pumps.push(pump(stream, output, |_| {}));
        // Input ends with the process; this thread is not joined.
        pump(input, to_guest, |_| {});
    } else {
        let stdin = addr
            .open_stream(id, Some(exec_id), StreamKind::Stdin)
            .map_err(agent_err)?;
        let stdout = addr
            .open_stream(id, Some(exec_id), StreamKind::Stdout)
            .map_err(agent_err)?;
        let stderr = addr
            .open_stream(id, Some(exec_id), StreamKind::Stderr)
            .map_err(agent_err)?;
        pumps.push(pump(
            stdout,
            std_fd(1).map_err(OpError::io("stdout"))?,
            |_| {},
        ));
        pumps.push(pump(
            stderr,
            std_fd(2).map_err(OpError::io("stderr"))?,
            |_| {},
        ));
        // The half-close is the process's EOF once the agent delivered every
        // byte before it (a CloseStdin request would race them).
        pump(std_fd(0).map_err(OpError::io("stdin"))?, stdin, |s| {
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
    }
    let status = waiter.wait(id, Some(exec_id)).map_err(agent_err);
    for p in pumps {
        let _ = p.join();
    }
    if let Some((f, t)) = restore {
        let _ = tcsetattr(&f, SetArg::TCSANOW, &t);
    }
    let _ = std::io::stdout().flush();
    status
}

fn resize(addr: &husk_protocol::client::AgentAddr, id: &str, exec_id: &str, term: &std::fs::File) {
    let Some((rows, cols)) = husk_vmm::container::window_size(term) else {
        return;
    };
    if let Ok(mut c) = AgentClient::connect(addr, AGENT_TIMEOUT) {
        c.set_call_timeout(super::AGENT_CALL_TIMEOUT);
        let _ = c.call(Request::ResizeTty(ResizeTty {
            container_id: id.into(),
            exec_id: Some(exec_id.into()),
            rows,
            cols,
        }));
    }
}
