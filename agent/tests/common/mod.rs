//! Shared helpers of the agent tests: an agent on a Unix socket, fresh
//! busybox bundles, and a client that runs a container and captures it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use husk_protocol::client::{AgentAddr, AgentClient};
use husk_protocol::{
    ContainerRef, CreateContainer, ExecProcess, Request, Response, StdioSpec, StreamKind,
};
use oci_spec::runtime::{Process, Spec};

/// Whether these tests can run on this host, or why not: they need root
/// (namespaces, mounts). A test skips with
/// `husk_test_support::require!(can_run())`.
pub fn can_run() -> Result<(), String> {
    husk_test_support::root().map_err(|e| format!("{e} (namespaces, mounts)"))
}

/// A running agent on a Unix socket in a temp dir.
pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addr: AgentAddr,
}

/// stdout and stderr attached, no stdin.
pub const OUT_AND_ERR: StdioSpec = StdioSpec {
    stdin: false,
    stdout: true,
    stderr: true,
};

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    /// An agent, or why the tests cannot run here ([`can_run`]); a test
    /// takes it with `husk_test_support::require!(Agent::start_if_can_run())`.
    pub fn start_if_can_run() -> Result<Agent, String> {
        can_run().map(|()| Agent::start())
    }

    /// An agent with extra flags.
    pub fn start_with(extra: &[&str]) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("husk-agent-test")
            .tempdir()
            .unwrap();
        let sock = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(extra)
            .env("HUSK_AGENT_LOG", "info")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let addr = AgentAddr::Unix(sock);
        Agent { child, dir, addr }
    }

    pub fn client(&self) -> AgentClient {
        AgentClient::connect(&self.addr, Duration::from_secs(10)).unwrap()
    }

    /// A fresh bundle in the agent's temp dir; returns (spec, bundle dir).
    pub fn bundle(&self, name: &str, flags: &[&str], args: &[&str]) -> (Spec, PathBuf) {
        let dir = self.dir.path().join(name);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/make-bundle.sh");
        let out = Command::new(script)
            .args(flags)
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-bundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut spec = Spec::load(dir.join("config.json")).unwrap();
        let mut root = spec.root().clone().unwrap();
        root.set_path(dir.join("rootfs"));
        spec.set_root(Some(root));
        (spec, dir)
    }

    pub fn stream(&self, id: &str, exec: Option<&str>, kind: StreamKind) -> UnixStream {
        self.addr.open_stream(id, exec, kind).unwrap()
    }

    /// Creates, attaches stdout+stderr (and stdin), starts, waits; returns
    /// (exit status, stdout, stderr).
    pub fn run(&self, id: &str, spec: Spec, stdin: Option<&[u8]>) -> (i32, Vec<u8>, Vec<u8>) {
        let mut c = self.client();
        let stdio = StdioSpec {
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
        };
        create(&mut c, id, spec, stdio).unwrap();
        let out = self.stream(id, None, StreamKind::Stdout);
        let err = self.stream(id, None, StreamKind::Stderr);
        let input = stdin.map(|_| self.stream(id, None, StreamKind::Stdin));
        c.start(id).unwrap();
        let (o, e) = collect(out, err, input, stdin);
        let status = c.wait(id, None).unwrap();
        remove(&mut c, id);
        (status, o, e)
    }

    /// Reads the stdout and stderr of process `exec` of `id` to EOF:
    /// (stdout, stderr).
    pub fn output(&self, id: &str, exec: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let out = self.stream(id, exec, StreamKind::Stdout);
        let err = self.stream(id, exec, StreamKind::Stderr);
        collect(out, err, None, None)
    }

    /// Execs `process` as `exec_id` in `id` with [`OUT_AND_ERR`], reads
    /// its output and waits; returns (exit status, stdout, stderr).
    pub fn exec_run(
        &self,
        c: &mut AgentClient,
        id: &str,
        exec_id: &str,
        process: Process,
    ) -> (i32, Vec<u8>, Vec<u8>) {
        exec(c, id, exec_id, process, OUT_AND_ERR).unwrap();
        let (o, e) = self.output(id, Some(exec_id));
        let status = c.wait(id, Some(exec_id)).unwrap();
        (status, o, e)
    }

    /// Checks that the agent has no child process left, then shuts it
    /// down.
    pub fn shutdown_clean(self) {
        assert_no_children(&self);
        self.shutdown();
    }

    pub fn shutdown(mut self) {
        let mut c = self.client();
        assert_eq!(c.call(Request::Shutdown).unwrap(), Response::Empty);
        let st = self.child.wait().unwrap();
        assert!(st.success(), "agent exit {st:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM: the agent kills its containers and exits.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

/// How long a stdio stream may stay silent before a test fails.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads stdout and stderr to EOF (threads so neither blocks the other),
/// writing `stdin_data` then closing stdin.
pub fn collect(
    mut out: UnixStream,
    mut err: UnixStream,
    input: Option<UnixStream>,
    stdin_data: Option<&[u8]>,
) -> (Vec<u8>, Vec<u8>) {
    // A stalled stream fails the test instead of hanging the suite.
    for s in [&out, &err] {
        s.set_read_timeout(Some(STREAM_TIMEOUT)).unwrap();
    }
    let writer = input.map(|mut s| {
        let data = stdin_data.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            s.write_all(&data).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        })
    });
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).expect("stderr stalled");
        v
    });
    let mut o = Vec::new();
    out.read_to_end(&mut o).expect("stdout stalled");
    if let Some(w) = writer {
        w.join().unwrap();
    }
    (o, t.join().unwrap())
}

pub fn create(
    c: &mut AgentClient,
    id: &str,
    spec: Spec,
    stdio: StdioSpec,
) -> Result<i32, husk_protocol::client::ClientError> {
    let req = CreateContainer {
        container_id: id.into(),
        spec,
        shares: vec![],
        stdio,
    };
    match c.call(Request::CreateContainer(Box::new(req)))? {
        Response::Process { pid } => Ok(pid),
        other => panic!("unexpected {other:?}"),
    }
}

/// Creates `id` from `spec` without stdio and starts it; returns its
/// init's pid.
pub fn create_and_start(c: &mut AgentClient, id: &str, spec: Spec) -> i32 {
    let pid = create(c, id, spec, StdioSpec::default()).unwrap();
    c.start(id).unwrap();
    pid
}

pub fn exec(
    c: &mut AgentClient,
    id: &str,
    exec_id: &str,
    process: Process,
    stdio: StdioSpec,
) -> Result<i32, husk_protocol::client::ClientError> {
    exec_in(c, id, exec_id, process, stdio, None)
}

/// [`exec`] into a sub-cgroup of the container's cgroup (`exec --cgroup`).
pub fn exec_in(
    c: &mut AgentClient,
    id: &str,
    exec_id: &str,
    process: Process,
    stdio: StdioSpec,
    cgroup: Option<&str>,
) -> Result<i32, husk_protocol::client::ClientError> {
    let req = ExecProcess {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process,
        stdio,
        cgroup: cgroup.map(str::to_owned),
    };
    match c.call(Request::ExecProcess(Box::new(req)))? {
        Response::Process { pid } => Ok(pid),
        other => panic!("unexpected {other:?}"),
    }
}

pub fn remove(c: &mut AgentClient, id: &str) {
    c.call(Request::RemoveContainer(ContainerRef {
        container_id: id.into(),
    }))
    .unwrap();
}

/// Sets process.args.
pub fn with_args(mut spec: Spec, args: &[&str]) -> Spec {
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    spec.set_process(Some(p));
    spec
}

/// Edits the spec as JSON (shortest way to set deep fields).
pub fn patch(spec: Spec, f: impl FnOnce(&mut serde_json::Value)) -> Spec {
    let mut v = serde_json::to_value(&spec).unwrap();
    f(&mut v);
    serde_json::from_value(v).unwrap()
}

/// Asserts that no mount of the agent's namespace mentions `dir`.
pub fn assert_no_mounts(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    let left: Vec<&str> = info.lines().filter(|l| l.contains(d.as_ref())).collect();
    assert!(left.is_empty(), "leftover mounts: {left:#?}");
}

/// Asserts that the agent has no child processes left.
pub fn assert_no_children(agent: &Agent) {
    let pid = agent.child.id();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = children_of(pid);
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent still has children: {left:?}");
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
