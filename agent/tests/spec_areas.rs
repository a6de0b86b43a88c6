//! One test per OCI spec area, each checking the effect from inside the
//! container. Root only; each skips itself with a reason otherwise.

mod common;
use common::*;
use husk_protocol::{StdioSpec, StreamKind};
use husk_test_support::{require, skip};
use serde_json::json;

/// Runs `sh -c SCRIPT` in a fresh bundle after `edit`; asserts exit 0 and
/// no leftovers; returns stdout, or `None` with the test skipped (its
/// `SKIP` line printed) where the agent tests cannot run.
fn sh(flags: &[&str], script: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Option<String> {
    if let Err(why) = can_run() {
        skip(why);
        return None;
    }
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", flags, &["sh", "-c", script]);
    let spec = patch(spec, edit);
    let (status, out, err) = agent.run("c", spec, None);
    assert_eq!(status, 0, "stdout: {} stderr: {}", text(&out), text(&err));
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
    Some(text(&out))
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
}

#[test]
fn capabilities_no_new_privs_and_the_vsock_rule() {
    let Some(out) = sh(&[], "cat /proc/self/status", |_| {}) else {
        return;
    };
    // CAP_AUDIT_WRITE (29), CAP_KILL (5), CAP_NET_BIND_SERVICE (10).
    let want = format!("{:016x}", (1u64 << 29) | (1 << 5) | (1 << 10));
    assert_eq!(field(&out, "CapEff"), want);
    assert_eq!(field(&out, "CapPrm"), want);
    assert_eq!(field(&out, "CapBnd"), want);
    assert_eq!(field(&out, "CapInh"), "0000000000000000");
    assert_eq!(field(&out, "NoNewPrivs"), "1");
    // No profile in the spec, but every container gets the vsock rule.
    assert_eq!(field(&out, "Seccomp"), "2");
}

/// A container process cannot open an AF_VSOCK socket (the agent's port
/// is for the host alone), unless the spec carries the operator-enabled
/// `husk.guest_vsock: allow`. Installing the rules does not turn on
/// no_new_privs when the spec leaves it off, with or without a profile.
#[test]
fn vsock_sockets_are_refused_unless_allowed() {
    let script = "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; \
                  vsock-cat 2 1024 </dev/null 2>&1; echo rc=$?";
    let Some(out) = sh(&["--probes"], script, |v| {
        v["process"]["noNewPrivileges"] = json!(false);
    }) else {
        return;
    };
    assert!(
        out.contains("vsock-cat: socket: Address family not supported"),
        "{out}"
    );
    assert!(out.contains("rc=2"), "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "0", "{out}");
    assert_eq!(field(&out, "Seccomp"), "2");

    let Some(out) = sh(&["--probes"], script, |v| {
        v["process"]["noNewPrivileges"] = json!(false);
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]});
    }) else {
        return;
    };
    assert!(out.contains("rc=2"), "{out}");
    assert_eq!(
        field(&out, "NoNewPrivs"),
        "0",
        "a profile must not set no_new_privs: {out}"
    );

    let Some(out) = sh(&["--probes"], script, |v| {
        v["annotations"] = json!({"husk.guest_vsock": "allow"});
    }) else {
        return;
    };
    // The socket opens; nothing listens on the host's CID here, so only
    // the connect fails.
    assert!(!out.contains("vsock-cat: socket:"), "{out}");
    assert!(out.contains("rc=3") || out.contains("rc=0"), "{out}");
}

#[test]
fn inheritable_and_ambient_capabilities() {
    let Some(out) = sh(&[], "cat /proc/self/status", |v| {
        v["process"]["capabilities"]["inheritable"] = json!(["CAP_KILL"]);
        v["process"]["capabilities"]["ambient"] = json!(["CAP_KILL"]);
        v["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    }) else {
        return;
    };
    let kill = format!("{:016x}", 1u64 << 5);
    assert_eq!(field(&out, "CapInh"), kill);
    assert_eq!(field(&out, "CapAmb"), kill);
    assert_eq!(field(&out, "Uid").split_whitespace().next(), Some("1000"));
}

/// runc fails (EPERM from capset) when the inheritable set has a
/// capability the bounding set lacks, an unset bounding set being empty;
/// husk refuses such a spec at create, naming the fields, before anything
/// is built.
#[test]
fn inheritable_outside_an_unset_bounding_set_is_refused_at_create() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", &[], &["true"]);
    let spec = patch(spec, |v| {
        v["process"]["capabilities"] = json!({
            "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL"],
            "inheritable": ["CAP_KILL"],
        });
    });
    let mut c = agent.client();
    let e = create(&mut c, "c", spec, husk_protocol::StdioSpec::default()).unwrap_err();
    assert_eq!(
        e.code(),
        Some(husk_protocol::ErrorCode::InvalidArgument),
        "{e}"
    );
    assert!(
        e.to_string().contains(
            "process.capabilities.inheritable has CAP_KILL, which \
             process.capabilities.bounding (it is unset, so empty) lacks"
        ),
        "{e}"
    );
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

/// Without a `capabilities` object runc leaves the capabilities alone: the
/// process keeps those of its runtime (here the agent's), where husk used
/// to empty the bounding set and then fail to set oci-spec's defaults.
#[test]
fn no_capabilities_object_keeps_the_agents_capabilities() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle("b", &[], &["cat", "/proc/self/status"]);
    let spec = patch(spec, |v| {
        v["process"].as_object_mut().unwrap().remove("capabilities");
        v["process"]["noNewPrivileges"] = json!(false);
    });
    let (status, out, err) = agent.run("c", spec, None);
    assert_eq!(status, 0, "{}", text(&err));
    let out = text(&out);
    let mine = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    for key in ["CapBnd", "CapPrm", "CapEff", "CapInh"] {
        assert_eq!(field(&out, key), field(&mine, key), "{key}: {out}");
    }
    agent.shutdown();
}

#[test]
fn seccomp_profile_is_enforced() {
    let Some(out) = sh(
        &[],
        "grep Seccomp: /proc/self/status; mkdir /tmp/x 2>&1; echo rc=$?; chmod 777 /tmp 2>&1; echo rc2=$?",
        |v| {
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                    {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
                ]
            });
        },
    ) else {
        return;
    };
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        out.contains("Operation not permitted") && out.contains("rc=1"),
        "{out}"
    );
    assert!(
        out.contains("Permission denied") && out.contains("rc2=1"),
        "{out}"
    );
}

#[test]
fn user_namespace_with_id_maps() {
    let Some(out) = sh(
        &[],
        "cat /proc/self/uid_map /proc/self/gid_map; id -u",
        |v| {
            let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
            ns.push(json!({"type": "user"}));
            ns.push(json!({"type": "cgroup"}));
            v["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            v["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    ) else {
        return;
    };
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0", "100000", "65536"], "{out}");
    assert_eq!(lines[1], ["0", "100000", "65536"], "{out}");
    assert_eq!(lines[2], ["0"], "{out}");
}

#[test]
fn mounts_tmpfs_and_readonly_bind() {
    require!(can_run());
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), "from host").unwrap();
    let srcp = src.path().to_str().unwrap().to_owned();
    let Some(out) = sh(
        &[],
        "cat /proc/self/mountinfo; cat /mnt/host/f; echo; touch /mnt/host/g 2>&1; echo rc=$?; touch /data/ok && echo wrote",
        |v| {
            let m = v["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "size=1m", "mode=700"]}));
            m.push(json!({"destination": "/mnt/host", "type": "bind", "source": srcp,
                          "options": ["rbind", "ro", "nosuid"]}));
        },
    ) else {
        return;
    };
    let data = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/data"))
        .expect(&out);
    assert!(
        data.contains("nosuid") && data.contains("nodev") && data.contains("tmpfs"),
        "{data}"
    );
    let host = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/mnt/host"))
        .expect(&out);
    assert!(
        host.split_whitespace().nth(5).unwrap().starts_with("ro"),
        "{host}"
    );
    assert!(out.contains("from host"), "{out}");
    assert!(
        out.contains("Read-only file system") && out.contains("rc=1"),
        "{out}"
    );
    assert!(out.contains("wrote"), "{out}");
    // The container's proc, sysfs, devpts and mqueue are there too.
    for dest in [
        "/proc",
        "/sys",
        "/dev/pts",
        "/dev/mqueue",
        "/dev/shm",
        "/sys/fs/cgroup",
    ] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(dest)),
            "{dest}: {out}"
        );
    }
    // pivot_root: the old root is gone. Every mount the container sees
    // is its root or below one of the destinations it asked for (the
    // host's own mounts, /run or /boot say, would show otherwise), and
    // only one is the root.
    let asked = ["/proc", "/sys", "/dev", "/data", "/mnt/host"];
    let points: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.contains(" - ")
                && l.split(' ')
                    .next()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    assert!(!points.is_empty(), "{out}");
    assert_eq!(points.iter().filter(|p| **p == "/").count(), 1, "{out}");
    for p in points.iter().filter(|p| **p != "/") {
        assert!(
            asked
                .iter()
                .any(|a| p == a || p.starts_with(&format!("{a}/"))),
            "{p} is a mount the container did not ask for: {out}"
        );
    }
}

/// runc's recursive mount options: `rro` makes a bind's submounts
/// read-only too, where a plain `ro` leaves them as they are (runc remounts
/// only the top); `rnoexec` reaches the submount as well.
#[test]
fn recursive_mount_attributes_reach_submounts() {
    require!(can_run());
    let src = tempfile::tempdir().unwrap();
    let sub = src.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let srcp = src.path().to_str().unwrap().to_owned();
    let out = sh(
        &[],
        "for d in /plain /rec; do touch $d/top 2>/dev/null && echo $d/top=rw || echo $d/top=ro; \
         touch $d/sub/f 2>/dev/null && echo $d/sub=rw || echo $d/sub=ro; done; \
         grep -E ' /(plain|rec)(/sub)? ' /proc/self/mountinfo",
        |v| {
            let m = v["mounts"].as_array_mut().unwrap();
            m.push(
                json!({"destination": "/plain", "type": "bind", "source": srcp,
                          "options": ["rbind", "ro"]}),
            );
            m.push(
                json!({"destination": "/rec", "type": "bind", "source": srcp,
                          "options": ["rbind", "rro", "rnoexec"]}),
            );
        },
    );
    let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);
    let Some(out) = out else { return };
    for want in [
        "/plain/top=ro",
        "/plain/sub=rw",
        "/rec/top=ro",
        "/rec/sub=ro",
    ] {
        assert!(out.lines().any(|l| l == want), "{want}: {out}");
    }
    let opts = |point: &str| -> String {
        out.lines()
            .find(|l| l.split_whitespace().nth(4) == Some(point))
            .and_then(|l| l.split_whitespace().nth(5))
            .unwrap_or_else(|| panic!("{point} is not a mount: {out}"))
            .to_owned()
    };
    assert!(opts("/rec/sub").contains("noexec"), "{out}");
    assert!(!opts("/plain/sub").contains("noexec"), "{out}");
}

/// `linux.memoryPolicy` is set before the exec (runc 1.3's set_mempolicy):
/// the container's mappings show it in /proc/self/numa_maps; a policy the
/// kernel refuses fails the create naming the field.
#[test]
fn memory_policy_is_the_processes_numa_policy() {
    require!(can_run());
    if !std::path::Path::new("/proc/self/numa_maps").exists() {
        skip!("this host kernel has no NUMA (no /proc/self/numa_maps)");
    }
    let Some(out) = sh(&[], "cat /proc/self/numa_maps", |v| {
        v["linux"]["memoryPolicy"] = json!({"mode": "MPOL_BIND", "nodes": "0"});
    }) else {
        return;
    };
    assert!(out.lines().any(|l| l.contains(" bind:0 ")), "{out}");

    let agent = Agent::start();
    let (spec, _dir) = agent.bundle("b2", &[], &["true"]);
    let spec = patch(spec, |v| {
        // MPOL_DEFAULT takes no nodes: the kernel says EINVAL.
        v["linux"]["memoryPolicy"] = json!({"mode": "MPOL_DEFAULT", "nodes": "0"});
    });
    let mut c = agent.client();
    let err = create(&mut c, "c2", spec, husk_protocol::StdioSpec::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux.memoryPolicy (MPOL_DEFAULT, nodes \"0\")")
            && err.contains("Invalid argument"),
        "{err}"
    );
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn readonly_root() {
    let Some(out) = sh(
        &["--readonly"],
        "touch /x 2>&1; echo rc=$?; touch /tmp/y 2>&1; echo rc2=$?",
        |_| {},
    ) else {
        return;
    };
    assert!(
        out.contains("Read-only file system") && out.contains("rc=1"),
        "{out}"
    );
    assert!(out.contains("rc2=1"), "{out}");
}

#[test]
fn hostname_and_domainname() {
    let Some(out) = sh(&[], "hostname; cat /proc/sys/kernel/domainname", |v| {
        v["hostname"] = json!("box1");
        v["domainname"] = json!("example.org");
    }) else {
        return;
    };
    assert_eq!(out, "box1\nexample.org\n");
}

#[test]
fn rlimits() {
    let Some(out) = sh(&[], "ulimit -n; ulimit -Hn; ulimit -c", |v| {
        v["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000},
            {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
        ]);
    }) else {
        return;
    };
    assert_eq!(out, "512\n1000\n0\n");
}

#[test]
fn user_groups_and_umask() {
    let Some(out) = sh(
        &[],
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status; umask",
        |v| {
            v["process"]["user"] =
                json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20], "umask": 63});
        },
    ) else {
        return;
    };
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("Gid:\t1001\t1001\t1001\t1001"), "{out}");
    assert!(out.contains("Groups:\t10 20"), "{out}");
    assert!(out.trim_end().ends_with("0077"), "{out}");
}

#[test]
fn env_cwd_and_path_lookup() {
    let Some(out) = sh(&[], "pwd; echo $FOO; echo $PATH; echo $HOME", |v| {
        v["process"]["cwd"] = json!("/tmp");
        v["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    }) else {
        return;
    };
    assert_eq!(out, "/tmp\nbar baz\n/bin\n/\n");
}

#[test]
fn masked_and_readonly_paths() {
    let Some(out) = sh(
        &[],
        "wc -c < /proc/timer_list; touch /proc/acpi/x 2>&1; cat /proc/self/mountinfo; echo x > /proc/sys/vm/swappiness; echo rc=$?",
        |_| {},
    ) else {
        return;
    };
    assert!(
        out.starts_with("0\n"),
        "/proc/timer_list (a file) not masked: {out:?}"
    );
    let acpi = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/proc/acpi"))
        .expect(&out);
    assert!(
        acpi.contains(" ro") && acpi.contains("tmpfs"),
        "/proc/acpi (a directory): {acpi}"
    );
    let sys = out
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/proc/sys"))
        .expect(&out);
    assert!(
        sys.split_whitespace().nth(5).unwrap().starts_with("ro"),
        "{sys}"
    );
    assert!(out.contains("rc=1"), "{out}");
}

#[test]
fn oom_score_adj() {
    let Some(out) = sh(&[], "cat /proc/self/oom_score_adj", |v| {
        v["process"]["oomScoreAdj"] = json!(500);
    }) else {
        return;
    };
    assert_eq!(out, "500\n");
}

#[test]
fn sysctl() {
    let Some(out) = sh(&[], "cat /proc/sys/net/ipv4/ip_forward", |v| {
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    }) else {
        return;
    };
    assert_eq!(out, "1\n");
}

#[test]
fn default_devices_symlinks_and_spec_devices() {
    let Some(out) = sh(
        &[],
        "for d in null zero full random urandom tty fuse; do test -c /dev/$d && echo $d; done; \
         readlink /dev/fd; readlink /dev/stdin; readlink /dev/ptmx; head -c 4 /dev/zero | wc -c; stat -c %a /dev/fuse",
        |v| {
            v["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 432}]);
        },
    ) else {
        return;
    };
    assert_eq!(
        out,
        "null\nzero\nfull\nrandom\nurandom\ntty\nfuse\n/proc/self/fd\n/proc/self/fd/0\npts/ptmx\n4\n660\n"
    );
}

#[test]
fn namespaces_are_new_or_joined_by_path() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle("a", &[], &["sleep", "100"]);
    let mut c = agent.client();
    let pid = create(&mut c, "a", spec, Default::default()).unwrap();
    c.start("a").unwrap();
    let (spec, dir) = agent.bundle("b", &[], &["sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; readlink /proc/self/ns/pid; echo $$"]);
    let spec = patch(spec, |v| {
        for ns in v["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = json!(format!("/proc/{pid}/ns/net"));
            }
        }
    });
    let (status, out, err) = agent.run("b", spec, None);
    assert_eq!(status, 0, "{}", text(&err));
    let out = text(&out);
    let lines: Vec<&str> = out.lines().collect();
    let theirs = |n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    let ours = |n: &str| std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
    assert_eq!(lines[0], theirs("net").to_str().unwrap(), "joined net ns");
    assert_ne!(lines[1], theirs("uts").to_str().unwrap(), "own uts ns");
    assert_ne!(lines[1], ours("uts").to_str().unwrap(), "own uts ns");
    assert_ne!(lines[2], ours("pid").to_str().unwrap(), "own pid ns");
    assert_eq!(lines[3], "1", "pid 1 in its pid namespace");
    remove(&mut c, "a");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn cgroup_limits() {
    require!(can_run());
    if !husk_agent::container::cgroups::is_cgroup2(std::path::Path::new("/sys/fs/cgroup")) {
        skip!("/sys/fs/cgroup is not cgroup2 on this host (the VM tests cover it)");
    }
    let Some(out) = sh(
        &[],
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
        |v| {
            v["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 32}});
            v["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "cgroup"}));
        },
    ) else {
        return;
    };
    assert_eq!(out, "67108864\n32\n");
}

#[test]
fn seccomp_allowlist_default_errno_and_arg_conditions() {
    let allow: Vec<&str> = syscalls::x86_64::Sysno::iter()
        .map(|s| s.name())
        .filter(|n| !matches!(*n, "mkdir" | "mkdirat" | "chmod" | "fchmodat" | "fchmodat2"))
        .collect();
    let Some(out) = sh(
        &[],
        "mkdir /tmp/x 2>&1; echo rc=$?; chmod 700 /tmp 2>&1; echo rc2=$?; chmod 1777 /tmp && echo ok3",
        |v| {
            v["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    {"names": allow, "action": "SCMP_ACT_ALLOW"},
                    // chmod is allowed unless the mode is 0700.
                    {"names": ["chmod"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 1, "value": 0o700, "op": "SCMP_CMP_NE"}]},
                    {"names": ["fchmodat"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 2, "value": 0o700, "op": "SCMP_CMP_NE"}]}
                ]
            });
        },
    ) else {
        return;
    };
    assert!(
        out.contains("Operation not permitted") && out.contains("rc=1"),
        "{out}"
    );
    assert!(out.contains("rc2=1"), "{out}");
    assert!(out.contains("ok3"), "{out}");
}

#[test]
fn mount_destinations_follow_symlinks_inside_the_rootfs() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", &[], &["sh", "-c", "cat /proc/self/mountinfo"]);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("var")).unwrap();
    std::fs::create_dir_all(rootfs.join("run")).unwrap();
    // An absolute symlink, as images have: it must resolve in the rootfs,
    // not in the agent's /run.
    std::os::unix::fs::symlink("/run", rootfs.join("var/run")).unwrap();
    let spec = patch(spec, |v| {
        v["mounts"].as_array_mut().unwrap().push(json!(
            {"destination": "/var/run/app", "type": "tmpfs", "source": "tmpfs"}));
    });
    let (status, out, err) = agent.run("c", spec, None);
    assert_eq!(status, 0, "{}", text(&err));
    let out = text(&out);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/run/app")),
        "{out}"
    );
    assert!(
        !std::path::Path::new("/run/app").exists(),
        "created outside the rootfs"
    );
    assert_no_mounts(&dir);
    agent.shutdown();
}

/// A rootfs whose /proc is a symlink is refused at create, as runc does
/// ("must be mounted on ordinary directory"), instead of procfs being
/// mounted wherever the image's link points; nothing is left behind.
#[test]
fn proc_on_a_symlink_is_refused() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", &[], &["true"]);
    let rootfs = dir.join("rootfs");
    let _ = std::fs::remove_dir(rootfs.join("proc"));
    std::fs::create_dir_all(rootfs.join("elsewhere")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", rootfs.join("proc")).unwrap();
    let mut c = agent.client();
    let e = create(&mut c, "c", spec, husk_protocol::StdioSpec::default()).unwrap_err();
    assert_eq!(
        e.code(),
        Some(husk_protocol::ErrorCode::InvalidArgument),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("filesystem \"proc\" must be mounted on ordinary directory")
            && msg.contains("/proc in the rootfs is a symlink"),
        "{msg}"
    );
    assert!(
        std::fs::read_dir(rootfs.join("elsewhere"))
            .unwrap()
            .next()
            .is_none(),
        "procfs was mounted through the link"
    );
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn rootfs_propagation() {
    for (prop, want) in [
        ("private", None),
        ("shared", Some("shared:")),
        ("slave", None),
    ] {
        let Some(out) = sh(&[], "cat /proc/self/mountinfo", |v| {
            v["linux"]["rootfsPropagation"] = json!(prop);
        }) else {
            return;
        };
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .expect(&out);
        match want {
            Some(tag) => assert!(line.contains(tag), "{prop}: {line}"),
            // A slave of a private parent (this host's and the guest's /)
            // is private: either way nothing propagates back.
            None => assert!(!line.contains("shared:"), "{prop}: {line}"),
        }
    }
}

/// A time namespace with `linux.timeOffsets`: the container's monotonic
/// and boot clocks run a year ahead of the guest's (`/proc/uptime` is the
/// boottime clock).
#[test]
fn time_namespace_with_offsets() {
    const YEAR: u64 = 365 * 24 * 3600;
    let Some(out) = sh(&[], "cut -d. -f1 /proc/uptime", |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({
            "boottime": {"secs": YEAR, "nanosecs": 0},
            "monotonic": {"secs": YEAR}
        });
    }) else {
        return;
    };
    let uptime: u64 = out.trim().parse().unwrap();
    assert!(uptime >= YEAR, "uptime {uptime} s in the container");
}

/// Offsets without a time namespace of the container's own, or for a
/// clock a time namespace cannot shift, are refused at create, naming the
/// field.
#[test]
fn time_offsets_need_a_time_namespace_and_a_shiftable_clock() {
    require!(can_run());
    let agent = Agent::start();
    for (i, (ns, clock, want)) in [
        (false, "monotonic", "creates no time namespace"),
        (true, "realtime", "linux.timeOffsets.realtime"),
    ]
    .into_iter()
    .enumerate()
    {
        let (spec, dir) = agent.bundle(&format!("b{i}"), &[], &["true"]);
        let spec = patch(spec, |c| {
            if ns {
                c["linux"]["namespaces"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "time"}));
            }
            c["linux"]["timeOffsets"] = json!({clock: {"secs": 10}});
        });
        let mut c = agent.client();
        let e = create(&mut c, "c", spec, husk_protocol::StdioSpec::default()).unwrap_err();
        assert_eq!(
            e.code(),
            Some(husk_protocol::ErrorCode::InvalidArgument),
            "{e}"
        );
        assert!(e.to_string().contains(want), "{e}");
        assert_no_mounts(&dir);
        assert_no_children(&agent);
    }
    agent.shutdown();
}

/// createContainer and startContainer hooks run in the container, with
/// its state on stdin: createContainer after the mounts (it writes into
/// the container's /dev/shm tmpfs), startContainer after it and before the
/// process; each path resolves in the container's rootfs (the hook exists
/// only there). A failing one fails the create or the start, naming it and
/// carrying its output. (`husk features` lists both; the agent used to
/// ignore them.)
#[test]
fn create_and_start_container_hooks_run_in_the_container() {
    use std::os::unix::fs::PermissionsExt;
    require!(can_run());
    let agent = Agent::start();
    let script = "cat /dev/shm/log; cat /dev/shm/creating.json; echo; cat /dev/shm/created.json";
    let (spec, dir) = agent.bundle("b", &[], &["sh", "-c", script]);
    let hook = dir.join("rootfs/oci-hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"$1 X=$X\" >> /dev/shm/log\ncat > \"/dev/shm/$2.json\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = |stage: &str, status: &str, x: &str| {
        json!([{"path": "/oci-hook.sh", "args": ["oci-hook.sh", stage, status],
                "env": [format!("X={x}")]}])
    };
    let spec = patch(spec, |v| {
        v["hooks"] = json!({"createContainer": h("createContainer", "creating", "1"),
                            "startContainer": h("startContainer", "created", "2")});
        v["annotations"] = json!({"io.example": "yes"});
    });
    let (status, out, err) = agent.run("hk", spec, None);
    assert_eq!(status, 0, "stdout: {} stderr: {}", text(&out), text(&err));
    let out = text(&out);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("createContainer X=1"), "{out}");
    assert_eq!(lines.next(), Some("startContainer X=2"), "{out}");
    for (line, status) in lines.zip(["creating", "created"]) {
        let state: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(state["id"], "hk", "{line}");
        assert_eq!(state["status"], status, "{line}");
        // The init's pid in the container's pid namespace, as runc's.
        assert_eq!(state["pid"], 1, "{line}");
        assert_eq!(state["bundle"], dir.to_str().unwrap(), "{line}");
        assert_eq!(state["annotations"]["io.example"], "yes", "{line}");
    }

    let mut c = agent.client();
    let (spec, dir2) = agent.bundle("b2", &[], &["true"]);
    let spec = patch(spec, |v| {
        v["hooks"] = json!({"createContainer": [{"path": "/bin/sh",
            "args": ["sh", "-c", "echo no-go >&2; exit 4"]}]});
    });
    let e = create(&mut c, "hk2", spec, husk_protocol::StdioSpec::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("createContainer hook /bin/sh: failed: exit status: 4: no-go"),
        "{e}"
    );
    assert_no_mounts(&dir2);

    let (spec, dir3) = agent.bundle("b3", &[], &["sh", "-c", "echo ran > /ran"]);
    let spec = patch(spec, |v| {
        v["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    });
    create(&mut c, "hk3", spec, husk_protocol::StdioSpec::default()).unwrap();
    let e = c.start("hk3").unwrap_err();
    assert_eq!(
        e.code(),
        Some(husk_protocol::ErrorCode::FailedPrecondition),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("startContainer hook /bin/false: failed: exit status: 1"),
        "{e}"
    );
    remove(&mut c, "hk3");
    assert!(!dir3.join("rootfs/ran").exists(), "the process ran");
    assert_no_mounts(&dir);
    assert_no_mounts(&dir3);
    assert_no_children(&agent);
    agent.shutdown();
}

/// A privileged pod's container as containerd's CRI makes it: every host
/// device listed (`/dev/ptmx` among them, devices in subdirectories, and
/// devices the guest has no driver for: mknod makes them regardless), all
/// capabilities, no seccomp profile, no masked or read-only paths, sysfs
/// and the cgroup filesystem writable. It starts (it failed with
/// `mknod .../dev/pts/ptmx: File exists`: the ptmx link was made before
/// the spec's devices, and `/dev/ptmx` was created through it), and
/// `/dev/ptmx` is the link to the container's devpts, as with runc.
#[test]
fn a_privileged_spec_with_every_host_device_starts() {
    // Every capability this host lets a process have (containerd lists its
    // own set; in the guest the agent has them all).
    let have = caps::read(None, caps::CapSet::Bounding).unwrap();
    let all_caps: Vec<String> = have.iter().map(|c| c.to_string()).collect();
    let script = "readlink /dev/ptmx; \
                  for d in null console tty kmsg dri/card0 husk-test/nodriver; do \
                    test -c /dev/$d && echo chr $d; done; \
                  test -b /dev/husk-blk && echo blk husk-blk; \
                  grep -E '^(CapEff|Seccomp):' /proc/self/status; \
                  awk '$5 == \"/sys\" || $5 == \"/sys/fs/cgroup\" { print $5, substr($6, 1, 2) }' /proc/self/mountinfo";
    let Some(out) = sh(&[], script, |v| {
        let dev = |path: &str, typ: &str, major: u32, minor: u32| {
            json!({"path": path, "type": typ, "major": major, "minor": minor,
                   "fileMode": 0o666, "uid": 0, "gid": 0})
        };
        v["linux"]["devices"] = json!([
            dev("/dev/null", "c", 1, 3),
            dev("/dev/ptmx", "c", 5, 2),
            dev("/dev/console", "c", 5, 1),
            dev("/dev/tty", "c", 5, 0),
            dev("/dev/kmsg", "c", 1, 11),
            dev("/dev/dri/card0", "c", 226, 0),
            // No such driver anywhere: the node is made all the same.
            dev("/dev/husk-test/nodriver", "c", 511, 77),
            dev("/dev/husk-blk", "b", 259, 999),
        ]);
        v["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]});
        v["linux"]["maskedPaths"] = json!([]);
        v["linux"]["readonlyPaths"] = json!([]);
        let caps = json!(all_caps);
        v["process"]["capabilities"] = json!({"bounding": caps, "effective": caps,
                                              "permitted": caps});
        v["process"]["noNewPrivileges"] = json!(false);
        for m in v["mounts"].as_array_mut().unwrap() {
            if m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup" {
                let opts = m["options"].as_array_mut().unwrap();
                opts.retain(|o| o != "ro");
                opts.push(json!("rw"));
            }
        }
    }) else {
        return;
    };
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pts/ptmx"), "{out}");
    for want in [
        "chr null",
        "chr console",
        "chr tty",
        "chr kmsg",
        "chr dri/card0",
        "chr husk-test/nodriver",
        "blk husk-blk",
    ] {
        assert!(out.lines().any(|l| l == want), "{want}: {out}");
    }
    let all: u64 = have.iter().map(|c| 1u64 << c.index()).sum();
    assert!(
        out.contains(&format!("CapEff:\t{all:016x}")),
        "{all:016x}: {out}"
    );
    assert!(out.contains("/sys rw"), "{out}");
    assert!(out.contains("/sys/fs/cgroup rw"), "{out}");
}

/// `linux.rootfsPropagation` and the mounts' propagation options have
/// runc's meaning between the container and the agent's (the guest's)
/// mount namespace, for a volume whose source is a shared mount there
/// (the guest makes its root shared, as systemd does on a host):
/// - `rshared` (Kubernetes' Bidirectional): a mount the container makes
///   in the volume reaches the agent's side (it did not: the container's
///   mounts were always made slaves first);
/// - `rslave` (HostToContainer): a mount made on the agent's side after
///   the container started shows in the container;
/// - `rprivate`: neither way.
#[test]
fn rootfs_propagation_between_the_agent_and_the_container() {
    require!(can_run());
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let agent = Agent::start();
    let vol = agent.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    mount(
        Some("tmpfs"),
        &vol,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    // Unmounted however the test ends.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(vol.clone());
    mount(
        None::<&str>,
        &vol,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    let mut c = agent.client();
    // Waits (up to 3 s) for FILE in the volume: "seen" or "unseen".
    let look = |f: &str| {
        format!(
            "i=0; while [ ! -e /vol/{f} ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; \
             [ -e /vol/{f} ] && echo seen || echo unseen"
        )
    };
    for (i, (prop, script, inward)) in [
        (
            "rshared",
            "mkdir -p /vol/out && mount -t tmpfs none /vol/out && touch /vol/out/made".to_owned(),
            None,
        ),
        ("rslave", look("in1/made"), Some("in1")),
        ("rprivate", look("in2/made"), Some("in2")),
    ]
    .into_iter()
    .enumerate()
    {
        let (spec, _) = agent.bundle(&format!("b{i}"), &[], &["sh", "-c", &script]);
        let source = vol.to_str().unwrap().to_owned();
        let spec = patch(spec, |v| {
            v["linux"]["rootfsPropagation"] = json!(prop);
            v["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/vol", "type": "bind", "source": source,
                "options": ["rbind", prop]}));
            let caps = json!(["CAP_SYS_ADMIN"]);
            v["process"]["capabilities"] =
                json!({"bounding": caps, "effective": caps, "permitted": caps});
        });
        let id = format!("c{i}");
        let stdio = StdioSpec {
            stdin: false,
            stdout: true,
            stderr: true,
        };
        create(&mut c, &id, spec, stdio).unwrap();
        let out = agent.stream(&id, None, StreamKind::Stdout);
        let err = agent.stream(&id, None, StreamKind::Stderr);
        c.start(&id).unwrap();
        if let Some(dir) = inward {
            let d = vol.join(dir);
            std::fs::create_dir(&d).unwrap();
            mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap();
            std::fs::write(d.join("made"), b"").unwrap();
        }
        let (o, e) = collect(out, err, None, None);
        assert_eq!(c.wait(&id, None).unwrap(), 0, "{prop}: {}", text(&e));
        remove(&mut c, &id);
        let o = text(&o);
        match (prop, inward) {
            ("rshared", _) => assert!(
                vol.join("out/made").exists(),
                "rshared: the container's mount did not reach the agent's side"
            ),
            ("rslave", _) => assert_eq!(
                o, "seen\n",
                "rslave: the agent's mount did not reach the container"
            ),
            _ => assert_eq!(
                o, "unseen\n",
                "rprivate: the agent's mount reached the container"
            ),
        }
        if let Some(dir) = inward {
            umount2(&vol.join(dir), MntFlags::MNT_DETACH).unwrap();
        }
    }
    let _ = umount2(&vol.join("out"), MntFlags::MNT_DETACH);
    drop(_unmount);
    assert_no_children(&agent);
    agent.shutdown();
}
