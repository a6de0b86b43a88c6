//! What husk-vmm and qemu run as while a guest runs, and that a syscall
//! outside an allowlist ends the monitor with SIGSYS (see the table in
//! `vmm/README.md`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The fields of `/proc/PID/status` (or a task's) by name.
fn status(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

/// The pid of `parent`'s child whose command is qemu.
fn qemu_child(parent: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{parent}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"))
        })
}

/// Waits (up to a minute: a guest without initramfs panics and reboots
/// by itself) until no process of `state` runs. qemu outlives a killed
/// monitor (its uid change cleared the parent-death signal), and a killed
/// monitor leaves its sockets, as after SIGKILL.
fn wait_no_process_left(state: &Path) {
    let needle = state.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn qemu_and_the_monitor_run_confined() {
    let script = "mount -t virtiofs data /mnt && cat /mnt/from-host\necho IDLING\nexec sleep 600";
    let Some((kernel, tmp, initrd)) = busybox_guest("conf", script) else {
        return;
    };
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("from-host"), "SHARED-UNDER-CHROOT\n").unwrap();
    let state = tmp.path().join("state");
    let mut child = vmm(&kernel, &state)
        .arg("--initramfs")
        .arg(&initrd)
        .arg("--share")
        .arg(format!("data={}", share.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = wait_for_text(
        &state.join("console.log"),
        "IDLING",
        Duration::from_secs(90),
    );
    assert!(console.contains("SHARED-UNDER-CHROOT"), "{console}");
    let vmm_pid = child.id();
    let qemu = qemu_child(vmm_pid).expect("qemu runs");

    let q = status(Path::new(&format!("/proc/{qemu}/status")));
    eprintln!(
        "qemu: Uid {} Gid {} CapEff {} CapPrm {} CapBnd {} NoNewPrivs {} Seccomp {}",
        q["Uid"], q["Gid"], q["CapEff"], q["CapPrm"], q["CapBnd"], q["NoNewPrivs"], q["Seccomp"]
    );
    assert_eq!(q["Uid"], "65534\t65534\t65534\t65534");
    assert_eq!(q["Gid"], "65534\t65534\t65534\t65534");
    assert_eq!(hex(&q["CapEff"]), 0);
    assert_eq!(hex(&q["CapPrm"]), 0);
    // Bounded before exec to what building the machine as root takes.
    let bounded: u64 = husk_vmm::engine::qemu::QEMU_CAPABILITIES
        .iter()
        .map(|c| c.bitmask())
        .sum();
    assert_eq!(hex(&q["CapBnd"]), bounded);
    assert_eq!(q["NoNewPrivs"], "1");
    assert_eq!(q["Seccomp"], "2");
    let root = std::fs::read_link(format!("/proc/{qemu}/root")).unwrap();
    assert_eq!(root, state.join("qemu-root"));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "empty root");

    // Every thread of the monitor: its own filter, no effective
    // capabilities; only CAP_KILL (bit 5) permitted, none bounding.
    let mut threads = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{vmm_pid}/task"))
        .unwrap()
        .flatten()
    {
        let s = status(&t.path().join("status"));
        eprintln!(
            "husk-vmm thread {}: Uid {} CapEff {} CapPrm {} CapBnd {} NoNewPrivs {} Seccomp {}",
            s["Name"],
            s["Uid"],
            s["CapEff"],
            s["CapPrm"],
            s["CapBnd"],
            s["NoNewPrivs"],
            s["Seccomp"]
        );
        assert_eq!(s["Seccomp"], "2", "{}", s["Name"]);
        assert_eq!(s["NoNewPrivs"], "1");
        assert_eq!(hex(&s["CapEff"]), 0);
        assert_eq!(
            hex(&s["CapPrm"]) & !(1 << caps::Capability::CAP_KILL.index()),
            0
        );
        assert_eq!(hex(&s["CapBnd"]), 0);
        threads.push(s["Name"].clone());
    }
    // The main thread and the console relay (its own list).
    assert!(threads.iter().any(|n| n == "husk-console"), "{threads:?}");

    // Stopping qemu (another uid) takes CAP_KILL; removing sockets in the
    // root-owned state dir takes nothing.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = wait_child(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(st.code(), Some(143), "{stderr}");
    assert!(!stderr.contains("Operation not permitted"), "{stderr}");
    assert!(!state.join("qemu-root").exists(), "chroot dir removed");
    assert_nothing_left(&state);
}

/// Runs husk-vmm with `HUSK_VMM_TEST_FORBIDDEN_SYSCALL=thread` on
/// `engine` and returns how it ended and its stderr.
fn probe(
    engine: &str,
    thread: &str,
    extra: &[&str],
) -> Option<(std::process::ExitStatus, String, tempfile::TempDir)> {
    let kernel = match host_ready() {
        Ok(k) => k,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    let tmp = scratch("probe");
    let state = tmp.path().join("state");
    let mut child = vmm_on(&kernel, &state, engine)
        .args(extra)
        .env("HUSK_VMM_TEST_FORBIDDEN_SYSCALL", thread)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_child(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    wait_no_process_left(&state);
    Some((st, String::from_utf8_lossy(&out.stderr).into_owned(), tmp))
}

#[test]
fn forbidden_syscall_in_the_main_thread_kills_the_monitor_with_sigsys() {
    let Some((st, stderr, _tmp)) = probe("qemu", "main", &[]) else {
        return;
    };
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}: {stderr}");
    assert!(stderr.contains("making a forbidden syscall"), "{stderr}");
    assert!(
        !stderr.contains("the forbidden syscall returned"),
        "{stderr}"
    );
}

#[test]
fn forbidden_syscall_in_a_vcpu_thread_kills_the_monitor_with_sigsys() {
    if let Err(why) = husk_test_support::kvm() {
        return skip(why);
    }
    let Some((st, stderr, _tmp)) = probe("builtin", "vcpu", &[]) else {
        return;
    };
    assert_eq!(st.signal(), Some(libc::SIGSYS), "{st:?}: {stderr}");
    assert!(stderr.contains("thread=\"vcpu\""), "{stderr}");
}

/// `--seccomp=off`: no filter, a warning, and the same forbidden syscall
/// just returns; the guest (no initramfs) panics and stops by itself.
#[test]
fn seccomp_off_is_an_escape_hatch() {
    let Some((st, stderr, _tmp)) = probe("qemu", "main", &["--seccomp", "off"]) else {
        return;
    };
    assert_eq!(st.code(), Some(0), "{st:?}: {stderr}");
    assert!(
        stderr.contains("seccomp filters are Off") && stderr.contains("WARN"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the forbidden syscall returned"),
        "{stderr}"
    );
}
