use super::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of a raw syscall's result (0 on success), closing any fd it
/// returned.
fn errno_of(r: libc::c_long) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

fn sys_close(r: libc::c_long) -> i32 {
    let e = errno_of(r);
    if r >= 0 {
        // SAFETY: closes the fd the syscall just returned.
        unsafe { libc::close(r as i32) };
    }
    e
}

/// Runs `f` on a new thread that first installs `filters` (seccomp and
/// no_new_privs are per thread: the rest of the test process is untouched).
fn under(filters: Vec<BpfProgram>, f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        for p in &filters {
            seccompiler::apply_filter(p).unwrap();
        }
        f();
    })
    .join()
    .unwrap();
}

#[test]
fn modcaps_and_bounding_sets_agree() {
    assert_eq!(virtiofsd_modcaps(), "-mknod:-fsetid:-setfcap");
    for sandbox in [
        VirtiofsdSandbox::Namespace,
        VirtiofsdSandbox::Chroot,
        VirtiofsdSandbox::None,
    ] {
        let b = Confinement::virtiofsd(sandbox).unwrap().bounding();
        for refused in VIRTIOFSD_REFUSED_CAPS {
            assert_eq!(b & refused.bitmask(), 0, "{refused} kept");
        }
        // Everything virtiofsd still asks for must stay, or it cannot start.
        for wanted in VIRTIOFSD_DEFAULT_CAPS
            .iter()
            .filter(|c| !VIRTIOFSD_REFUSED_CAPS.contains(c))
        {
            assert_ne!(b & wanted.bitmask(), 0, "{wanted} dropped");
        }
        assert_ne!(b & Capability::CAP_SYS_ADMIN.bitmask(), 0);
        assert_eq!(
            b & Capability::CAP_SYS_CHROOT.bitmask() != 0,
            sandbox == VirtiofsdSandbox::Chroot
        );
        assert_eq!(b & Capability::CAP_SYS_PTRACE.bitmask(), 0);
        assert_eq!(b & Capability::CAP_NET_ADMIN.bitmask(), 0);
    }
    assert_eq!(Confinement::vsock().unwrap().bounding(), 0);
}

#[test]
fn filters_compile() {
    let v = Confinement::virtiofsd(VirtiofsdSandbox::Namespace).unwrap();
    assert_eq!(v.filters().len(), 3);
    let s = Confinement::vsock().unwrap();
    // The three refusal filters and husk-vsockd's allowlist.
    assert_eq!(s.filters().len(), 4);
    for p in v.filters().iter().chain(s.filters()) {
        assert!(!p.is_empty() && p.len() < 4096);
    }
}

#[test]
fn virtiofsd_filter_refuses_setuid_setgid_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    under(
        virtiofsd_filters(VirtiofsdSandbox::Namespace).unwrap(),
        move || {
            let file = d.join("f");
            let cf = c(&file);
            std::fs::write(&file, "x").unwrap();
            let fd = std::fs::File::open(&file).unwrap();
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let fchmod = |mode: u32| errno_of(unsafe { libc::fchmod(raw, mode) } as _);
            assert_eq!(fchmod(0o4755), libc::EPERM, "fchmod u+s");
            assert_eq!(fchmod(0o2755), libc::EPERM, "fchmod g+s");
            assert_eq!(fchmod(0o1777), 0, "sticky is fine");
            assert_eq!(fchmod(0o755), 0);
            let fchmodat = |p: &CString, mode: u32| {
                // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
                errno_of(unsafe {
                    libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, p.as_ptr(), mode)
                })
            };
            assert_eq!(fchmodat(&cf, 0o4711), libc::EPERM);
            assert_eq!(fchmodat(&cf, 0o644), 0);
            let sub = d.join("sub");
            std::fs::create_dir(&sub).unwrap();
            assert_eq!(fchmodat(&c(&sub), 0o2775), libc::EPERM, "setgid dir");
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let fchmodat2 = errno_of(unsafe {
                libc::syscall(libc::SYS_fchmodat2, libc::AT_FDCWD, cf.as_ptr(), 0o6755, 0)
            });
            assert_eq!(fchmodat2, libc::EPERM, "fchmodat2");
            assert_eq!(
                // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
                errno_of(unsafe { libc::chmod(cf.as_ptr(), 0o4755) } as _),
                libc::EPERM
            );
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777,
                0o644
            );

            let openat = |p: &CString, flags: i32, mode: u32| {
                // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
                sys_close(unsafe {
                    libc::syscall(libc::SYS_openat, libc::AT_FDCWD, p.as_ptr(), flags, mode)
                })
            };
            let new = c(&d.join("new"));
            assert_eq!(
                openat(&new, libc::O_CREAT | libc::O_WRONLY, 0o4755),
                libc::EPERM
            );
            assert_eq!(
                openat(&new, libc::O_CREAT | libc::O_WRONLY, 0o2755),
                libc::EPERM
            );
            assert!(!d.join("new").exists());
            assert_eq!(openat(&new, libc::O_CREAT | libc::O_WRONLY, 0o755), 0);
            // Without O_CREAT the mode register is not looked at.
            assert_eq!(openat(&cf, libc::O_RDONLY, 0o6777), 0);
            let tmp = openat(&c(&d), libc::O_TMPFILE | libc::O_RDWR, 0o4700);
            assert_eq!(tmp, libc::EPERM, "O_TMPFILE u+s");
            assert_ne!(
                openat(&c(&d), libc::O_TMPFILE | libc::O_RDWR, 0o600),
                libc::EPERM
            );
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let creat = errno_of(unsafe { libc::syscall(libc::SYS_creat, new.as_ptr(), 0o4755) });
            assert_eq!(creat, libc::EPERM);

            let mknodat = |name: &str, mode: u32, dev: u64| {
                let p = c(&d.join(name));
                // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
                errno_of(unsafe {
                    libc::syscall(libc::SYS_mknodat, libc::AT_FDCWD, p.as_ptr(), mode, dev)
                })
            };
            assert_eq!(
                mknodat("b", libc::S_IFBLK | 0o666, libc::makedev(8, 0)),
                libc::EPERM
            );
            assert_eq!(
                mknodat("c", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
                libc::EPERM
            );
            assert_eq!(mknodat("r", libc::S_IFREG | 0o4755, 0), libc::EPERM);
            assert_eq!(mknodat("fifo", libc::S_IFIFO | 0o644, 0), 0);
            assert_eq!(mknodat("reg", libc::S_IFREG | 0o644, 0), 0);
            if is_root() {
                // A whiteout (0:0) is no device; overlayfs needs it.
                assert_eq!(mknodat("wh", libc::S_IFCHR, 0), 0);
            }
            for n in ["b", "c", "r"] {
                assert!(!d.join(n).exists(), "{n} was created");
            }

            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let openat2 = errno_of(unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    cf.as_ptr(),
                    0usize,
                    0usize,
                )
            });
            assert_eq!(openat2, libc::ENOSYS, "openat2");
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let uring = errno_of(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, 0usize) });
            assert_eq!(uring, libc::ENOSYS, "io_uring_setup");
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            let x32 = errno_of(unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) });
            assert_eq!(x32, libc::ENOSYS, "x32 getpid");
        },
    );
}

#[test]
fn virtiofsd_keeps_openat2_only_without_a_sandbox() {
    let openat2 = || {
        // SAFETY: a raw syscall on a static NUL-terminated path and a
        // zeroed open_how that outlives it.
        let how: libc::open_how = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        errno_of(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                libc::AT_FDCWD,
                c".".as_ptr(),
                &how,
                std::mem::size_of::<libc::open_how>(),
            )
        })
    };
    for (sandbox, want_enosys) in [
        (VirtiofsdSandbox::Namespace, true),
        (VirtiofsdSandbox::Chroot, true),
        (VirtiofsdSandbox::None, false),
    ] {
        under(virtiofsd_filters(sandbox).unwrap(), move || {
            assert_eq!(openat2() == libc::ENOSYS, want_enosys, "{sandbox:?}");
        });
    }
}

#[test]
fn vsock_filter_allows_reading_and_unix_sockets_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    std::fs::write(d.join("f"), "x").unwrap();
    under(vsock_filters().unwrap(), move || {
        let cf = c(&d.join("f"));
        let openat = |flags: i32| {
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            sys_close(unsafe {
                libc::syscall(libc::SYS_openat, libc::AT_FDCWD, cf.as_ptr(), flags, 0o644)
            })
        };
        assert_eq!(openat(libc::O_RDONLY | libc::O_CLOEXEC), 0);
        assert_eq!(openat(libc::O_WRONLY), libc::EPERM);
        assert_eq!(openat(libc::O_RDWR), libc::EPERM);
        assert_eq!(openat(libc::O_RDONLY | libc::O_TRUNC), libc::EPERM);
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"x");
        let created = std::fs::File::create(d.join("new")).unwrap_err();
        assert_eq!(created.raw_os_error(), Some(libc::EPERM));
        let socket = |domain: i32| {
            // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
            sys_close(unsafe { libc::syscall(libc::SYS_socket, domain, libc::SOCK_STREAM, 0) })
        };
        assert_eq!(socket(libc::AF_UNIX), 0);
        assert_eq!(socket(libc::AF_INET), libc::EPERM);
        assert_eq!(socket(libc::AF_INET6), libc::EPERM);
        assert_eq!(socket(libc::AF_NETLINK), libc::EPERM);
        let l = std::os::unix::net::UnixListener::bind(d.join("s.sock")).unwrap();
        drop(l);
        std::fs::remove_file(d.join("s.sock")).unwrap();
        for (what, r) in [
            ("rename", std::fs::rename(d.join("f"), d.join("g"))),
            ("mkdir", std::fs::create_dir(d.join("dir"))),
            (
                "chmod",
                std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o777)),
            ),
            ("symlink", std::os::unix::fs::symlink("f", d.join("l"))),
        ] {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM), "{what}");
        }
        // SAFETY: a raw syscall on integers and NUL-terminated paths that outlive it.
        let ptrace = errno_of(unsafe { libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0) });
        assert_eq!(ptrace, libc::EPERM);
        // Harmless but not on husk-vsockd's allowlist.
        // SAFETY: a raw syscall on integers.
        let kill = errno_of(unsafe { libc::syscall(libc::SYS_kill, std::process::id(), 0) });
        assert_eq!(kill, libc::EPERM);
        // SAFETY: as above.
        let uid = errno_of(unsafe { libc::syscall(libc::SYS_getuid) });
        assert_eq!(uid, libc::EPERM);
    });
}

fn status_of(out: &[u8]) -> std::collections::HashMap<String, String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

#[test]
fn a_confined_child_has_no_new_privs_filters_and_its_capabilities() {
    let run = |conf: Confinement| {
        let mut cmd = Command::new("cat");
        cmd.arg("/proc/self/status");
        conf.install(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        status_of(&out.stdout)
    };
    let s = run(Confinement::vsock().unwrap());
    eprintln!(
        "vsock-confined child: CapEff {} CapBnd {} NoNewPrivs {} Seccomp {}",
        s["CapEff"], s["CapBnd"], s["NoNewPrivs"], s["Seccomp"]
    );
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        if k == "CapBnd" && !is_root() {
            continue;
        }
        assert_eq!(hex(&s[k]), 0, "{k}");
    }
    assert_eq!(s["NoNewPrivs"], "1");
    assert_eq!(s["Seccomp"], "2");
    if let Some(n) = s.get("Seccomp_filters") {
        assert_eq!(n, "4");
    }

    let conf = Confinement::virtiofsd(VirtiofsdSandbox::Namespace).unwrap();
    let want = conf.bounding();
    let s = run(conf);
    assert_eq!(s["NoNewPrivs"], "1");
    assert_eq!(s["Seccomp"], "2");
    assert_eq!(hex(&s["CapInh"]), 0);
    if is_root() {
        assert_eq!(hex(&s["CapBnd"]), want);
        assert_eq!(hex(&s["CapEff"]), want);
    } else {
        eprintln!("not root: the bounding set is not checked");
    }
}
