use super::*;
use crate::host_cgroup::Hierarchy;
use husk_vmm_contract::host::ProgramReport;

fn host(hw: bool, kvm: bool, nested: bool, engine: &str, accel: Option<&str>) -> HostReport {
    HostReport {
        hardware_virtualization: hw,
        kvm_device: kvm,
        under_hypervisor: nested,
        engine: engine.into(),
        accel: accel.map(str::to_owned),
        reason: "because".into(),
        programs: vec![],
    }
}

/// The four shapes of host: bare-metal or nested VT-x/AMD-V, PVM-backed
/// /dev/kvm (this project's CI), nothing.
#[test]
fn kvm_says_what_kind_of_host_this_is() {
    let c = kvm(&host(true, true, false, "builtin", None));
    assert_eq!(c.status, Status::Ok);
    assert!(!c.detail.contains("nested"), "{}", c.detail);
    let c = kvm(&host(true, true, true, "builtin", None));
    assert!(c.detail.contains("nested"), "{}", c.detail);
    let c = kvm(&host(false, true, true, "qemu", Some("tcg")));
    assert_eq!(c.status, Status::Warn);
    assert!(
        c.detail.contains("PVM") && c.detail.contains("cannot boot a Linux guest"),
        "{}",
        c.detail
    );
    let c = kvm(&host(true, false, false, "qemu", Some("tcg")));
    assert!(c.detail.contains("does not open"), "{}", c.detail);
    assert_eq!(
        kvm(&host(false, false, false, "qemu", Some("tcg"))).status,
        Status::Warn
    );
}

#[test]
fn engine_and_verdict_follow_the_monitors_choice() {
    let b = host(true, true, false, "builtin", None);
    assert_eq!(engine(&b).status, Status::Ok);
    assert_eq!(engine(&b).detail, "builtin: because");
    let t = host(false, true, false, "qemu", Some("tcg"));
    assert_eq!(engine(&t).status, Status::Warn);
    assert_eq!(engine(&t).detail, "qemu (tcg): because");
    assert_eq!(
        engine(&host(false, true, false, "none", None)).status,
        Status::Fail
    );
    assert!(verdict(true, Some(&b), &[]).contains("builtin KVM engine"));
    assert!(verdict(true, Some(&t), &[]).contains("TCG"));
    let failed = Check {
        name: "guest kernel",
        status: Status::Fail,
        detail: String::new(),
    };
    assert_eq!(
        verdict(false, Some(&b), &[failed]),
        "husk cannot run containers on this host: fix guest kernel"
    );
}

#[test]
fn a_missing_required_program_fails_and_an_optional_one_warns() {
    let p = |version: Option<&str>, required| ProgramReport {
        name: "virtiofsd".into(),
        role: "the share".into(),
        required,
        path: version.map(|_| "/bin/virtiofsd".into()),
        version: version.map(str::to_owned),
        error: version.is_none().then(|| "cannot find virtiofsd".into()),
    };
    let ok = program(&p(Some("virtiofsd 1.14.0"), true));
    assert_eq!(
        (ok.status, ok.detail.as_str()),
        (Status::Ok, "virtiofsd 1.14.0 (/bin/virtiofsd)")
    );
    let missing = program(&p(None, true));
    assert_eq!(missing.status, Status::Fail);
    assert_eq!(missing.detail, "cannot find virtiofsd (the share)");
    assert_eq!(program(&p(None, false)).status, Status::Warn);
}

#[test]
fn kernel_options_are_checked_both_ways() {
    let good: String = KERNEL_NEEDS
        .iter()
        .filter_map(|(s, w)| w.map(|w| format!("{s}={w}\n")))
        .chain(["# CONFIG_VSOCKETS_LOOPBACK is not set\n".to_owned()])
        .collect();
    assert!(kernel_config_problems(&good).is_empty());
    let bad = good.replace("CONFIG_VIRTIO_FS=y\n", "") + "CONFIG_VSOCKETS_LOOPBACK=y\n";
    assert_eq!(
        kernel_config_problems(&bad),
        [
            "CONFIG_VIRTIO_FS should be y",
            "CONFIG_VSOCKETS_LOOPBACK should be off"
        ]
    );
    // A longer symbol with the same prefix is not the one asked for.
    let prefixed = good.replace("CONFIG_PVH=y", "CONFIG_PVH_EXTRA=y");
    assert_eq!(
        kernel_config_problems(&prefixed),
        ["CONFIG_PVH should be y"]
    );
}

#[test]
fn the_kernel_check_reads_version_and_config() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("vmlinux");
    let mut image = b"\x7fELF....".to_vec();
    image.extend_from_slice(b"junk\0Linux version 6.12.117 (root@vm) (gcc) #1 SMP\0");
    fs::write(&k, &image).unwrap();
    assert_eq!(linux_version(&image).as_deref(), Some("Linux 6.12.117"));
    let c = kernel(&k);
    assert_eq!(c.status, Status::Warn, "no config: {}", c.detail);
    assert!(c.detail.contains("Linux 6.12.117"), "{}", c.detail);
    fs::write(config_next_to(&k), "CONFIG_VSOCKETS_LOOPBACK=y\n").unwrap();
    let c = kernel(&k);
    assert_eq!(c.status, Status::Fail);
    assert!(
        c.detail.contains("CONFIG_VSOCKETS_LOOPBACK should be off"),
        "{}",
        c.detail
    );
    let c = kernel(&t.path().join("absent"));
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("HUSK_KERNEL"), "{}", c.detail);
    fs::write(&k, b"MZ not an elf").unwrap();
    assert!(kernel(&k).detail.contains("not an ELF"));
}

/// One newc entry.
fn newc(name: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    let mut e = format!(
        "070701{:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        0,
        0,
        name.len() + 1,
        0
    )
    .into_bytes();
    e.extend_from_slice(name.as_bytes());
    e.push(0);
    while e.len() % 4 != 0 {
        e.push(0);
    }
    e.extend_from_slice(data);
    while e.len() % 4 != 0 {
        e.push(0);
    }
    e
}

#[test]
fn the_initramfs_needs_an_init_file() {
    let mut with = newc("dev", 0o040755, b"");
    with.extend(newc("init", 0o100755, b"#!agent"));
    with.extend(newc("TRAILER!!!", 0, b""));
    assert_eq!(cpio_has_init(&with), Ok(true));
    let mut dir_init = newc("init", 0o040755, b"");
    dir_init.extend(newc("TRAILER!!!", 0, b""));
    assert_eq!(cpio_has_init(&dir_init), Ok(false));
    assert!(cpio_has_init(b"\x1f\x8b gzip").is_err());
    assert!(cpio_has_init(&with[..50]).is_err());
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("i.cpio");
    fs::write(&p, &with).unwrap();
    assert_eq!(initramfs(&p).status, Status::Ok);
    fs::write(&p, &dir_init).unwrap();
    let c = initramfs(&p);
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("no /init"), "{}", c.detail);
}

#[test]
fn cgroup_layouts_are_named() {
    let h = |unified| Hierarchy {
        mount: "/sys/fs/cgroup".into(),
        mount_root: "/".into(),
        unified,
        controllers: vec![],
        own: "/".into(),
    };
    let of = |hs: Vec<Hierarchy>| cgroups(Ok(Layout { hierarchies: hs })).detail;
    assert!(of(vec![h(true)]).starts_with("cgroup v2"));
    assert!(of(vec![h(false), h(true)]).starts_with("hybrid"));
    assert!(of(vec![h(false)]).starts_with("cgroup v1"));
    assert_eq!(
        cgroups(Ok(Layout {
            hierarchies: vec![]
        }))
        .status,
        Status::Warn
    );
}

#[test]
fn the_state_root_must_be_writable() {
    let t = tempfile::tempdir().unwrap();
    let c = state_root(&t.path().join("root"));
    assert_eq!(c.status, Status::Ok, "{}", c.detail);
    let file = t.path().join("file");
    fs::write(&file, b"").unwrap();
    let c = state_root(&file.join("root"));
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("--root"), "{}", c.detail);
    assert_eq!(user_namespaces(Some("0\n".into())).status, Status::Warn);
    assert_eq!(user_namespaces(Some("100\n".into())).status, Status::Ok);
}
