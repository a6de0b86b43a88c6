//! `exec`: a further process in a running container, its stdio pumped
//! between this process (or a detached `husk exec-attach`) and the agent.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use husk_protocol::attach::{attach, resize_request, HostEnds, Sink, Source, Target};
use husk_protocol::client::{AgentAddr, AgentClient};
use husk_protocol::{ExecProcess, Request, StdioSpec};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use oci_spec::runtime::{Capability, Process};

use super::stdio::{raw_pty, send_console, std_fd};
use super::{OpError, Runtime, AGENT_TIMEOUT};
use crate::cli::ExecArgs;
use crate::state::{write_atomic, ContainerState, Status};

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
    /// `--ignore-paused`: exec into a paused container once it is resumed,
    /// instead of refusing.
    pub ignore_paused: bool,
    /// `--cgroup`: the sub-cgroup of the container's cgroup (in the guest)
    /// to run in; see [`sub_cgroup`].
    pub cgroup: Option<String>,
    /// `--preserve-fds`: refused when not 0 (fds cannot cross into a VM).
    pub preserve_fds: u32,
}

/// How often an `--ignore-paused` exec looks whether the container was
/// resumed.
const PAUSED_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The process `exec` runs without `--process`: the container's
/// `process`, with the flags applied as runc's `getProcess` does.
pub fn process_from_flags(mut p: Process, a: &ExecArgs) -> Result<Process, OpError> {
    p.set_args(Some(a.args.clone()));
    p.set_terminal(Some(a.tty));
    p.set_env(Some(merge_env(
        p.env().as_deref().unwrap_or_default(),
        &a.env,
    )?));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(u) = &a.user {
        let mut user = p.user().clone();
        let (uid, gid) = u
            .split_once(':')
            .map_or((u.as_str(), None), |(x, y)| (x, Some(y)));
        let id = |s: &str, what: &str| {
            s.parse::<u32>()
                .map_err(|e| OpError::Invalid(format!("--user {u:?}: bad {what} {s:?}: {e}")))
        };
        user.set_uid(id(uid, "uid")?);
        user.set_gid(gid.map(|g| id(g, "gid")).transpose()?.unwrap_or(0));
        if !a.additional_gids.is_empty() {
            user.set_additional_gids(Some(a.additional_gids.clone()));
        }
        p.set_user(user);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    add_caps(&mut p, &a.cap)?;
    Ok(p)
}

/// The spec's environment with `--env` values applied: a `NAME=VALUE`
/// replaces every `NAME` of the spec (runc appends and its `prepareEnv`
/// keeps the last value, which is the same environment; appending alone
/// would leave the spec's first, which is what getenv(3) finds).
pub fn merge_env(base: &[String], extra: &[String]) -> Result<Vec<String>, OpError> {
    let mut names = Vec::with_capacity(extra.len());
    for e in extra {
        match e.split_once('=') {
            Some((name, _)) if !name.is_empty() => names.push(name),
            _ => {
                return Err(OpError::Invalid(format!(
                    "--env {e:?}: expected NAME=VALUE"
                )))
            }
        }
    }
    let name_of = |kv: &str| kv.split_once('=').map_or(kv, |(n, _)| n).to_owned();
    let mut out: Vec<String> = base
        .iter()
        .filter(|kv| !names.contains(&name_of(kv).as_str()))
        .cloned()
        .collect();
    // A name given twice on the command line: its last value.
    for (i, e) in extra.iter().enumerate() {
        if !names[i + 1..].contains(&names[i]) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// `--cap`: like runc, each capability joins the bounding, effective and
/// permitted sets, and the ambient set when the process has an
/// inheritable set (an ambient capability needs an inheritable one). A
/// process without a `capabilities` object keeps every capability it has
/// (see the agent's capabilities module), so there is nothing to add.
fn add_caps(p: &mut Process, names: &[String]) -> Result<(), OpError> {
    if names.is_empty() {
        return Ok(());
    }
    let Some(mut c) = p.capabilities().clone() else {
        return Ok(());
    };
    for name in names {
        let cap: Capability = serde_json::from_value(serde_json::Value::String(name.clone()))
            .map_err(|_| OpError::Invalid(format!("--cap {name:?}: unknown capability")))?;
        let add = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut set = set.clone().unwrap_or_default();
            set.insert(cap);
            Some(set)
        };
        c.set_bounding(add(c.bounding()));
        c.set_effective(add(c.effective()));
        c.set_permitted(add(c.permitted()));
        if c.inheritable().is_some() {
            c.set_ambient(add(c.ambient()));
        }
    }
    p.set_capabilities(Some(c));
    Ok(())
}

/// `--cgroup` values as runc parses them, for a guest with cgroup v2 only:
/// one `PATH` (relative to the container's cgroup; `/` is that cgroup
/// itself). runc's `CONTROLLER[,CONTROLLER]:PATH` form places the process
/// per cgroup v1 controller, which a cgroup v2 guest cannot honour, so it
/// is refused rather than ignored.
pub fn sub_cgroup(args: &[String]) -> Result<Option<String>, OpError> {
    let mut path = None;
    for a in args {
        if let Some((ctrls, _)) = a.split_once(':') {
            if ctrls.split(',').any(str::is_empty) {
                return Err(OpError::Invalid(format!(
                    "invalid --cgroup argument: {a} (empty <controller> prefix)"
                )));
            }
            return Err(OpError::Invalid(format!(
                "--cgroup {a}: per-controller sub-cgroups are cgroup v1, and the guest has \
                 cgroup v2 only; give one sub-cgroup path, without a controller"
            )));
        }
        if args.len() != 1 {
            return Err(OpError::Invalid(format!(
                "invalid --cgroup argument: {a} (missing <controller>: prefix; cgroup v2 \
                 takes one path)"
            )));
        }
        path = Some(a.clone());
    }
    Ok(path)
}

/// The container's state once an exec may go ahead. A stopped container
/// is refused. A paused one is refused with runc's message unless
/// `ignore_paused`; then the exec waits for the resume, as runc's
/// completes only once the container runs again (its vCPUs are parked:
/// the agent cannot answer before).
fn execable_state(rt: &Runtime, id: &str, ignore_paused: bool) -> Result<ContainerState, OpError> {
    let mut waiting = false;
    loop {
        let st = rt.root.load(id)?;
        if !st.monitor_alive() {
            return Err(OpError::BadState {
                id: id.into(),
                status: Status::Stopped,
                what: "cannot exec in it",
            });
        }
        if st.status != Status::Paused {
            if waiting {
                tracing::info!(container = id, "resumed; the exec goes ahead");
            }
            return Ok(st);
        }
        if !ignore_paused {
            return Err(OpError::BadState {
                id: id.into(),
                status: Status::Paused,
                what: "cannot exec in a paused container (use --ignore-paused to override)",
            });
        }
        if !waiting {
            tracing::info!(
                container = id,
                "paused; the exec waits for it to be resumed"
            );
            waiting = true;
        }
        std::thread::sleep(PAUSED_POLL);
    }
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
    if opts.preserve_fds > 0 {
        return Err(OpError::Invalid(format!(
            "--preserve-fds {}: passing extra fds into a VM is not supported",
            opts.preserve_fds
        )));
    }
    crate::unsupported::warn_ignored(
        &crate::unsupported::ignored_in_process(&opts.process, ""),
        id,
    );
    let tty = opts.process.terminal().unwrap_or(false);
    if tty && opts.detach && opts.console_socket.is_none() {
        return Err(OpError::Invalid(
            "exec --tty --detach needs --console-socket".into(),
        ));
    }
    let st = execable_state(rt, id, opts.ignore_paused)?;
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
        cgroup: opts.cgroup.clone(),
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
    let target = Target {
        container_id: id,
        exec_id: Some(exec_id),
    };
    let mut restore = None;
    let ends = if tty {
        // Block SIGWINCH before any thread starts so only the resize
        // thread receives it.
        let mut winch = SigSet::empty();
        winch.add(Signal::SIGWINCH);
        let _ = winch.thread_block();
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
        resize(&addr, target, &output);
        let size_src = output.try_clone().map_err(OpError::io("dup"))?;
        let (a, i, e) = (addr.clone(), id.to_owned(), exec_id.to_owned());
        std::thread::spawn(move || loop {
            if winch.wait().is_ok() {
                let target = Target {
                    container_id: &i,
                    exec_id: Some(&e),
                };
                resize(&a, target, &size_src);
            }
        });
        HostEnds {
            stdin: Some(Source::File(input)),
            stdout: Some(Sink::File(output)),
            stderr: None,
            terminal: true,
        }
    } else {
        HostEnds {
            stdin: Some(Source::File(std_fd(0).map_err(OpError::io("stdin"))?)),
            stdout: Some(Sink::File(std_fd(1).map_err(OpError::io("stdout"))?)),
            stderr: Some(Sink::File(std_fd(2).map_err(OpError::io("stderr"))?)),
            terminal: false,
        }
    };
    let mut pumps = attach(&addr, target, ends, None).map_err(agent_err)?;
    let status = waiter.wait(id, Some(exec_id)).map_err(agent_err);
    pumps.drain(DRAIN_TIMEOUT);
    if let Some((f, t)) = restore {
        let _ = tcsetattr(&f, SetArg::TCSANOW, &t);
    }
    let _ = std::io::stdout().flush();
    status
}

/// How long an exec's output gets to drain after it exited (a process
/// it left behind may hold its stdout open).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn resize(addr: &AgentAddr, target: Target<'_>, term: &std::fs::File) {
    let Some(req) = resize_request(target, term) else {
        return;
    };
    if let Ok(mut c) = AgentClient::connect(addr, AGENT_TIMEOUT) {
        c.set_call_timeout(super::AGENT_CALL_TIMEOUT);
        let _ = c.call(req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::{Duration, Instant};

    fn exec_args(argv: &[&str]) -> ExecArgs {
        let mut full = vec!["husk", "exec"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Exec(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn spec_process(caps: serde_json::Value) -> Process {
        let mut v = serde_json::json!({
            "args": ["sleep", "1000"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/bin", "K=spec", "TERM=xterm", "K=spec2"],
        });
        if !caps.is_null() {
            v["capabilities"] = caps;
        }
        serde_json::from_value(v).unwrap()
    }

    /// `exec --env K=V` overrides the spec's `K` (it used to be appended
    /// after it, so a program's getenv found the spec's first).
    #[test]
    fn exec_env_overrides_the_specs() {
        let a = exec_args(&["-e", "K=flag", "--env", "NEW=1", "-e", "NEW=2", "c", "sh"]);
        let p = process_from_flags(spec_process(serde_json::Value::Null), &a).unwrap();
        assert_eq!(
            p.env().as_deref().unwrap(),
            ["PATH=/bin", "TERM=xterm", "K=flag", "NEW=2"]
        );
        assert_eq!(p.args().as_deref().unwrap(), ["sh"]);
        assert_eq!(merge_env(&["A=1".into()], &[]).unwrap(), ["A=1".to_owned()]);
        for bad in ["NOVALUE", "=x"] {
            let e = merge_env(&[], &[bad.into()]).unwrap_err().to_string();
            assert_eq!(e, format!("--env {bad:?}: expected NAME=VALUE"));
        }
    }

    /// `--cap` used to be parsed and dropped; runc adds it to the bounding,
    /// effective and permitted sets, and to ambient when there is an
    /// inheritable set.
    #[test]
    fn exec_cap_joins_the_sets_like_runc() {
        let a = exec_args(&["--cap", "CAP_NET_RAW", "-c", "chown", "c", "sh"]);
        let p = process_from_flags(
            spec_process(serde_json::json!({"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]})),
            &a,
        )
        .unwrap();
        let c = p.capabilities().clone().unwrap();
        let want: oci_spec::runtime::Capabilities =
            [Capability::Kill, Capability::NetRaw, Capability::Chown].into();
        assert_eq!(c.bounding().as_ref(), Some(&want));
        assert_eq!(c.effective().as_ref(), Some(&want));
        assert_eq!(
            c.permitted().as_ref(),
            Some(&[Capability::NetRaw, Capability::Chown].into())
        );
        assert_eq!(c.inheritable(), &None);
        assert_eq!(c.ambient(), &None, "no inheritable set: no ambient");
        let p = process_from_flags(
            spec_process(serde_json::json!({"inheritable": []})),
            &exec_args(&["--cap", "NET_RAW", "c", "sh"]),
        )
        .unwrap();
        assert_eq!(
            p.capabilities().as_ref().unwrap().ambient().as_ref(),
            Some(&[Capability::NetRaw].into())
        );
        // No capabilities object: every capability is kept already.
        let p = process_from_flags(
            spec_process(serde_json::Value::Null),
            &exec_args(&["--cap", "CAP_NET_RAW", "c", "sh"]),
        )
        .unwrap();
        assert_eq!(p.capabilities(), &None);
        let e = process_from_flags(
            spec_process(serde_json::json!({})),
            &exec_args(&["--cap", "CAP_FOO", "c", "sh"]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "--cap \"CAP_FOO\": unknown capability");
    }

    #[test]
    fn exec_cgroup_takes_one_v2_path_and_refuses_v1_controllers() {
        let none: Vec<String> = vec![];
        assert_eq!(sub_cgroup(&none).unwrap(), None);
        let a = exec_args(&["--cgroup", "sub/x", "c", "sh"]);
        assert_eq!(sub_cgroup(&a.cgroup).unwrap().as_deref(), Some("sub/x"));
        for (args, want) in [
            (
                vec!["memory:sub"],
                "--cgroup memory:sub: per-controller sub-cgroups are cgroup v1",
            ),
            (
                vec!["cpu,cpuacct:sub"],
                "--cgroup cpu,cpuacct:sub: per-controller",
            ),
            (
                vec![":sub"],
                "invalid --cgroup argument: :sub (empty <controller> prefix)",
            ),
            (
                vec!["a", "b"],
                "invalid --cgroup argument: a (missing <controller>: prefix",
            ),
        ] {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            let e = sub_cgroup(&args).unwrap_err().to_string();
            assert!(e.starts_with(want), "{args:?}: {e}");
        }
    }

    /// A state root holding container `id` with `status`, its "monitor"
    /// this (live) test process and no agent behind its vsock path.
    fn recorded(root: &std::path::Path, id: &str, status: Status) -> Runtime {
        let mut rt = Runtime::new(root.to_owned());
        // Nothing listens: fail the connect fast.
        rt.deadlines.connect = Duration::from_millis(200);
        let dir = rt.root.claim(id).unwrap();
        let st = ContainerState {
            status,
            ..ContainerState::sample(id, dir.join("vsock.sock"))
        };
        rt.root.save(&st).unwrap();
        rt
    }

    fn opts(ignore_paused: bool) -> ExecOptions {
        ExecOptions {
            process: spec_process(serde_json::Value::Null),
            detach: false,
            pid_file: None,
            console_socket: None,
            ignore_paused,
            cgroup: None,
            preserve_fds: 0,
        }
    }

    /// `exec --preserve-fds N` is refused before anything is asked (runc
    /// passes fds 3..3+N; they cannot cross into a VM), as `create` refuses
    /// it; it was accepted and dropped before.
    #[test]
    fn exec_refuses_preserve_fds() {
        let t = tempfile::tempdir().unwrap();
        let rt = recorded(t.path(), "r", Status::Running);
        let e = exec(
            &rt,
            "r",
            &ExecOptions {
                preserve_fds: 2,
                ..opts(false)
            },
        )
        .unwrap_err();
        assert!(matches!(e, OpError::Invalid(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            "--preserve-fds 2: passing extra fds into a VM is not supported"
        );
    }

    /// runc refuses an exec into a paused container unless
    /// `--ignore-paused`, with this message; the refusal comes before the
    /// agent (whose vCPUs are parked) is asked anything.
    #[test]
    fn exec_into_a_paused_container_needs_ignore_paused() {
        let t = tempfile::tempdir().unwrap();
        let rt = recorded(t.path(), "p", Status::Paused);
        let e = exec(&rt, "p", &opts(false)).unwrap_err();
        assert!(matches!(e, OpError::BadState { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "container p is paused: cannot exec in a paused container (use --ignore-paused to override)"
        );
    }

    /// With `--ignore-paused` the exec waits until the container is resumed
    /// and then goes to the agent (absent here, so that is the error).
    #[test]
    fn exec_with_ignore_paused_goes_ahead_once_resumed() {
        let t = tempfile::tempdir().unwrap();
        let rt = recorded(t.path(), "p", Status::Paused);
        let resumer = rt.clone();
        let started = Instant::now();
        let resume_after = Duration::from_millis(300);
        std::thread::spawn(move || {
            std::thread::sleep(resume_after);
            let mut st = resumer.root.load("p").unwrap();
            st.status = Status::Running;
            resumer.root.save(&st).unwrap();
        });
        let e = exec(&rt, "p", &opts(true)).unwrap_err();
        assert!(started.elapsed() >= resume_after, "went ahead while paused");
        assert!(matches!(e, OpError::Agent { .. }), "{e:?}");
        // A running container is not held up at all.
        let rt = recorded(t.path(), "r", Status::Running);
        let st = execable_state(&rt, "r", true).unwrap();
        assert_eq!(st.status, Status::Running);
    }
}
