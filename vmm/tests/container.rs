//! Container supervisor mode end to end: a busybox bundle (tests/make-bundle.sh)
//! run in a real guest by husk-vmm and the real agent. Needs root, qemu, the
//! daemons, the guest kernel and the agent initramfs; skips otherwise.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use husk_protocol::client::{AgentAddr, AgentClient};
use husk_protocol::{CreateContainer, Request, SignalProcess, StdioSpec};

const CID: &str = "c1";

struct Env {
    kernel: PathBuf,
    initramfs: PathBuf,
}

fn env() -> Option<Env> {
    let kernel = match host_ready() {
        Ok(k) => k,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    let Some(initramfs) = agent_initramfs() else {
        skip("no agent initramfs (set HUSK_INITRAMFS or run guest-kernel/build-initramfs.sh)");
        return None;
    };
    if Command::new("jq").arg("--version").output().is_err() || !Path::new("/bin/busybox").exists()
    {
        skip("tests/make-bundle.sh needs jq and busybox-static");
        return None;
    }
    Some(Env { kernel, initramfs })
}

/// A running monitor in container mode.
struct Running {
    child: Child,
    state: PathBuf,
    rootfs: PathBuf,
    started: Instant,
    ready_after: Duration,
    guest_pid: i64,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: thread::JoinHandle<Vec<u8>>,
}

impl Running {
    fn addr(&self) -> AgentAddr {
        AgentAddr::HybridVsock {
            uds: self.state.join("vsock.sock"),
            port: husk_protocol::DEFAULT_AGENT_PORT,
        }
    }

    /// Waits for the monitor; returns its status, all stdout and stderr.
    fn finish(mut self, timeout: Duration) -> (i32, Vec<u8>, Vec<u8>, PathBuf) {
        let status = wait_child(&mut self.child, timeout);
        eprintln!("monitor start to exit: {:?}", self.started.elapsed());
        let mut out = Vec::new();
        while let Ok(chunk) = self.stdout.recv() {
            out.extend(chunk);
        }
        let err = self.stderr.join().unwrap();
        let log = std::fs::read_to_string(self.state.join("husk-vmm.log")).unwrap_or_default();
        let code = status
            .code()
            .unwrap_or_else(|| panic!("monitor killed: {status:?}\n{log}"));
        (code, out, err, self.state)
    }

    /// Reads stdout until it contains `needle`; returns what was read.
    fn stdout_until(&self, needle: &str, timeout: Duration, seen: &mut Vec<u8>) {
        let deadline = Instant::now() + timeout;
        while !String::from_utf8_lossy(seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(c) => seen.extend(c),
                Err(_) => panic!(
                    "{needle:?} not on stdout; got {:?}",
                    String::from_utf8_lossy(seen)
                ),
            }
        }
    }
}

/// Makes a bundle, starts `husk-vmm` on it, waits for its readiness line and
/// starts the container over a control connection of our own, as `husk
/// start` does.
fn run(
    env: &Env,
    dir: &Path,
    readonly: bool,
    args: &[&str],
    stdin: Option<Vec<u8>>,
    guest_cid: u32,
) -> Running {
    run_with(env, dir, readonly, args, stdin, guest_cid, |_, _| {})
}

/// [`run`], with `prepare` editing the spec and the rootfs first.
fn run_with(
    env: &Env,
    dir: &Path,
    readonly: bool,
    args: &[&str],
    stdin: Option<Vec<u8>>,
    guest_cid: u32,
    prepare: impl FnOnce(&mut serde_json::Value, &Path),
) -> Running {
    let bundle = dir.join("bundle");
    let mut mk = Command::new(repo_root().join("tests/make-bundle.sh"));
    if readonly {
        mk.arg("--readonly");
    }
    let st = mk
        .arg(&bundle)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "make-bundle.sh failed");
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    prepare(&mut spec, &bundle.join("rootfs"));
    spec["root"]["path"] = husk_protocol::share_mount_point("rootfs").into();
    let create = CreateContainer {
        container_id: CID.into(),
        spec: serde_json::from_value(spec).unwrap(),
        shares: vec!["rootfs".into()],
        stdio: StdioSpec {
            stdin: stdin.is_some(),
            stdout: true,
            stderr: true,
        },
    };
    let req = dir.join("create.json");
    std::fs::write(&req, serde_json::to_string(&create).unwrap()).unwrap();
    // A container's state directory is made by its runtime, not the monitor.
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();

    let mut cmd = vmm(&env.kernel, &state);
    let (ready_r, ready_w) = ready_pipe(&mut cmd);
    cmd.arg("--initramfs")
        .arg(&env.initramfs)
        .arg("--share")
        .arg(format!("rootfs={}", bundle.join("rootfs").display()))
        .arg("--guest-cid")
        .arg(guest_cid.to_string())
        .arg("--container")
        .arg(&req)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    drop(ready_w);
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let (tx, stdout) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut line = String::new();
    BufReader::new(ready_r).read_line(&mut line).unwrap();
    let ready_after = started.elapsed();
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|_| panic!("bad ready line {line:?}; log:\n{}", read_log(&state)));
    assert_eq!(v["ok"], true, "{line}\nlog:\n{}", read_log(&state));
    let guest_pid = v["pid"].as_i64().unwrap();
    assert!(guest_pid > 1, "{line}");
    eprintln!("monitor start to container created (agent ready): {ready_after:?}");
    let r = Running {
        child,
        state,
        rootfs: bundle.join("rootfs"),
        started,
        ready_after,
        guest_pid,
        stdout,
        stderr,
    };
    AgentClient::connect(&r.addr(), Duration::from_secs(10))
        .unwrap()
        .start(CID)
        .unwrap();
    r
}

fn read_log(state: &Path) -> String {
    std::fs::read_to_string(state.join("husk-vmm.log")).unwrap_or_default()
        + &std::fs::read_to_string(state.join("console.log")).unwrap_or_default()
}

/// 10 MiB that is not all one byte, to catch reordering.
fn pattern() -> Vec<u8> {
    (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn stdio_exit_code_shared_rootfs_and_guest_kernel() {
    let Some(env) = env() else { return };
    let tmp = scratch("io");
    let input = pattern();
    // The guest hashes what it got: stdin byte-exact without a bulk stdout.
    let script = "md5sum; echo to-stderr >&2; uname -r >&2; echo written > /from-guest; exit 7";
    let r = run(
        &env,
        tmp.path(),
        false,
        &["sh", "-c", script],
        Some(input.clone()),
        3,
    );
    let rootfs = r.rootfs.clone();
    let (code, out, err, state) = r.finish(Duration::from_secs(300));
    let err = String::from_utf8_lossy(&err).into_owned();
    assert_eq!(code, 7, "stderr: {err}\n{}", read_log(&state));
    let want = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(|mut c| {
            c.stdin.take().unwrap().write_all(&input).unwrap();
            c.wait_with_output().unwrap().stdout
        });
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want.unwrap()),
        "stdin differs"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err:?}");
    assert_eq!(lines[0], "to-stderr");
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert!(
        lines[1].starts_with("6.12.") && lines[1] != host_release,
        "uname -r: {}",
        lines[1]
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("from-guest")).unwrap(),
        "written\n"
    );
    assert_nothing_left(&state);
}

#[test]
fn ten_mib_stdin_to_stdout_byte_exact() {
    let Some(env) = env() else { return };
    let tmp = scratch("big");
    let input = pattern();
    let r = run(&env, tmp.path(), false, &["cat"], Some(input.clone()), 3);
    let (code, out, _, state) = r.finish(Duration::from_secs(120));
    assert_eq!(code, 0);
    assert_eq!(out.len(), input.len(), "stdout length");
    assert!(out == input, "stdout is not byte-exact stdin");
    assert_nothing_left(&state);
}

#[test]
fn two_vms_at_once_readonly_rootfs_signals_and_sigkill() {
    let Some(env) = env() else { return };
    let ta = scratch("ro");
    let tb = scratch("sig");
    let ro = "if echo x > /ro-test; then echo writable; else echo readonly; fi";
    let a = run(&env, ta.path(), true, &["sh", "-c", ro], None, 3);
    let b = run(
        &env,
        tb.path(),
        false,
        &[
            "sh",
            "-c",
            "trap 'echo got-term' TERM; echo armed; while true; do sleep 0.1; done",
        ],
        None,
        4,
    );
    eprintln!(
        "second VM ready after {:?} while the first ran",
        b.ready_after
    );
    assert!(a.guest_pid > 1 && b.guest_pid > 1);
    // A signal to the monitor reaches the container's init.
    let mut seen = Vec::new();
    b.stdout_until("armed", Duration::from_secs(60), &mut seen);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    b.stdout_until("got-term", Duration::from_secs(60), &mut seen);
    // SIGKILL cannot go through the monitor: through the agent, like `husk kill`.
    let mut c = AgentClient::connect(&b.addr(), Duration::from_secs(10)).unwrap();
    c.call(Request::SignalProcess(SignalProcess {
        container_id: CID.into(),
        exec_id: None,
        signal: 9,
        all: false,
    }))
    .unwrap();
    drop(c);

    let rootfs_a = a.rootfs.clone();
    let (code_a, out_a, err_a, state_a) = a.finish(Duration::from_secs(300));
    assert_eq!(code_a, 0, "{}", String::from_utf8_lossy(&err_a));
    assert_eq!(String::from_utf8_lossy(&out_a), "readonly\n");
    assert!(
        String::from_utf8_lossy(&err_a).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&err_a)
    );
    assert!(!rootfs_a.join("ro-test").exists());
    assert_nothing_left(&state_a);

    let (code_b, out_b, _, state_b) = b.finish(Duration::from_secs(300));
    assert_eq!(code_b, 137);
    seen.extend(out_b);
    assert_eq!(String::from_utf8_lossy(&seen), "armed\ngot-term\n");
    assert_nothing_left(&state_b);
}

/// Every capability the attack below could use in the guest.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_MKNOD",
    "CAP_SETFCAP",
    "CAP_SYS_ADMIN",
    "CAP_AUDIT_WRITE",
    "CAP_NET_BIND_SERVICE",
];

/// What guest root tries on the shared rootfs; each step prints its status.
const ATTACK: &str = r#"cd /
echo x > /plain; chmod u+s /plain; echo "chmod-u+s=$?"
cp /bin/busybox /copy && chmod 4755 /copy; echo "chmod-4755=$?"
cp /bin/busybox /dev/suid && chmod 4755 /dev/suid && cp -p /dev/suid /copied; echo "cp-p-4755=$?"
mknod -m 4755 /suid-fifo p; echo "mknod-suid-fifo=$?"
echo y > /gfile; chmod g+s /gfile; echo "chmod-g+s=$?"
mkdir /sgid-dir; chmod g+s /sgid-dir; echo "chmod-g+s-dir=$?"
mknod /blk b 8 0; echo "mknod-b=$?"
mknod /chr c 1 3; echo "mknod-c=$?"
mkfifo /fifo; echo "mkfifo=$?"
echo appended >> /host-suid; echo "append-to-setuid=$?"
echo ordinary > /ordinary; echo "write=$?"
echo attacks-done
while [ ! -e /go ]; do sleep 0.2; done
"#;

/// setuid/setgid files and device nodes under `dir` (not following links).
fn privileged_entries(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        let ft = m.file_type();
        if m.mode() & (libc::S_ISUID | libc::S_ISGID) != 0 {
            v.push(format!("{} mode {:o}", e.path().display(), m.mode()));
        }
        if ft.is_block_device() || ft.is_char_device() {
            v.push(format!("{} device {:x}", e.path().display(), m.rdev()));
        }
        if ft.is_dir() {
            v.extend(privileged_entries(&e.path()));
        }
    }
    v
}

/// `pid`'s children, then theirs.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
                out.push(k);
                todo.push(k);
            }
        }
    }
    out
}

/// `Name`, capability, `NoNewPrivs` and `Seccomp` lines of /proc/PID/status.
fn confinement_of(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| k == "Name" || k.starts_with("Cap") || k == "NoNewPrivs" || k == "Seccomp")
        .collect()
}

fn cap_bits(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

#[test]
fn hostile_guest_root_cannot_make_setuid_files_or_devices_on_the_host() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Some(env) = env() else { return };
    let tmp = scratch("hostile");
    let r = run_with(&env, tmp.path(), false, &["sh"], None, 3, |spec, rootfs| {
        // make-bundle.sh would split the script at its newlines.
        spec["process"]["args"] = serde_json::json!(["sh", "-c", ATTACK]);
        let caps: Vec<serde_json::Value> = ALL_CAPS.iter().map(|c| (*c).into()).collect();
        for set in ["bounding", "effective", "permitted"] {
            spec["process"]["capabilities"][set] = caps.clone().into();
        }
        spec["linux"]["resources"]["devices"] =
            serde_json::json!([{ "allow": true, "access": "rwm" }]);
        assert_eq!(privileged_entries(rootfs), Vec::<String>::new());
        // A setuid-root file already in the image.
        let f = rootfs.join("host-suid");
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
    });
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("attacks-done") {
        match r.stdout.recv_timeout(Duration::from_secs(120)) {
            Ok(c) => seen.extend(c),
            Err(_) => {
                let out = String::from_utf8_lossy(&seen).into_owned();
                let (code, _, err, state) = r.finish(Duration::from_secs(60));
                panic!(
                    "the attack did not finish (exit {code}): {out}\n{}\n{}",
                    String::from_utf8_lossy(&err),
                    read_log(&state)
                );
            }
        }
    }

    // The daemons as they run while the guest uses them.
    let mut fs_daemons = 0;
    let mut vsock_daemons = 0;
    for pid in descendants(r.child.id()) {
        let s = confinement_of(pid);
        let Some(name) = s.get("Name").cloned() else {
            continue;
        };
        if !name.starts_with("virtiofsd") && !name.starts_with("husk-vsockd") {
            continue;
        }
        eprintln!(
            "{name} pid {pid}: CapEff {} CapPrm {} CapBnd {} CapInh {} CapAmb {} NoNewPrivs {} Seccomp {}",
            s["CapEff"], s["CapPrm"], s["CapBnd"], s["CapInh"], s["CapAmb"], s["NoNewPrivs"], s["Seccomp"]
        );
        assert_eq!(s["NoNewPrivs"], "1", "{name}");
        assert_eq!(s["Seccomp"], "2", "{name}");
        if name.starts_with("virtiofsd") {
            fs_daemons += 1;
            let refused = (1u64 << 27) | (1 << 4) | (1 << 31); // MKNOD, FSETID, SETFCAP
            for k in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
                assert_eq!(cap_bits(&s[k]) & refused, 0, "{name} {k}");
            }
        } else {
            vsock_daemons += 1;
            for k in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
                assert_eq!(cap_bits(&s[k]), 0, "{name} {k}");
            }
        }
    }
    assert!(fs_daemons >= 1 && vsock_daemons == 1, "daemons not found");

    std::fs::write(r.rootfs.join("go"), "").unwrap();
    let rootfs = r.rootfs.clone();
    let (code, out, err, state) = r.finish(Duration::from_secs(120));
    seen.extend(out);
    let out = String::from_utf8_lossy(&seen).into_owned();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(code, 0, "{out}\n{err}\n{}", read_log(&state));
    eprintln!("guest said:\n{out}{err}");

    // What the host has now.
    assert_eq!(privileged_entries(&rootfs), Vec::<String>::new(), "{out}");
    assert!(rootfs
        .join("fifo")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("ordinary")).unwrap(),
        "ordinary\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("host-suid")).unwrap(),
        "#!/bin/sh\nappended\n"
    );
    assert!(rootfs.join("sgid-dir").is_dir() && rootfs.join("copy").is_file());
    // And what the guest was told.
    for ok in ["mkfifo=0", "write=0", "append-to-setuid=0"] {
        assert!(out.contains(ok), "{ok}: {out}");
    }
    for refused in [
        "chmod-u+s=",
        "chmod-4755=",
        "cp-p-4755=",
        "mknod-suid-fifo=",
        "chmod-g+s=",
        "chmod-g+s-dir=",
        "mknod-b=",
        "mknod-c=",
    ] {
        assert!(
            out.contains(refused) && !out.contains(&format!("{refused}0\n")),
            "{refused}: {out}"
        );
    }
    assert_nothing_left(&state);
}
