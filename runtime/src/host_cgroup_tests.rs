//! Path resolution (runc's rules, systemd's slices, what is refused),
//! layouts (v1, v2, hybrid, a bind-mounted subtree), the limits derived
//! from a VM's size, and, as root, a cgroup made, joined and removed on
//! this host.

use super::*;
use std::os::unix::process::ExitStatusExt;

fn parts(p: &CgroupPath) -> Vec<&str> {
    p.parts.iter().map(String::as_str).collect()
}

#[test]
fn cgroupfs_paths_absolute_relative_and_default() {
    let p = CgroupPath::resolve(Some("/kubepods/burstable/pod1/abc"), "abc", false, None).unwrap();
    assert!(!p.relative);
    assert_eq!(parts(&p), ["kubepods", "burstable", "pod1", "abc"]);
    assert_eq!(p.display(), "/kubepods/burstable/pod1/abc");

    // Empty and "." components go; the path stays relative.
    let p = CgroupPath::resolve(Some("a//./b/"), "c", false, None).unwrap();
    assert!(p.relative);
    assert_eq!(parts(&p), ["a", "b"]);
    assert_eq!(p.display(), "a/b");

    for unset in [None, Some("")] {
        let p = CgroupPath::resolve(unset, "c1", false, None).unwrap();
        assert_eq!(p.display(), "/husk/c1");
        assert!(p.shown.contains("unset"), "{}", p.shown);
        let p = CgroupPath::resolve(unset, "c1", true, None).unwrap();
        assert_eq!(p.display(), "/system.slice/husk-c1.scope");
        // The operator's parent (HUSK_CGROUP_PARENT); not for systemd.
        let p = CgroupPath::resolve(unset, "c1", false, Some("/machine/vms/")).unwrap();
        assert_eq!(p.display(), "/machine/vms/c1");
        let p = CgroupPath::resolve(unset, "c1", true, Some("/machine")).unwrap();
        assert_eq!(p.display(), "/system.slice/husk-c1.scope");
        let e = CgroupPath::resolve(unset, "c1", false, Some("/a/../b")).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "linux.cgroupsPath (unset, so \"/a/../b/c1\", under \
                 HUSK_CGROUP_PARENT=\"/a/../b\"): has a \"..\" component"
            ),
            "{e}"
        );
    }
    // A set path wins over the operator's parent.
    let p = CgroupPath::resolve(Some("/x"), "c1", false, Some("/machine")).unwrap();
    assert_eq!(p.display(), "/x");
}

#[test]
fn climbing_roots_and_control_characters_are_refused_naming_the_field() {
    for (bad, why) in [
        ("/a/../b", "\"..\""),
        ("../sibling", "\"..\""),
        ("a/..", "\"..\""),
        ("/..", "\"..\""),
        ("/", "root cgroup"),
        ("//./", "root cgroup"),
        (".", "own cgroup"),
        ("./", "own cgroup"),
        ("/a\nb", "control character"),
        ("/a\0", "control character"),
    ] {
        let e = CgroupPath::resolve(Some(bad), "c", false, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("linux.cgroupsPath {bad:?}: ")),
            "{bad:?}: {msg}"
        );
        assert!(msg.contains(why), "{bad:?}: {msg}");
    }
}

#[test]
fn systemd_paths_expand_like_runc() {
    let p = CgroupPath::resolve(
        Some("kubepods-burstable-pod1234.slice:cri-containerd:abc"),
        "abc",
        true,
        None,
    )
    .unwrap();
    assert_eq!(
        p.display(),
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/\
         cri-containerd-abc.scope"
    );
    assert!(!p.relative);
    // An empty slice is system.slice; an empty prefix leaves none.
    assert_eq!(
        CgroupPath::parse(":husk:x", true).unwrap().display(),
        "/system.slice/husk-x.scope"
    );
    assert_eq!(
        CgroupPath::parse("user.slice::x", true).unwrap().display(),
        "/user.slice/x.scope"
    );
    // The root slice; a name that is a slice itself.
    assert_eq!(
        CgroupPath::parse("-.slice:p:n", true).unwrap().display(),
        "/p-n.scope"
    );
    assert_eq!(
        CgroupPath::parse("a-b.slice:p:c.slice", true)
            .unwrap()
            .display(),
        "/a.slice/a-b.slice/c.slice"
    );
    for (bad, why) in [
        ("a.slice:b", "slice:prefix:name"),
        ("a.slice:b:c:d", "slice:prefix:name"),
        ("/abs/path", "slice:prefix:name"),
        ("nosuffix:p:n", "invalid slice name"),
        ("a--b.slice:p:n", "invalid slice name"),
        ("-a.slice:p:n", "invalid slice name"),
        ("a-.slice:p:n", "invalid slice name"),
        (".slice:p:n", "invalid slice name"),
        ("a/b.slice:p:n", "invalid slice name"),
        ("a.slice:p:", "name"),
        ("a.slice:p:x/y", "'/'"),
        ("a.slice:p:..", "not a unit name"),
    ] {
        let e = CgroupPath::parse(bad, true).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("linux.cgroupsPath {bad:?}: ")),
            "{bad}: {e}"
        );
        assert!(e.contains(why), "{bad}: {e}");
    }
    // Without --systemd-cgroup the same string is a relative cgroupfs path.
    let p = CgroupPath::parse("a.slice:p:n", false).unwrap();
    assert!(p.relative);
    assert_eq!(parts(&p), ["a.slice:p:n"]);
}

#[test]
fn the_shim_tells_systemd_paths_by_their_shape() {
    assert!(looks_like_systemd(
        "kubepods-besteffort-pod1.slice:cri-containerd:abc"
    ));
    assert!(looks_like_systemd(":husk:x"));
    assert!(!looks_like_systemd("/kubepods/besteffort/pod1/abc"));
    assert!(!looks_like_systemd("/a:b:c"));
    assert!(!looks_like_systemd("a:b"));
}

/// This host's layout: v1 controllers, `name=systemd`, an empty cgroup2
/// at `unified`, and a memory cgroup that is not the root.
const HYBRID_MOUNTINFO: &str = "\
24 1 0:22 / / rw - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/a21f
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

fn hybrid() -> Layout {
    Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP, |p| {
        assert_eq!(p, Path::new("/sys/fs/cgroup/unified/cgroup.controllers"));
        Some("hugetlb\n".into())
    })
}

fn leaves(p: &Placement) -> Vec<String> {
    p.dirs
        .iter()
        .map(|d| d.leaf.display().to_string())
        .collect()
}

#[test]
fn hybrid_layout_places_the_cgroup_on_every_hierarchy() {
    let l = hybrid();
    assert!(!l.pure_v2());
    let names: Vec<(String, bool)> = l
        .hierarchies
        .iter()
        .map(|h| (h.controllers.join(","), h.unified))
        .collect();
    assert_eq!(
        names,
        [
            ("name=systemd".to_owned(), false),
            ("pids".to_owned(), false),
            ("memory".to_owned(), false),
            ("cpuset".to_owned(), false),
            ("cpuacct".to_owned(), false),
            ("cpu".to_owned(), false),
            ("hugetlb".to_owned(), true),
        ]
    );
    let abs = l
        .place(&CgroupPath::resolve(None, "c1", false, None).unwrap())
        .unwrap();
    assert_eq!(
        leaves(&abs),
        [
            "/sys/fs/cgroup/systemd/husk/c1",
            "/sys/fs/cgroup/pids/husk/c1",
            "/sys/fs/cgroup/memory/husk/c1",
            "/sys/fs/cgroup/cpuset/husk/c1",
            "/sys/fs/cgroup/cpuacct/husk/c1",
            "/sys/fs/cgroup/cpu/husk/c1",
            "/sys/fs/cgroup/unified/husk/c1",
        ]
    );
    // Relative: below this process's cgroup in each hierarchy (the memory
    // one is not the root here).
    let rel = l.place(&CgroupPath::parse("x/c1", false).unwrap()).unwrap();
    assert_eq!(
        leaves(&rel)[2],
        "/sys/fs/cgroup/memory/process_api/a21f/x/c1"
    );
    assert_eq!(leaves(&rel)[1], "/sys/fs/cgroup/pids/x/c1");
    assert_eq!(leaves(&rel)[6], "/sys/fs/cgroup/unified/x/c1");
}

#[test]
fn v1_layout_with_comounted_controllers() {
    let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 25 0:31 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
36 25 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
    let cgroup = "\
5:pids:/user.slice/x
4:net_cls,net_prio:/
3:memory:/user.slice
2:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/session-1.scope
";
    let l = Layout::parse(mountinfo, cgroup, |_| panic!("no v2 here"));
    assert_eq!(l.hierarchies.len(), 5);
    assert!(!l.pure_v2());
    let rel = l.place(&CgroupPath::parse("c", false).unwrap()).unwrap();
    assert_eq!(
        leaves(&rel),
        [
            "/sys/fs/cgroup/pids/user.slice/x/c",
            "/sys/fs/cgroup/net_cls,net_prio/c",
            "/sys/fs/cgroup/memory/user.slice/c",
            "/sys/fs/cgroup/cpu,cpuacct/user.slice/c",
            "/sys/fs/cgroup/systemd/user.slice/session-1.scope/c",
        ]
    );
}

#[test]
fn pure_v2_layout_relative_paths_sit_next_to_the_runtime_cgroup() {
    let mountinfo = "26 1 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let l = Layout::parse(mountinfo, "0::/system.slice/containerd.service\n", |_| {
        Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
    });
    assert!(l.pure_v2());
    let rel = l.place(&CgroupPath::parse("c", false).unwrap()).unwrap();
    assert_eq!(leaves(&rel), ["/sys/fs/cgroup/system.slice/c"]);
    let abs = l
        .place(&CgroupPath::parse("/kubepods/pod1/c", false).unwrap())
        .unwrap();
    assert_eq!(leaves(&abs), ["/sys/fs/cgroup/kubepods/pod1/c"]);
    // The runtime in the root cgroup (the nested tier's L1).
    let l = Layout::parse(mountinfo, "0::/\n", |_| Some("cpu memory pids".into()));
    let rel = l.place(&CgroupPath::parse("r/c", false).unwrap()).unwrap();
    assert_eq!(leaves(&rel), ["/sys/fs/cgroup/r/c"]);
}

#[test]
fn a_bind_mounted_subtree_and_an_invisible_own_cgroup() {
    // A container's view: the mount shows /docker/abc and below.
    let mountinfo = "26 1 0:23 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let l = Layout::parse(mountinfo, "0::/docker/abc/init\n", |_| {
        Some("cpu memory pids".into())
    });
    let rel = l.place(&CgroupPath::parse("c", false).unwrap()).unwrap();
    assert_eq!(leaves(&rel), ["/sys/fs/cgroup/c"]);
    let l = Layout::parse(mountinfo, "0::/elsewhere/x\n", |_| {
        Some("cpu memory pids".into())
    });
    let e = l
        .place(&CgroupPath::parse("c", false).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("linux.cgroupsPath \"c\": "), "{e}");
    assert!(e.contains("does not show"), "{e}");
}

#[test]
fn a_missing_controller_is_refused_naming_the_field() {
    let mountinfo = "26 1 0:23 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    let l = Layout::parse(mountinfo, "0::/\n", |_| Some("cpu memory".into()));
    let e = l
        .place(&CgroupPath::resolve(None, "c", false, None).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("linux.cgroupsPath (unset"), "{e}");
    assert!(e.contains("no pids controller"), "{e}");
    // Hybrid: memory is on v1 only; without that mount it is missing,
    // whatever the (empty) v2 hierarchy has.
    let mountinfo: String = HYBRID_MOUNTINFO
        .lines()
        .filter(|l| !l.contains("rw,memory"))
        .map(|l| format!("{l}\n"))
        .collect();
    let l = Layout::parse(&mountinfo, HYBRID_CGROUP, |_| Some("hugetlb".into()));
    let e = l
        .place(&CgroupPath::parse("/x", false).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no memory controller"), "{e}");
    let e = Layout::parse("", "", |_| None)
        .place(&CgroupPath::parse("/x", false).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no cgroup hierarchy"), "{e}");
}

fn size(memory_mib: u32, vcpus: u32) -> VmSize {
    let mut s = crate::sizing::size_vm(&Spec::default(), |_| None).unwrap();
    s.memory_mib = memory_mib;
    s.vcpus = vcpus;
    s
}

#[test]
fn limits_derive_from_the_vm_size_plus_the_host_overhead() {
    let spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "linux": {"resources": {
            "memory": {"limit": 268_435_456i64},
            "cpu": {"quota": 150_000, "period": 100_000, "shares": 512}
        }}
    }))
    .unwrap();
    // The guest for a 256 MiB limit and a 1.5-CPU quota: 320 MiB, 2 vCPUs.
    let vm = crate::sizing::size_vm(&spec, |k| match k {
        "HUSK_MAX_VCPUS" => Some("8".into()),
        "HUSK_MAX_MEMORY_MIB" => Some("4096".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!((vm.memory_mib, vm.vcpus), (320, 2));
    let l = HostLimits::for_spec(&vm, &spec);
    assert_eq!(l.memory_bytes, (320 + HOST_MEMORY_OVERHEAD_MIB) << 20);
    assert_eq!(
        l.cpu_max,
        Some(((2 + HOST_CPU_OVERHEAD) * 100_000, 100_000))
    );
    assert_eq!(l.cpu_shares, Some(512));
    assert_eq!(l.pids_max, HOST_PIDS_BASE + 2 * HOST_PIDS_PER_VCPU);

    // No resources: the default guest, no CPU limit (as runc), pids still.
    let l = HostLimits::derive(&size(256, 1), None);
    assert_eq!(
        l,
        HostLimits {
            memory_bytes: (256 + HOST_MEMORY_OVERHEAD_MIB) << 20,
            cpu_max: None,
            cpu_shares: None,
            pids_max: HOST_PIDS_BASE + HOST_PIDS_PER_VCPU,
        }
    );
    // A period outside the kernel's bounds is brought within them.
    let res: LinuxResources =
        serde_json::from_value(serde_json::json!({"cpu": {"quota": 10, "period": 10}})).unwrap();
    let l = HostLimits::derive(&size(256, 1), Some(&res));
    assert_eq!(l.cpu_max, Some((2 * 1_000, 1_000)));
}

#[test]
fn cpu_shares_convert_to_weight_as_runc_does() {
    assert_eq!(cpu_weight(2), 1);
    assert_eq!(cpu_weight(262_144), 10_000);
    assert_eq!(cpu_weight(1024), 39);
    assert_eq!(cpu_weight(0), 1);
    assert_eq!(cpu_weight(u64::MAX), 10_000);
}

#[test]
fn v2_controllers_are_enabled_once_in_a_parent() {
    let t = tempfile::tempdir().unwrap();
    fs::write(
        t.path().join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    fs::write(t.path().join("cgroup.subtree_control"), "cpu\n").unwrap();
    enable_controllers(t.path(), &["memory", "cpu", "pids"]).unwrap();
    assert_eq!(
        fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
        "+memory +pids"
    );
    // Nothing offered that is not enabled yet: nothing written.
    fs::write(t.path().join("cgroup.subtree_control"), "cpu memory pids").unwrap();
    enable_controllers(t.path(), &["memory", "cpu", "pids", "rdma"]).unwrap();
    assert_eq!(
        fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
        "cpu memory pids"
    );
}

/// This host's cgroup layout, or why a test cannot make cgroups on it: it
/// needs root and a host with the controllers husk limits.
fn host_cgroups() -> Result<Layout, String> {
    husk_test_support::root().map_err(|e| format!("making cgroups on the host: {e}"))?;
    let l = Layout::probe().map_err(|e| format!("cannot read the cgroup layout: {e}"))?;
    l.place(&CgroupPath::parse("/x", false).unwrap())
        .map_err(|e| e.to_string())?;
    Ok(l)
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()))
        .trim()
        .to_owned()
}

/// On this host (as root): the cgroup is made on every hierarchy with the
/// limits, a process started with the joiner is in it from the start (and
/// so is its child), a second claim of it is refused, and `remove` kills
/// what is in it and takes away the cgroup and the parents it made.
#[test]
fn made_joined_and_removed_on_this_host() {
    let layout = husk_test_support::require!(host_cgroups());
    let parent = format!("husk-unit-{}", std::process::id());
    let _cleanup = Cleanup(parent.clone());
    let path = CgroupPath::parse(&format!("/{parent}/deep/c"), false).unwrap();
    let limits = HostLimits {
        memory_bytes: 300 << 20,
        cpu_max: Some((150_000, 100_000)),
        cpu_shares: Some(512),
        pids_max: 77,
    };
    let mut recorded = None;
    let (st, joiner) = setup(&layout, &path, &limits, |st| {
        recorded = Some(st.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(recorded.as_ref(), Some(&st));
    assert_eq!(st.dirs.len(), layout.hierarchies.len());
    assert_eq!(st.parents.len(), 2 * layout.hierarchies.len(), "{st:?}");
    for (h, d) in layout.hierarchies.iter().zip(&st.dirs) {
        assert!(d.is_dir(), "{}", d.display());
        let has = |c: &str| h.controllers.iter().any(|x| x == c);
        if has("memory") {
            let f = if h.unified {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            assert_eq!(read(d, f), (300u64 << 20).to_string());
        }
        if has("pids") {
            assert_eq!(read(d, "pids.max"), "77");
        }
        if has("cpu") {
            if h.unified {
                assert_eq!(read(d, "cpu.max"), "150000 100000");
                assert_eq!(read(d, "cpu.weight"), cpu_weight(512).to_string());
            } else {
                assert_eq!(read(d, "cpu.cfs_quota_us"), "150000");
                assert_eq!(read(d, "cpu.shares"), "512");
            }
        }
        if has("cpuset") && !h.unified {
            assert!(!read(d, "cpuset.cpus").is_empty());
        }
    }
    // The same path again: refused, and the first one is left alone.
    let again = setup(&layout, &path, &limits, |_| Ok(())).unwrap_err();
    assert!(again.to_string().contains("exists already"), "{again}");
    assert!(st.dirs.iter().all(|d| d.is_dir()));

    let fds = joiner.fds();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "sleep 600 & exec sleep 600"]);
    // SAFETY: the closure only calls Joiner::join (write(2)).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || Joiner::join(&fds));
    }
    let mut child = cmd.spawn().unwrap();
    drop(joiner);
    let pid = child.id() as i32;
    let cgroups = read(Path::new(&format!("/proc/{pid}")), "cgroup");
    for line in cgroups.lines() {
        assert!(
            line.ends_with(&format!("/{parent}/deep/c")),
            "{line} (of {cgroups})"
        );
    }
    // Its background child too, once it has been forked.
    husk_test_support::wait_until(
        Duration::from_secs(10),
        "the background child in the cgroup",
        || procs_below(&st.dirs[..1]).len() >= 2,
    );
    assert_eq!(procs_below(&st.dirs[..1]).len(), 2);

    remove(&st);
    assert!(child.wait().unwrap().signal().is_some());
    for d in st.dirs.iter().chain(&st.parents) {
        assert!(!d.exists(), "{} is left", d.display());
    }
}

/// A cgroup that cannot be made (a parent named like one of its parent's
/// control files) fails naming the field, and leaves no directory behind.
#[test]
fn an_uncreatable_cgroup_leaves_nothing() {
    let layout = husk_test_support::require!(host_cgroups());
    let parent = format!("husk-unit-bad-{}", std::process::id());
    let _cleanup = Cleanup(parent.clone());
    let path = CgroupPath::parse(&format!("/{parent}/cgroup.procs/c"), false).unwrap();
    let limits = HostLimits::derive(&size(256, 1), None);
    let mut recorded = None;
    let e = setup(&layout, &path, &limits, |st| {
        recorded = Some(st.clone());
        Ok(())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "linux.cgroupsPath \"/{parent}/cgroup.procs/c\": cannot create "
        )),
        "{e}"
    );
    let st = recorded.expect("recorded before anything was made");
    for d in &st.dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    for h in &layout.hierarchies {
        assert!(
            !h.mount.join(&parent).exists(),
            "{parent} is left in {}",
            h.mount.display()
        );
    }
}

/// Removes what a failed test left under `/NAME` on every hierarchy.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        fn rm(d: &Path) {
            for s in subdirs(d) {
                rm(&s);
            }
            let _ = fs::remove_dir(d);
        }
        if let Ok(l) = Layout::probe() {
            for h in &l.hierarchies {
                rm(&h.mount.join(&self.0));
            }
        }
    }
}

/// `remove` leaves alone a recorded directory that is no container's
/// cgroup: a hierarchy's root (no cgroup above it), or one the runtime
/// itself is in (here or below).
#[test]
fn remove_never_kills_in_a_root_or_its_own_cgroup() {
    let t = tempfile::tempdir().unwrap();
    let top = t.path().join("top");
    let leaf = top.join("leaf");
    fs::create_dir_all(leaf.join("sub")).unwrap();
    fs::write(top.join("cgroup.procs"), "1\n").unwrap();
    fs::write(leaf.join("cgroup.procs"), "10\n11\n").unwrap();
    fs::write(leaf.join("sub/cgroup.procs"), "12\n").unwrap();
    assert_eq!(procs_below(std::slice::from_ref(&leaf)), [10, 11, 12]);
    assert!(removable(&leaf, 99));
    assert!(!removable(&leaf, 12), "the runtime's own cgroup");
    assert!(!removable(&top, 99), "a hierarchy's root");
}
