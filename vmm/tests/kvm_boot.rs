//! Tier-2: the builtin engine (husk-kvm behind husk-vmm's adapter) boots the real guest kernel far enough to
//! print its banner on COM1, then stops without leaving threads or fds.
//! Skips with a reason without `/dev/kvm` or a kernel.
//!
//! On PVM-backed KVM (no vmx/svm) the guest later stops on an instruction
//! KVM's emulator lacks; the banner is what this host can prove (the
//! nested tier, tests/nested/, runs the builtin engine to userspace). With hardware KVM it runs on until stopped.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_kvm::virtio::tap::Tap;
use husk_kvm::Devices;
use husk_vmm::engine::kvm::KvmEngine;
use husk_vmm::engine::EngineInstance;
use husk_vmm_contract::VmConfig;

mod common;
use common::*;

use husk_test_support::kvm as kvm_usable;

/// This process's vCPU threads and its KVM / guest-RAM fds (counted by
/// name, so tests running in parallel do not disturb the count).
fn engine_leftovers() -> (usize, usize) {
    let threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("vcpu"))
        })
        .count();
    let fds = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|f| {
            std::fs::read_link(f.path()).is_ok_and(|l| {
                let l = l.to_string_lossy();
                l.contains("kvm") || l.contains("husk-guest-ram")
            })
        })
        .count();
    (threads, fds)
}

#[test]
fn boots_the_guest_kernel_to_its_banner() {
    if let Err(why) = kvm_usable() {
        return skip(&why);
    }
    let Some(kernel) = kernel() else {
        return skip(
            "no guest kernel ($HUSK_KERNEL, /usr/local/share/husk/vmlinux, /var/cache/husk/kernel/*/vmlinux)",
        );
    };
    let dir = tempfile::tempdir().unwrap();

    let mut cfg = VmConfig::new(&kernel, dir.path());
    cfg.memory_mib = 256;
    // Two vCPUs: the second waits in KVM_RUN for a SIPI and must be kicked
    // out on stop like the first.
    cfg.vcpus = 2;
    // loglevel before earlyprintk: the early console replays the log
    // buffer when it registers, filtered by the level set so far.
    cfg.cmdline = Some("loglevel=7 earlyprintk=ttyS0".into());
    let console = cfg.console_log_path();
    let started = Instant::now();
    let mut engine = KvmEngine::start(
        &cfg,
        Devices::ConsoleOnly,
        std::fs::File::create(cfg.console_log_path()).unwrap(),
    )
    .unwrap();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(60) {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("Linux version") {
            seen = Some(started.elapsed());
            break;
        }
        if let Some(r) = engine.try_wait() {
            panic!("guest stopped before its banner ({r:?}); console:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = engine.try_wait();
    engine.stop(Duration::from_secs(1));
    drop(engine);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let seen = seen.unwrap_or_else(|| panic!("no `Linux version` within 60 s; console:\n{log}"));
    eprintln!(
        "banner after {seen:?}; kernel {}; engine state when stopped: {outcome:?}",
        kernel.display()
    );
    assert_eq!(
        engine_leftovers(),
        (0, 0),
        "vCPU threads or KVM/guest-RAM fds left"
    );
}

/// A tap (with a virtio-net header) in a network namespace made for it, so
/// nothing touches the host's interfaces; the namespace lives as long as
/// the returned namespace fd.
fn private_tap() -> Result<(OwnedFd, OwnedFd), String> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let ns = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("netns fd: {e}"))?;
        let tap = Tap::open("hk-kvm0").map_err(|e| format!("tap: {e}"))?;
        let fd = tap
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())?;
        Ok((fd, ns.into()))
    })
    .join()
    .map_err(|_| "tap thread panicked".to_string())?
}

/// The whole builtin path through the `husk-vmm` binary: the daemons start,
/// the frontends connect to them (vsock, one virtio-fs share), the
/// in-process virtio-net adopts a tap fd the monitor inherited, the
/// transports are on the guest command line, the kernel prints its banner.
/// A SIGTERM then stops the engine and the daemons and leaves nothing.
/// Without hardware KVM the guest gets no further than early boot, so the
/// guest's own virtio drivers are exercised by the qemu-engine tests.
#[test]
fn husk_vmm_builtin_attaches_vsock_fs_and_net() {
    if let Err(why) = kvm_usable() {
        return skip(&why);
    }
    let kernel = match host_ready() {
        Ok(k) => k,
        Err(why) => return skip(&why),
    };
    let tmp = scratch("kvmdev");
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let state = tmp.path().join("state");
    let (tap, _netns) = match private_tap() {
        Ok(t) => t,
        Err(why) => return skip(&why),
    };
    // Inherited by husk-vmm under the same number, as the runtime does.
    nix::fcntl::fcntl(
        tap.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let config = tmp.path().join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"kernel":"{}","state_dir":"{}","net":[{{"tap_fd":{},"mac":"02:00:0a:fd:08:02","mtu":1400}}]}}"#,
            kernel.display(),
            state.display(),
            tap.as_raw_fd()
        ),
    )
    .unwrap();
    let mut child = vmm_on(&kernel, &state, "builtin")
        .arg("--config")
        .arg(&config)
        .args(["--cmdline", "loglevel=7 earlyprintk=ttyS0"])
        .arg("--share")
        .arg(format!("root={}", share.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let console = wait_for_text(
        &state.join("console.log"),
        "Linux version",
        Duration::from_secs(60),
    );
    // The whole `Command line:` line (the console is written as it comes).
    let deadline = Instant::now() + Duration::from_secs(30);
    let cmdline = loop {
        let log = std::fs::read_to_string(state.join("console.log")).unwrap_or_default();
        if let Some(line) = log
            .split_inclusive('\n')
            .find(|l| l.contains("Command line:") && l.ends_with('\n'))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no command line:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    for want in [
        "virtio_mmio.device=4K@0xd0000000:5",
        "virtio_mmio.device=4K@0xd0001000:6",
        "virtio_mmio.device=4K@0xd0002000:7",
    ] {
        assert!(
            cmdline.contains(want),
            "{want} missing:\n{console}\n{cmdline}"
        );
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_child(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    // 143 after the signal, or 1 when the guest had already died on an
    // instruction PVM-backed KVM cannot emulate.
    assert!(
        matches!(status.code(), Some(143) | Some(1)),
        "{status:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(&state);
}
