use super::*;

fn ctx() -> Context {
    Context {
        pid: std::process::id() as i32,
        children: vec![4242, 4343],
    }
}

fn names(kind: ThreadKind) -> Vec<&'static str> {
    allowlist(kind, &ctx()).iter().map(|a| a.name).collect()
}

fn entry(kind: ThreadKind, name: &str) -> Option<Allowed> {
    allowlist(kind, &ctx()).into_iter().find(|a| a.name == name)
}

#[test]
fn every_filter_compiles_in_both_modes() {
    for kind in ThreadKind::ALL {
        for mode in [SeccompMode::On, SeccompMode::Log] {
            let progs = compile(kind, &ctx(), mode).unwrap();
            // One program per errno in `refused`, then the allowlist.
            let errnos = if kind == ThreadKind::Vcpu { 2 } else { 1 };
            assert_eq!(progs.len(), errnos + 1, "{kind:?}");
            assert!(progs.iter().all(|p| !p.is_empty() && p.len() < 4096));
        }
    }
    // A main thread without children (never happens) still compiles.
    compile(ThreadKind::Main, &own_context(), SeccompMode::On).unwrap();
}

#[test]
fn names_match_numbers() {
    for kind in ThreadKind::ALL {
        for a in allowlist(kind, &ctx()) {
            assert!(!a.name.starts_with("SYS_") && !a.name.is_empty());
        }
    }
    let read = entry(ThreadKind::Pump, "read").unwrap();
    assert_eq!(read.nr, 0);
    assert_eq!(entry(ThreadKind::Main, "wait4").unwrap().nr, 61);
}

#[test]
fn lists_hold_what_each_thread_needs() {
    let main = names(ThreadKind::Main);
    for want in [
        "poll", "wait4", "kill", "unlink", "capset", "connect", "clone",
    ] {
        assert!(main.contains(&want), "main lacks {want}");
    }
    let kill = entry(ThreadKind::Main, "kill").unwrap();
    assert_eq!(
        kill.conds[0],
        Cond::OneOf {
            index: 0,
            values: vec![4242, 4343]
        }
    );
    let vcpu = names(ThreadKind::Vcpu);
    for want in ["ioctl", "sendmsg", "recvmsg", "eventfd2", "clone", "tgkill"] {
        assert!(vcpu.contains(&want), "vcpu lacks {want}");
    }
    let ioctl = entry(ThreadKind::Vcpu, "ioctl").unwrap();
    // KVM_RUN is _IO(0xAE, 0x80); KVM_GET_REGS _IOR(0xAE, 0x81, 144 bytes).
    assert_eq!(
        ioctl.conds,
        vec![Cond::OneOf {
            index: 1,
            values: vec![0xae80, 0x8090_ae81]
        }]
    );
    let net = names(ThreadKind::NetWorker);
    for want in ["epoll_wait", "readv", "writev", "write", "read"] {
        assert!(net.contains(&want), "net worker lacks {want}");
    }
    let pump = names(ThreadKind::Pump);
    for want in ["read", "write", "shutdown", "setsockopt"] {
        assert!(pump.contains(&want), "pump lacks {want}");
    }
    let console = names(ThreadKind::Console);
    for want in ["read", "poll", "pread64", "pwrite64", "ftruncate", "fcntl"] {
        assert!(console.contains(&want), "console lacks {want}");
    }
    for bad in ["socket", "sendto", "connect", "ioctl", "kill", "rename"] {
        assert!(!console.contains(&bad), "console allows {bad}");
    }
}

#[test]
fn no_list_allows_what_escapes() {
    let never = [
        "execve",
        "execveat",
        "fork",
        "vfork",
        "ptrace",
        "personality",
        "kexec_load",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "setuid",
        "setresuid",
        "setgid",
        "init_module",
        "finit_module",
        "bpf",
        "process_vm_writev",
        "unshare",
        "setns",
        "keyctl",
    ];
    for kind in ThreadKind::ALL {
        let n = names(kind);
        for bad in never {
            assert!(!n.contains(&bad), "{kind:?} allows {bad}");
        }
    }
    // Only the main thread opens files, and only to read.
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::NetWorker,
        ThreadKind::Pump,
        ThreadKind::Console,
    ] {
        let n = names(kind);
        for bad in ["openat", "open", "socket", "connect", "kill", "unlink"] {
            assert!(!n.contains(&bad), "{kind:?} allows {bad}");
        }
    }
    // Threads that start no threads cannot clone.
    for kind in [ThreadKind::NetWorker, ThreadKind::Pump, ThreadKind::Console] {
        assert!(!names(kind).contains(&"clone"), "{kind:?}");
    }
}

/// A thread runs under its creator's filter too: its own list must fit
/// inside its creator's.
#[test]
fn inherited_filters_leave_room_for_children() {
    for (child, parent) in [
        (ThreadKind::NetWorker, ThreadKind::Vcpu),
        (ThreadKind::Pump, ThreadKind::Main),
    ] {
        let p = names(parent);
        for a in allowlist(child, &ctx()) {
            assert!(
                p.contains(&a.name),
                "{child:?} needs {} but {parent:?} forbids it",
                a.name
            );
        }
    }
}

/// Forks, installs `kind`'s filters in the child, runs `f` there and
/// returns how the child ended. The child makes raw syscalls only.
fn in_confined_child(kind: ThreadKind, f: fn() -> i32) -> nix::sys::wait::WaitStatus {
    let progs = compile(kind, &ctx(), SeccompMode::On).unwrap();
    // SAFETY: the child only installs the prepared programs (prctl and
    // seccomp syscalls), runs `f` (raw syscalls) and _exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            for p in &progs {
                if seccompiler::apply_filter(p).is_err() {
                    // SAFETY: ends the forked child.
                    unsafe { libc::_exit(100) };
                }
            }
            let code = f();
            // SAFETY: ends the forked child.
            unsafe { libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => nix::sys::wait::waitpid(child, None).unwrap(),
    }
}

fn killed_by_sigsys(s: nix::sys::wait::WaitStatus) -> bool {
    matches!(
        s,
        nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSYS, _)
    )
}

fn exited(s: nix::sys::wait::WaitStatus, code: i32) -> bool {
    matches!(s, nix::sys::wait::WaitStatus::Exited(_, c) if c == code)
}

#[test]
fn forbidden_syscall_kills_with_sigsys() {
    let s = in_confined_child(ThreadKind::Pump, || {
        // SAFETY: a raw getpid, then the harmless forbidden probe.
        unsafe {
            libc::syscall(libc::SYS_getpid);
            libc::syscall(libc::SYS_personality, 0xffff_ffff_u64);
        }
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    let s = in_confined_child(ThreadKind::Pump, || {
        // SAFETY: an allowed syscall on a bad fd: EBADF, nothing else.
        unsafe { libc::syscall(libc::SYS_close, -1) };
        7
    });
    assert!(exited(s, 7), "{s:?}");
}

#[test]
fn argument_conditions_hold() {
    // vCPU: KVM_RUN on a bad fd is allowed (EBADF); another ioctl kills.
    let s = in_confined_child(ThreadKind::Vcpu, || {
        // SAFETY: ioctl on fd -1 fails with EBADF.
        let r = unsafe { libc::syscall(libc::SYS_ioctl, -1, 0xae80_u64) };
        if r == -1 {
            7
        } else {
            8
        }
    });
    assert!(exited(s, 7), "{s:?}");
    let s = in_confined_child(ThreadKind::Vcpu, || {
        // SAFETY: ioctl on fd -1; killed before it runs.
        unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TUNSETIFF) };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    // Executable memory is refused.
    let s = in_confined_child(ThreadKind::NetWorker, || {
        // SAFETY: an anonymous mapping request; killed before it runs.
        unsafe {
            libc::syscall(
                libc::SYS_mmap,
                0,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    // kill only reaches the recorded children (4242, 4343 do not exist:
    // ESRCH), with SIGTERM or SIGKILL.
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: kill of a pid that is not running.
        unsafe { libc::syscall(libc::SYS_kill, 4242, libc::SIGTERM) };
        7
    });
    assert!(exited(s, 7), "{s:?}");
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: kill of our parent: killed before it runs.
        unsafe { libc::syscall(libc::SYS_kill, libc::getppid(), libc::SIGTERM) };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    // Helper threads get EACCES for any open; they are not killed (glibc's
    // malloc may try one).
    let s = in_confined_child(ThreadKind::Vcpu, || {
        // SAFETY: openat with a static NUL-terminated path.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/proc/sys/vm/overcommit_memory".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        // SAFETY: reads errno.
        if r == -1 && unsafe { *libc::__errno_location() } == libc::EACCES {
            7
        } else {
            8
        }
    });
    assert!(exited(s, 7), "{s:?}");
    // glibc's first pthread_create installs one handler; no other.
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: reads the current disposition of signal 33 only.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, 33, 0, 0, 8) };
        if r == 0 {
            7
        } else {
            8
        }
    });
    assert!(exited(s, 7), "{s:?}");
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: reads the disposition of SIGTERM; killed before it runs.
        unsafe { libc::syscall(libc::SYS_rt_sigaction, libc::SIGTERM, 0, 0, 8) };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    // A new process (clone without CLONE_THREAD) kills; clone3 is ENOSYS.
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: clone3 with a null argument; answered before it runs.
        let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
        // SAFETY: reads errno.
        if r == -1 && unsafe { *libc::__errno_location() } == libc::ENOSYS {
            7
        } else {
            8
        }
    });
    assert!(exited(s, 7), "{s:?}");
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: fork-like clone; killed before it runs.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
    // Opening for writing kills the main thread; reading is fine.
    let s = in_confined_child(ThreadKind::Main, || {
        // SAFETY: openat with a static NUL-terminated path.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/proc/self/status".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if r < 0 {
            return 8;
        }
        // SAFETY: as above, for writing; killed before it runs.
        unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/dev/null".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        7
    });
    assert!(killed_by_sigsys(s), "{s:?}");
}

#[test]
fn mode_defaults_off() {
    // The library never confines unless the binary asks.
    assert_eq!(mode(), SeccompMode::Off);
}
