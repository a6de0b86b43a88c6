//! The monitor without a container, on a busybox initramfs: boot, virtio-fs,
//! guest reboot, stop signals, a dying daemon, and the one-line errors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn boot_share_and_guest_reboot() {
    let script = "mount -t proc proc /proc\n\
        echo \"GUEST-KERNEL $(uname -r)\"\n\
        mount -t virtiofs data /mnt && cat /mnt/from-host && echo from-guest > /mnt/from-guest\n\
        sync\nreboot -f";
    let Some((kernel, tmp, initrd)) = busybox_guest("boot", script) else {
        return;
    };
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host"), "HOST-FILE-CONTENT\n").unwrap();
    let state = tmp.path().join("state");
    let t0 = Instant::now();
    let out = vmm(&kernel, &state)
        .arg("--initramfs")
        .arg(&initrd)
        .arg("--share")
        .arg(format!("data={}", share.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    eprintln!("boot to guest reboot: {:?}", t0.elapsed());
    let console = std::fs::read_to_string(state.join("console.log")).unwrap();
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let guest_line = console
        .lines()
        .find(|l| l.starts_with("GUEST-KERNEL "))
        .expect(&console);
    assert!(guest_line.starts_with("GUEST-KERNEL 6.12."), "{guest_line}");
    assert_ne!(guest_line, format!("GUEST-KERNEL {host_release}"));
    assert!(console.contains("HOST-FILE-CONTENT"), "{console}");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        "from-guest\n"
    );
    assert!(stderr.contains("the guest stopped"), "{stderr}");
    assert_eq!(
        stderr.matches("using the qemu engine").count(),
        0,
        "forced qemu: no warning"
    );
    assert_nothing_left(&state);
}

/// Boots a guest that idles, waits for it, then `disturb`s the monitor.
fn idle_guest(
    name: &str,
    disturb: impl FnOnce(u32, &Path),
) -> Option<(std::process::Output, PathBuf, tempfile::TempDir)> {
    let (kernel, tmp, initrd) = busybox_guest(name, "echo IDLING\nexec sleep 1000")?;
    let state = tmp.path().join("state");
    let mut child = vmm(&kernel, &state)
        .arg("--initramfs")
        .arg(&initrd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_text(
        &state.join("console.log"),
        "IDLING",
        Duration::from_secs(60),
    );
    disturb(child.id(), &state);
    let t0 = Instant::now();
    wait_child(&mut child, Duration::from_secs(20));
    eprintln!("monitor exit after disturbance: {:?}", t0.elapsed());
    let out = child.wait_with_output().unwrap();
    Some((out, state, tmp))
}

#[test]
fn stop_signal_stops_everything() {
    let Some((out, state, _tmp)) = idle_guest("term", |pid, _| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }) else {
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(&state);
}

#[test]
fn dying_daemon_stops_everything() {
    let Some((out, state, _tmp)) = idle_guest("daemon", |_, state| {
        let needle = state.join("vhost-vsock.sock");
        let procs = processes_mentioning(needle.to_str().unwrap());
        let (pid, _) = procs
            .iter()
            .find(|(_, c)| c.contains("husk-vsockd"))
            .expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("device daemon died: husk-vsockd exited with signal 9"),
        "{stderr}"
    );
    assert_nothing_left(&state);
}

/// One line on stderr, exit 1, nothing started.
fn expect_error(args: &[&str], want: &str) {
    let out = Command::new(VMM)
        .args(args)
        .env("PATH", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(
        lines[0].contains(want),
        "{args:?}: {stderr:?} lacks {want:?}"
    );
}

#[test]
fn clear_errors() {
    let tmp = scratch("err");
    let k = tmp.path().join("vmlinux");
    std::fs::write(&k, "not really a kernel").unwrap();
    let state = tmp.path().join("state");
    let (k, s) = (k.to_str().unwrap(), state.to_str().unwrap());
    expect_error(
        &["--kernel", "/nonexistent/vmlinux", "--state-dir", s],
        "kernel /nonexistent/vmlinux does not exist",
    );
    expect_error(&["--state-dir", s], "--kernel is required");
    expect_error(
        &["--kernel", k, "--state-dir", s, "--engine", "builtin"],
        &format!("builtin KVM engine: cannot load kernel {k}: not an x86-64 ELF"),
    );
    expect_error(
        &["--kernel", k, "--state-dir", s, "--share", "x=/nonexistent"],
        "is not a directory",
    );
    expect_error(
        &[
            "--kernel",
            k,
            "--state-dir",
            s,
            "--vhost-device-vsock",
            "/nonexistent/vd",
        ],
        "/nonexistent/vd is not an executable",
    );
    // Every other program is found; qemu is not.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("vhost-device-vsock");
    std::fs::write(&fake, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = fake.to_str().unwrap();
    expect_error(
        &[
            "--kernel",
            k,
            "--state-dir",
            s,
            "--vhost-device-vsock",
            f,
            "--engine",
            "qemu",
        ],
        "cannot find qemu-system-x86_64",
    );
    // A daemon that dies at once: its failure, not a hang.
    expect_error(
        &[
            "--kernel",
            k,
            "--state-dir",
            s,
            "--vhost-device-vsock",
            f,
            "--engine",
            "qemu",
            "--qemu",
            "/bin/true",
        ],
        "husk-vsockd exited with exit code 1 before serving",
    );
    let cfg = tmp.path().join("c.json");
    std::fs::write(&cfg, r#"{"kernel":"/k","state_dir":"/s","vcpu":2}"#).unwrap();
    expect_error(&["--config", cfg.to_str().unwrap()], "unknown field `vcpu`");
    assert_nothing_left(&state);
}

/// A stand-in for virtiofsd that cannot set up `--sandbox namespace` and
/// serves its socket in any other sandbox.
const FAKE_VIRTIOFSD: &str = include_str!("fixtures/fake-virtiofsd.sh");

#[test]
fn virtiofsd_sandbox_fails_closed_unless_the_operator_opts_in() {
    let beside = Path::new(VMM).with_file_name("husk-vsockd");
    let Ok(vsock) = husk_vmm::binaries::locate("husk-vsockd", beside.is_file().then_some(&*beside))
    else {
        return skip("husk-vsockd not built");
    };
    if Command::new("python3").arg("-c").arg("").status().is_err() {
        return skip("the fake virtiofsd needs python3");
    }
    let tmp = scratch("sbx");
    let k = tmp.path().join("vmlinux");
    std::fs::write(&k, "not really a kernel").unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let fake = tmp.path().join("virtiofsd");
    std::fs::write(&fake, FAKE_VIRTIOFSD).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    let monitor = |sandbox_env: Option<&str>, extra: &[&str]| {
        let mut c = Command::new(VMM);
        c.arg("--kernel")
            .arg(&k)
            .arg("--state-dir")
            .arg(&state)
            .arg("--engine")
            .arg("qemu")
            // qemu "runs" and the guest "stops" at once: enough to get past
            // the daemons.
            .arg("--qemu")
            .arg("/bin/true")
            .arg("--vhost-device-vsock")
            .arg(&vsock)
            .arg("--virtiofsd")
            .arg(&fake)
            .arg("--share")
            .arg(format!("rootfs={}", share.display()))
            .args(extra)
            .env_remove("HUSK_VIRTIOFSD_SANDBOX");
        if let Some(v) = sandbox_env {
            c.env("HUSK_VIRTIOFSD_SANDBOX", v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (code, stderr, _) = monitor(None, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    for want in [
        "virtiofsd[rootfs] cannot run with --sandbox namespace",
        "HUSK_VIRTIOFSD_SANDBOX",
        "fake virtiofsd: Error entering sandbox: Unshare(EPERM)",
    ] {
        assert!(lines[0].contains(want), "{stderr:?} lacks {want:?}");
    }
    assert_nothing_left(&state);

    let (code, stderr, _) = monitor(Some("chroot"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("weaker --sandbox chroot"),
        "{stderr}"
    );
    assert_nothing_left(&state);

    let (code, stderr, stdout) = monitor(Some("none"), &["--check"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(r#""virtiofsd_sandbox": "none""#),
        "{stdout}"
    );
    let (code, stderr, _) = monitor(Some("off"), &["--check"]);
    assert_eq!(code, Some(2), "clap refuses the value: {stderr}");
    assert!(stderr.contains("namespace, chroot or none"), "{stderr}");
}

/// Starts a plain monitor with a ready pipe on a busybox guest running
/// `script`; returns the ready line, how long it took, the console at that
/// moment and the running monitor.
fn plain_with_ready(
    name: &str,
    script: &str,
    extra: &[&str],
) -> Option<(
    String,
    Duration,
    String,
    std::process::Child,
    tempfile::TempDir,
)> {
    let (kernel, tmp, initrd) = busybox_guest(name, script)?;
    let state = tmp.path().join("state");
    let mut cmd = vmm(&kernel, &state);
    let (ready_r, ready_w) = ready_pipe(&mut cmd);
    cmd.arg("--initramfs")
        .arg(&initrd)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("stderr.log")).unwrap());
    let t0 = Instant::now();
    let child = cmd.spawn().unwrap();
    drop(ready_w);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(ready_r), &mut line).unwrap();
    let took = t0.elapsed();
    let console = std::fs::read_to_string(state.join("console.log")).unwrap_or_default();
    Some((line, took, console, child, tmp))
}

/// A plain monitor's ready line: no pid, and the boot's stages up to the
/// agent listening, in order.
fn assert_ready_plain(line: &str) {
    let Ok(husk_vmm_contract::ReadyReport::Ready { pid: None, boot }) =
        husk_vmm_contract::ReadyReport::parse(line)
    else {
        panic!("not a plain ready line: {line:?}")
    };
    let stages: Vec<&str> = boot.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        stages,
        ["device daemons ready", "engine started", "agent listening"],
        "{line}"
    );
    assert!(boot.windows(2).all(|w| w[0].ms <= w[1].ms), "{line}");
}

/// Readiness means the agent listens: the monitor reports it only after
/// the agent's console line (a caller connecting earlier can wedge
/// vhost-device-vsock; see monitor.rs).
#[test]
fn plain_readiness_waits_for_the_agent() {
    let script = "echo IDLING\nsleep 2\necho husk-agent listening\nexec sleep 1000";
    let Some((line, took, console, mut child, tmp)) = plain_with_ready("ready", script, &[]) else {
        return;
    };
    eprintln!("plain monitor ready after {took:?}");
    assert_ready_plain(&line);
    assert!(console.contains("husk-agent listening"), "{console}");
    stop_plain_and_check(&mut child, tmp.path());
}

#[test]
fn plain_readiness_fails_without_an_agent() {
    let script = "echo IDLING\nexec sleep 1000";
    let Some((line, _, _, mut child, tmp)) =
        plain_with_ready("noagent", script, &["--boot-timeout", "4"])
    else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&line).expect(&line);
    assert_eq!(v["ok"], false, "{line}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("husk-agent listening"),
        "{line}"
    );
    let status = wait_child(&mut child, Duration::from_secs(20));
    let stderr = std::fs::read_to_string(tmp.path().join("stderr.log")).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_nothing_left(&tmp.path().join("state"));
}

/// A guest flooding its serial console (1.5 MB through the qemu engine)
/// cannot grow `console.log` past `console.max_bytes`: the log keeps its
/// tail, the rate limit drops the rest and says so in a marker line, and
/// the agent's ready line, printed right after the flood and most likely
/// dropped from the log, still makes the monitor ready (readiness comes
/// from the console relay, not from reading the log back).
#[test]
fn a_console_flood_is_bounded_and_readiness_still_comes() {
    let script = "echo IDLING\n\
        yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 1500000\n\
        echo husk-agent listening\n\
        sleep 2\n\
        echo AFTER-FLOOD\n\
        exec sleep 1000";
    let Some(kernel) = kernel() else {
        skip("no guest kernel");
        return;
    };
    let cfg_dir = scratch("floodcfg");
    let cfg = cfg_dir.path().join("vm.json");
    let max_bytes = 65536u64;
    std::fs::write(
        &cfg,
        serde_json::json!({
            "kernel": kernel,
            "state_dir": cfg_dir.path().join("unused"),
            "console": { "max_bytes": max_bytes, "rate_bytes_per_s": 4096, "burst_bytes": 16384 },
        })
        .to_string(),
    )
    .unwrap();
    let extra = ["--config", cfg.to_str().unwrap()];
    let Some((line, took, _, mut child, tmp)) = plain_with_ready("flood", script, &extra) else {
        return;
    };
    eprintln!("plain monitor ready after {took:?} (console flood)");
    assert_ready_plain(&line);
    let log_path = tmp.path().join("state/console.log");
    let log = wait_for_text(&log_path, "AFTER-FLOOD", Duration::from_secs(120));
    let size = std::fs::metadata(&log_path).unwrap().len();
    eprintln!("console.log after the flood: {size} bytes");
    assert!(size <= max_bytes, "console.log is {size} bytes");
    assert!(
        log.contains("bytes of console output dropped]"),
        "no drop marker in:\n{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(
        log.contains("0123456789abcdefghijklmnopqrstuvwxyz"),
        "no flood in:\n{}",
        &log[..log.len().min(3000)]
    );
    stop_plain_and_check(&mut child, tmp.path());
}

/// SIGTERMs a plain monitor, which must exit 143 and leave nothing in
/// `tmp`'s state directory.
fn stop_plain_and_check(child: &mut std::process::Child, tmp: &std::path::Path) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(wait_child(child, Duration::from_secs(20)).code(), Some(143));
    assert_nothing_left(&tmp.join("state"));
}
