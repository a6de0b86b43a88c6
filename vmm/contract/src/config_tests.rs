use super::*;

fn files() -> (tempfile::TempDir, VmConfig) {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinux");
    std::fs::write(&k, "k").unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let cfg = VmConfig::new(k, dir.path().join("state"));
    (dir, cfg)
}

#[test]
fn parses_with_defaults_and_refuses_unknown_fields() {
    let c = VmConfig::from_json(r#"{"kernel":"/k","state_dir":"/s"}"#, Path::new("x")).unwrap();
    assert_eq!(c.memory_mib, 256);
    assert_eq!(c.vcpus, 1);
    assert_eq!(c.vsock.guest_cid, 3);
    assert_eq!(c.vsock.agent_port, 1024);
    assert_eq!(c.engine, EngineChoice::Auto);
    assert_eq!(c.vsock_uds_path(), Path::new("/s/vsock.sock"));
    assert_eq!(c.console_log_path(), Path::new("/s/console.log"));

    let full = r#"{"kernel":"/k","state_dir":"/s","initramfs":"/i","memory_mib":512,"vcpus":2,
        "vsock":{"uds_path":"/u.sock","guest_cid":7},"engine":"qemu",
        "shares":[{"tag":"rootfs","host_dir":"/b","cache":"never","readonly":true}],
        "binaries":{"qemu":"/q"}}"#;
    let c = VmConfig::from_json(full, Path::new("x")).unwrap();
    assert_eq!(c.shares[0].cache, CachePolicy::Never);
    assert_eq!(c.vsock.agent_port, 1024);
    assert_eq!(c.engine, EngineChoice::Qemu);

    let err = VmConfig::from_json(
        r#"{"kernel":"/k","state_dir":"/s","memroy_mib":1}"#,
        Path::new("c.json"),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(err.to_string().contains("c.json"));
    assert!(std::error::Error::source(&err)
        .unwrap()
        .to_string()
        .contains("memroy_mib"));
    assert!(VmConfig::from_json(
        r#"{"kernel":"/k","state_dir":"/s","engine":"kvm"}"#,
        Path::new("x")
    )
    .is_err());
}

#[test]
fn validation() {
    let (dir, cfg) = files();
    cfg.validate().unwrap();

    let check = |f: &dyn Fn(&mut VmConfig), want: &str| {
        let mut c = cfg.clone();
        f(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} lacks {want:?}");
        assert!(!e.contains('\n'));
    };
    check(
        &|c| c.kernel = "/nonexistent/vmlinux".into(),
        "kernel /nonexistent/vmlinux does not exist",
    );
    check(
        &|c| c.initramfs = Some("/nope.cpio".into()),
        "initramfs /nope.cpio",
    );
    check(&|c| c.memory_mib = 8, "memory_mib 8");
    check(&|c| c.vcpus = 0, "vcpus 0");
    check(&|c| c.vsock.guest_cid = 2, "guest_cid 2 is reserved");
    check(&|c| c.vsock.agent_port = 0, "agent_port 0");
    check(&|c| c.cmdline = Some("a\nb".into()), "newline");
    let rootfs = dir.path().join("rootfs");
    check(
        &|c| {
            c.shares
                .push(ShareConfig::from_str_lossy("bad/tag", &rootfs))
        },
        "share tag \"bad/tag\"",
    );
    check(
        &|c| {
            c.shares.push(ShareConfig::from_str_lossy("a", &rootfs));
            c.shares.push(ShareConfig::from_str_lossy("a", &rootfs));
        },
        "used twice",
    );
    check(
        &|c| {
            c.shares
                .push(ShareConfig::from_str_lossy("a", Path::new("/nonexistent")))
        },
        "not a directory",
    );
    check(
        &|c| c.state_dir = PathBuf::from(format!("/tmp/{}", "x".repeat(90))),
        "too long for a Unix socket",
    );

    let mut ok = cfg.clone();
    ok.shares
        .push(ShareConfig::from_str_lossy("rootfs", &rootfs));
    ok.validate().unwrap();
}

#[test]
fn container_section() {
    let (dir, mut cfg) = files();
    let rootfs = dir.path().join("rootfs");
    cfg.shares
        .push(ShareConfig::from_str_lossy("rootfs", &rootfs));
    let req = r#"{"container_id":"c1","spec":{"ociVersion":"1.0.2","root":{"path":"/run/husk/shares/rootfs"},
        "process":{"cwd":"/","args":["true"],"user":{"uid":0,"gid":0}}},"shares":["rootfs"],
        "stdio":{"stdin":false,"stdout":true,"stderr":true}}"#;
    let create: CreateContainer = serde_json::from_str(req).unwrap();
    cfg.container = Some(ContainerConfig {
        create,
        ready_fd: Some(3),
        network: None,
    });
    cfg.validate().unwrap();
    let text = serde_json::to_string(&cfg).unwrap();
    assert_eq!(VmConfig::from_json(&text, Path::new("x")).unwrap(), cfg);

    let mut bad = cfg.clone();
    bad.container.as_mut().unwrap().create.shares = vec!["other".into()];
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("\"other\", which is not configured"));
    let mut bad = cfg.clone();
    bad.container.as_mut().unwrap().create.container_id.clear();
    assert!(bad.validate().is_err());
}

#[test]
fn share_flag() {
    let s: ShareConfig = "rootfs=/a=b".parse().unwrap();
    assert_eq!(
        (s.tag.as_str(), s.host_dir.as_path()),
        ("rootfs", Path::new("/a=b"))
    );
    assert!("nodir".parse::<ShareConfig>().is_err());
    assert_eq!("qemu".parse::<EngineChoice>().unwrap(), EngineChoice::Qemu);
    assert!("kvm".parse::<EngineChoice>().is_err());
}

impl ShareConfig {
    fn from_str_lossy(tag: &str, dir: &Path) -> Self {
        format!("{tag}={}", dir.display()).parse().unwrap()
    }
}

#[test]
fn net_devices_are_validated() {
    let (_d, mut cfg) = files();
    let c = VmConfig::from_json(
        r#"{"kernel":"/k","state_dir":"/s","net":[{"tap_fd":4,"mac":"02:00:0a:fe:01:02"}]}"#,
        Path::new("x"),
    )
    .unwrap();
    assert_eq!(c.net[0].mtu, 1500);
    let good = NetConfig {
        tap_fd: 4,
        mac: "02:00:0A:fe:01:02".into(),
        mtu: 1400,
    };
    cfg.net = vec![good.clone()];
    cfg.validate().unwrap();
    for (bad, why) in [
        (
            NetConfig {
                tap_fd: 2,
                ..good.clone()
            },
            "tap_fd",
        ),
        (
            NetConfig {
                mac: "03:00:00:00:00:01".into(),
                ..good.clone()
            },
            "unicast",
        ),
        (
            NetConfig {
                mac: "00:00:00:00:00:00".into(),
                ..good.clone()
            },
            "unicast",
        ),
        (
            NetConfig {
                mac: "02:00:00:00:00".into(),
                ..good.clone()
            },
            "unicast",
        ),
        (
            NetConfig {
                mac: "02:00:00:00:00:zz".into(),
                ..good.clone()
            },
            "unicast",
        ),
        (
            NetConfig {
                mtu: 67,
                ..good.clone()
            },
            "mtu",
        ),
    ] {
        cfg.net = vec![bad];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    cfg.net = vec![good.clone(), good.clone()];
    assert!(cfg.validate().unwrap_err().to_string().contains("repeats"));
    // An fd that is not open is refused before anything starts.
    cfg.net = vec![NetConfig {
        tap_fd: 999_999,
        ..good
    }];
    let e = cfg.claim_net_fds().unwrap_err().to_string();
    assert!(e.contains("not an open fd"), "{e}");
}

#[test]
fn virtiofsd_sandbox_defaults_to_namespace_and_refuses_unknown_values() {
    let c = VmConfig::from_json(r#"{"kernel":"/k","state_dir":"/s"}"#, Path::new("x")).unwrap();
    assert_eq!(c.virtiofsd_sandbox, VirtiofsdSandbox::Namespace);
    assert_eq!(
        VmConfig::new("/k", "/s").virtiofsd_sandbox,
        VirtiofsdSandbox::Namespace
    );
    for (text, want) in [
        ("namespace", VirtiofsdSandbox::Namespace),
        ("chroot", VirtiofsdSandbox::Chroot),
        ("none", VirtiofsdSandbox::None),
    ] {
        let json = format!(r#"{{"kernel":"/k","state_dir":"/s","virtiofsd_sandbox":"{text}"}}"#);
        let c = VmConfig::from_json(&json, Path::new("x")).unwrap();
        assert_eq!(c.virtiofsd_sandbox, want);
        assert_eq!(text.parse::<VirtiofsdSandbox>().unwrap(), want);
        assert_eq!(want.as_arg(), text);
    }
    for bad in ["off", "Namespace", ""] {
        let json = format!(r#"{{"kernel":"/k","state_dir":"/s","virtiofsd_sandbox":"{bad}"}}"#);
        assert!(
            VmConfig::from_json(&json, Path::new("x")).is_err(),
            "{bad:?}"
        );
        let e = bad.parse::<VirtiofsdSandbox>().unwrap_err();
        assert!(e.contains("namespace, chroot or none"), "{e}");
    }
}

#[test]
fn vcpu_and_memory_bounds_are_the_shared_limits() {
    let (_dir, cfg) = files();
    let with = |vcpus: u32, memory_mib: u32| {
        let mut c = cfg.clone();
        c.vcpus = vcpus;
        c.memory_mib = memory_mib;
        c.validate().map_err(|e| e.to_string())
    };
    with(1, MIN_MEMORY_MIB).unwrap();
    with(MAX_VCPUS, MAX_MEMORY_MIB).unwrap();
    let e = with(MAX_VCPUS + 1, 256).unwrap_err();
    assert!(
        e.contains("vcpus 33 is outside 1..=32") && e.contains("MAX_VCPUS"),
        "{e}"
    );
    // The builtin engine's u8 would have taken these.
    assert!(with(255, 256).is_err());
    assert!(with(0, 256).is_err());
    let e = with(1, MIN_MEMORY_MIB - 1).unwrap_err();
    assert!(e.contains("memory_mib 127 is outside 128..=262144"), "{e}");
    let e = with(1, MAX_MEMORY_MIB + 1).unwrap_err();
    assert!(e.contains("MAX_MEMORY_MIB"), "{e}");
    // The 64 the runtime used to allow is refused here too.
    assert!(with(64, 256).is_err());
}

/// The guest kernel must run as many vCPUs as the monitor accepts: a
/// kernel with fewer `NR_CPUS` silently leaves the rest offline.
#[test]
fn guest_kernel_nr_cpus_covers_max_vcpus() {
    let nr_cpus = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("CONFIG_NR_CPUS="))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    // What the build asks for is always here.
    let fragments = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-kernel/fragments");
    let asked: Vec<u32> = std::fs::read_dir(&fragments)
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| nr_cpus(&t))
        .collect();
    assert_eq!(asked.len(), 1, "one CONFIG_NR_CPUS in {fragments:?}");
    assert!(asked[0] >= MAX_VCPUS, "fragments ask NR_CPUS={}", asked[0]);
    // What the build made, where one was built (guest-kernel/build.sh).
    let cache = std::env::var_os("HUSK_CACHE_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/husk"), PathBuf::from)
        .join("kernel");
    let built: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("vmlinux").is_file() && d.join("config").is_file())
        .map(|d| d.join("config"))
        .collect();
    if built.is_empty() {
        husk_test_support::skip(format!("no built guest kernel under {}", cache.display()));
        return;
    }
    for config in built {
        let text = std::fs::read_to_string(&config).unwrap();
        let n = nr_cpus(&text).unwrap_or_else(|| panic!("no CONFIG_NR_CPUS in {config:?}"));
        assert!(
            n >= MAX_VCPUS,
            "{}: CONFIG_NR_CPUS={n} < MAX_VCPUS={MAX_VCPUS}",
            config.display()
        );
    }
}
