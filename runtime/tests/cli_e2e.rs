//! End-to-end tests of the `husk` CLI with a real guest (QEMU TCG on hosts
//! without hardware virtualization, the builtin engine elsewhere). Each
//! skips with its reason when the host lacks root, the built guest, QEMU
//! or the daemons.

mod common;
use husk_test_support::require;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Env;

fn wait_status(env: &Env, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = env.status_of(id);
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "{id} stayed {s}, wanted {want}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lifecycle_create_start_exec_ps_kill_delete() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sh", "-c", "echo started; exec sleep 600"]);
    let pid_file = env.dir.path().join("pid");
    let out_file = env.dir.path().join("out");
    let err_file = env.dir.path().join("err");
    // create hands the container its own stdio: here, files.
    let status = env
        .husk()
        .args([
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdout(fs::File::create(&out_file).unwrap())
        .stderr(fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "create: {}",
        fs::read_to_string(&err_file).unwrap()
    );
    let pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let state: serde_json::Value = serde_json::from_str(&env.ok(&["state", "c1"])).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["pid"], pid);
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], b.to_str().unwrap());
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "monitor not alive"
    );

    // Starting twice: the second is refused.
    env.ok(&["start", "c1"]);
    assert_eq!(env.status_of("c1"), "running");
    let again = env.run(&["start", "c1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("running"));

    let list = env.ok(&["list", "--format", "json"]);
    assert!(list.contains("\"c1\""), "{list}");
    let ex = env.run(&["exec", "c1", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(ex.status.code(), Some(3));
    assert_eq!(ex.stdout, b"out\n");
    assert_eq!(ex.stderr, b"err\n");
    let missing = env.run(&["exec", "c1", "/no/such/binary"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("No such file"),
        "{:?}",
        missing
    );

    let ps: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", "c1"])).unwrap();
    assert!(!ps.is_empty());
    let running_delete = env.run(&["delete", "c1"]);
    assert!(
        !running_delete.status.success(),
        "delete of a running container must need --force"
    );

    env.ok(&["kill", "c1", "KILL"]);
    wait_status(&env, "c1", "stopped");
    assert_eq!(fs::read_to_string(&out_file).unwrap(), "started\n");
    env.ok(&["delete", "c1"]);
    let gone = env.run(&["state", "c1"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("does not exist"));
    env.assert_clean();
}

#[test]
fn run_in_foreground_passes_stdio_and_exit_codes() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle(
        "b",
        &[],
        &["sh", "-c", "tr a-z A-Z; echo to-err >&2; exit 7"],
    );
    let mut child = env
        .husk()
        .args(["run", "--bundle", b.to_str().unwrap(), "r1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello husk\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"HELLO HUSK\n");
    assert_eq!(out.stderr, b"to-err\n");
    // run without --keep deletes the container.
    env.assert_clean();

    // The container's init killed from outside: run exits 128+9.
    let b2 = env.bundle("b2", &[], &["sleep", "600"]);
    let mut run = env
        .husk()
        .args(["run", "--bundle", b2.to_str().unwrap(), "r2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    env.wait_running("r2", Duration::from_secs(60));
    env.ok(&["kill", "r2", "KILL"]);
    assert_eq!(run.wait().unwrap().code(), Some(137));
    env.assert_clean();
}

/// The VM is as big as the spec asks (`husk.vcpus` and `husk.memory_mib`,
/// enabled by default), and the container's memory limit is its cgroup's.
#[test]
fn the_guest_has_the_vcpus_and_memory_the_spec_asks_for() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "nproc; grep MemTotal /proc/meminfo; \
             cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
        ],
    );
    env.edit_config(&b, |c| {
        c["annotations"] = serde_json::json!({"husk.vcpus": "2", "husk.memory_mib": "384"});
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 100u64 << 20});
    });
    let out = env.ok(&["run", "--bundle", b.to_str().unwrap(), "v1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "output: {out}");
    assert_eq!(lines[0], "2", "vCPUs the guest sees");
    let kib: u64 = lines[1]
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal line: {}", lines[1]));
    assert!(
        (256 * 1024..384 * 1024).contains(&kib),
        "a 384 MiB guest has {kib} KiB of MemTotal"
    );
    assert_eq!(lines[2], (100u64 << 20).to_string(), "memory.max");
    env.assert_clean();
}

/// The VM is stopped as soon as the agent answers Shutdown (not after the
/// guest's reboot): what the container wrote just before it exited must be
/// on the host when `husk run` returns, in the rootfs and in a bind mount.
#[test]
fn writes_made_just_before_exit_are_on_the_host_when_run_returns() {
    require!(common::guest_ready());
    writes_before_exit_are_on_the_host(Env::new());
}

/// The same with the guest's writeback cache and `cache=always` (the
/// fastest virtio-fs settings, not the default): the writes sit in the
/// guest's page cache until the agent's Shutdown syncs them.
#[test]
fn writeback_cache_writes_made_just_before_exit_are_on_the_host() {
    require!(common::guest_ready());
    writes_before_exit_are_on_the_host(
        Env::new()
            .with_var("HUSK_VIRTIOFS_CACHE", "always")
            .with_var("HUSK_VIRTIOFS_WRITEBACK", "true"),
    );
}

/// What the host changes in a bind-mounted directory is seen by the next
/// access in the guest: a file replaced by a rename (how kubelet updates a
/// ConfigMap volume) and a file appended to. The default virtio-fs policy
/// caches nothing in the guest; `metadata` or `always` would keep the old
/// entry for a day.
#[test]
fn host_changes_to_a_bind_mount_are_seen_at_once() {
    require!(common::guest_ready());
    let env = Env::new();
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "one\n").unwrap();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    env.edit_config(&b, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]}));
    });
    env.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), "coh"]);
    let cat = || env.ok(&["exec", "coh", "cat", "/vol/f"]);
    assert_eq!(cat(), "one\n");
    std::fs::write(vol.join("f.new"), "two\n").unwrap();
    std::fs::rename(vol.join("f.new"), vol.join("f")).unwrap();
    assert_eq!(cat(), "two\n", "a file replaced by a rename on the host");
    std::fs::OpenOptions::new()
        .append(true)
        .open(vol.join("f"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"three\n"))
        .unwrap();
    assert_eq!(cat(), "two\nthree\n", "a file appended to on the host");
    env.ok(&["delete", "-f", "coh"]);
    env.assert_clean();
}

fn writes_before_exit_are_on_the_host(env: Env) {
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/vol/data bs=64k count=64 2>/dev/null; \
             cp /vol/data /last; md5sum /vol/data | cut -d' ' -f1",
        ],
    );
    env.edit_config(&b, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/vol", "type": "bind", "source": vol, "options": ["rbind", "rw"]}));
    });
    let out = env.ok(&["run", "--bundle", b.to_str().unwrap(), "flush1"]);
    let want = out.trim();
    let md5 = |p: &std::path::Path| -> String {
        let o = std::process::Command::new("md5sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(std::fs::metadata(vol.join("data")).unwrap().len(), 4 << 20);
    assert_eq!(md5(&vol.join("data")), want, "the bind mount's file");
    assert_eq!(md5(&b.join("rootfs/last")), want, "the rootfs's file");
    env.assert_clean();
}

/// The guest is one NUMA node: `linux.memoryPolicy` with the host's node
/// numbers becomes the container's policy on node 0 (numa_maps shows it),
/// and `cpu.mems` lands on node 0 too.
#[test]
fn numa_memory_policy_and_mems_apply_on_the_guests_node() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "grep -c ' interleave:0 ' /proc/self/numa_maps; \
             cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/cpuset.mems",
        ],
    );
    env.edit_config(&b, |c| {
        c["linux"]["memoryPolicy"] = serde_json::json!({"mode": "MPOL_INTERLEAVE", "nodes": "0"});
        c["linux"]["resources"]["cpu"] = serde_json::json!({"mems": "0"});
    });
    let out = env.ok(&["run", "--bundle", b.to_str().unwrap(), "numa1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "output: {out}");
    let n: u32 = lines[0].parse().unwrap_or(0);
    assert!(n > 0, "no mapping under the interleave policy: {out}");
    assert_eq!(lines[1], "0", "cpuset.mems");
    env.assert_clean();
}

/// `pause` parks the VM's vCPUs: nothing in the container runs (its ticks
/// into a bind mount stop) until `resume`; on both engines.
#[test]
fn pause_parks_the_vm_until_resume() {
    require!(common::guest_ready());
    let env = Env::new();
    let data = env.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let ticks = data.join("ticks");
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "while :; do echo tick >> /data/ticks; sleep 0.1; done",
        ],
    );
    env.edit_config(&b, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]}));
    });
    env.ok(&["create", "--bundle", b.to_str().unwrap(), "p1"]);
    env.ok(&["start", "p1"]);
    let count = || {
        fs::read_to_string(&ticks)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_more_than = |n: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count() <= n {
            assert!(Instant::now() < deadline, "{what}: still {} ticks", count());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_more_than(2, "the container never ticked");

    env.ok(&["pause", "p1"]);
    assert_eq!(env.status_of("p1"), "paused");
    // A write already on its way to the host may still land; then nothing.
    // Not synchronisation: the first sleep lets such a write land, the
    // second is a while in which a running container would tick.
    std::thread::sleep(Duration::from_millis(500));
    let paused_at = count();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(), paused_at, "the container ran while paused");
    let out = env.run(&["exec", "p1", "true"]);
    assert!(!out.status.success(), "exec into a paused container");

    env.ok(&["resume", "p1"]);
    assert_eq!(env.status_of("p1"), "running");
    wait_more_than(paused_at, "the container did not run again after resume");

    // A paused container can be deleted with --force.
    env.ok(&["pause", "p1"]);
    env.ok(&["delete", "--force", "p1"]);
    env.assert_clean();
}

/// `update` writes new limits into the container's cgroup in the guest
/// (seen from an exec) and records them in the state; growing past the
/// VM (256 MiB, 1 vCPU) is refused naming the field, the value and the
/// VM's size, and changes nothing, whether husk sees it (the VM's RAM) or
/// the agent does (the guest's MemTotal).
#[test]
fn update_changes_the_guest_cgroup_and_cannot_grow_the_vm() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    // A cgroup namespace: /sys/fs/cgroup is the container's own cgroup.
    env.edit_config(&b, |c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "cgroup"}));
    });
    env.ok(&["create", "--bundle", b.to_str().unwrap(), "u1"]);
    env.ok(&["start", "u1"]);
    let limits = || {
        env.ok(&[
            "exec",
            "u1",
            "cat",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/pids.max",
        ])
    };
    let recorded = || {
        let p = env.root().join("u1/state.json");
        let v: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
        v["resources"].clone()
    };
    assert_eq!(limits(), "max\nmax\n");

    env.ok(&["update", "--memory", "64M", "--pids-limit", "20", "u1"]);
    assert_eq!(limits(), "67108864\n20\n");
    let after = recorded();
    assert_eq!(after["memory"]["limit"], 64 << 20, "{after}");
    assert_eq!(after["pids"]["limit"], 20, "{after}");

    for (flags, want) in [
        (
            &["--memory", "1G"][..],
            "linux.resources.memory.limit \"1073741824\": asks for 1024 MiB, and the VM has \
             256 MiB of RAM: the VM was sized at create and cannot grow",
        ),
        (
            &["--cpuset-cpus", "0-3"][..],
            "linux.resources.cpu.cpus \"0-3\": names CPU 3, and the VM has vCPUs 0-0: the VM \
             was sized at create and cannot grow",
        ),
        // Below the VM's RAM, above what its guest has: the agent says so.
        (
            &["--memory", "255M"][..],
            "linux.resources.memory.limit 267386880: asks for 255 MiB, more than the guest's \
             memory",
        ),
    ] {
        let mut args = vec!["update"];
        args.extend_from_slice(flags);
        args.push("u1");
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(err.contains(want), "{flags:?}: {err}");
    }
    assert_eq!(
        limits(),
        "67108864\n20\n",
        "a refused update changed the cgroup"
    );
    assert_eq!(recorded(), after, "a refused update changed the state");

    env.ok(&["update", "--pids-limit", "-1", "u1"]);
    assert_eq!(limits(), "67108864\nmax\n");
    let out = env.run(&["update", "--memory", "64M", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container \"nope\" does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.ok(&["delete", "--force", "u1"]);
    env.assert_clean();
}

/// The qemu engine runs on KVM exactly where KVM can run a guest (hardware
/// virtualization: the nested tier) and under TCG elsewhere (a PVM-backed
/// /dev/kvm, this machine kind), and the container runs either way.
#[test]
fn the_qemu_engine_uses_kvm_exactly_where_it_can() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    let status = env
        .husk()
        .env("HUSK_ENGINE", "qemu")
        .args(["create", "--bundle", b.to_str().unwrap(), "q1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "create on the qemu engine");
    let children = fs::read_to_string(env.root().join("q1/children")).unwrap();
    let qemu: i32 = children
        .lines()
        .find(|l| l.ends_with(" qemu"))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no qemu among the monitor's children: {children}"));
    let cmdline = fs::read(format!("/proc/{qemu}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let accel = args
        .windows(2)
        .find(|w| w[0] == b"-accel")
        .map(|w| String::from_utf8_lossy(w[1]).into_owned());
    let hw = fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    assert_eq!(
        accel.as_deref(),
        Some(if hw { "kvm" } else { "tcg,tb-size=128" }),
        "hardware virtualization: {hw}"
    );
    env.ok(&["start", "q1"]);
    assert_eq!(env.status_of("q1"), "running");
    env.ok(&["delete", "--force", "q1"]);
    env.assert_clean();
}

#[test]
fn bad_bundles_fail_cleanly() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["true"]);
    fs::write(b.join("config.json"), b"{ not json").unwrap();
    let out = env.run(&["create", "--bundle", b.to_str().unwrap(), "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
    env.assert_clean();

    let missing = env.run(&["create", "--bundle", "/nonexistent/bundle", "bad2"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    let b3 = env.bundle("b3", &[], &["true"]);
    let bad_id = env.run(&["create", "--bundle", b3.to_str().unwrap(), "../evil"]);
    assert_eq!(bad_id.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid container id"));

    // A spec the guest refuses: the VM comes up, creation fails in the agent,
    // and everything is torn down again.
    let b4 = env.bundle("b4", &[], &["true"]);
    env.edit_config(&b4, |c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/x", "type": "nosuchfs", "source": "none"}))
    });
    let out = env.run(&["create", "--bundle", b4.to_str().unwrap(), "bad4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/x"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.assert_clean();
}

/// A config.json with a field of the wrong type fails `create` before any
/// VM is booted (so this runs without one): exit 1, the field's path in
/// the message (oci-spec alone says `serde failed`), no state left.
#[test]
fn wrong_typed_config_field_is_named_and_leaves_nothing() {
    let env = Env::new();
    let b = env.dir.path().join("typed");
    fs::create_dir_all(b.join("rootfs")).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(husk_runtime::ops::default_spec()).unwrap();
    spec["process"]["terminal"] = false.into();
    for (field, bad, want) in [
        (
            "args",
            serde_json::json!("sh -c true"),
            "process.args: invalid type: string",
        ),
        (
            "user",
            serde_json::json!({"uid": "root", "gid": 0}),
            "process.user.uid: invalid type",
        ),
    ] {
        let mut c = spec.clone();
        c["process"][field] = bad;
        fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&c).unwrap(),
        )
        .unwrap();
        let out = env.run(&["create", "--bundle", b.to_str().unwrap(), "typed"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("config.json: "), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("serde failed"), "{err}");
        env.assert_clean();
    }
}

#[test]
fn same_id_twice_and_force_delete_after_monitor_sigkill() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    env.ok(&["create", "--bundle", b.to_str().unwrap(), "dup"]);
    let second = env.run(&["create", "--bundle", b.to_str().unwrap(), "dup"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));
    env.ok(&["start", "dup"]);
    let st: serde_json::Value = serde_json::from_str(&env.ok(&["state", "dup"])).unwrap();
    let pid = st["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    wait_status(&env, "dup", "stopped");
    env.ok(&["delete", "--force", "dup"]);
    env.assert_clean();
}

#[test]
fn hooks_and_bind_mounts() {
    require!(common::guest_ready());
    let env = Env::new();
    let data = env.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("in.txt"), b"from the host\n").unwrap();
    let log = env.dir.path().join("hooks.log");
    let hook = env.dir.path().join("hook.sh");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\nread state\necho \"$1 $state\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "cat /data/in.txt; echo from-guest > /data/out.txt",
        ],
    );
    let h = |name: &str| serde_json::json!([{"path": hook, "args": ["hook.sh", name]}]);
    // In the guest, in the container: each path resolves in its rootfs,
    // and /data is mounted when createContainer runs.
    let in_guest = |file: &str| serde_json::json!([{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > /data/{file}")]}]);
    env.edit_config(&b, |c| {
        // A failing poststart hook is logged; the start stands and the
        // next hook runs.
        let mut poststart = serde_json::json!([{"path": "/bin/false"}]);
        poststart.as_array_mut().unwrap().extend(h("poststart").as_array().unwrap().clone());
        c["hooks"] = serde_json::json!({"prestart": h("prestart"), "createRuntime": h("createRuntime"),
            "createContainer": in_guest("createContainer.json"),
            "startContainer": in_guest("startContainer.json"),
            "poststart": poststart, "poststop": h("poststop")});
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "rw"]}));
    });
    let out = env.run(&["run", "--bundle", b.to_str().unwrap(), "h1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"from the host\n");
    assert_eq!(fs::read(data.join("out.txt")).unwrap(), b"from-guest\n");
    let log = fs::read_to_string(&log).unwrap();
    let stages: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        stages,
        ["prestart", "createRuntime", "poststart", "poststop"],
        "{log}"
    );
    assert!(
        log.lines().next().unwrap().contains("\"id\":\"h1\""),
        "{log}"
    );
    assert!(
        log.lines()
            .next()
            .unwrap()
            .contains("\"status\":\"creating\""),
        "{log}"
    );
    for (file, status) in [
        ("createContainer.json", "creating"),
        ("startContainer.json", "created"),
    ] {
        let state: serde_json::Value =
            serde_json::from_slice(&fs::read(data.join(file)).unwrap()).unwrap();
        assert_eq!(
            (state["id"].as_str(), state["status"].as_str()),
            (Some("h1"), Some(status)),
            "{file}: {state}"
        );
    }
    env.assert_clean();

    // A failing prestart hook fails create and leaves nothing.
    let b2 = env.bundle("b2", &[], &["true"]);
    env.edit_config(&b2, |c| {
        c["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/false"}]})
    });
    let out = env.run(&["create", "--bundle", b2.to_str().unwrap(), "h2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prestart hook"));
    env.assert_clean();
}

/// Ten containers at once, ids that are prefixes of one another (c1, c10,
/// c100, ...: state directories, qemu command lines and the leftover
/// sweep must not confuse them), each created with its own stdout, then
/// started, exec'd into, asked for its state and listed while the others
/// change theirs, killed and deleted: every one's output is its own, and
/// nothing is left.
#[test]
fn ten_concurrent_cycles_leak_nothing() {
    require!(common::guest_ready());
    let env = Env::new();
    let ids = [
        "c1", "c10", "c100", "c1000", "c2", "c20", "c200", "c3", "c30", "c300",
    ];
    let bundles: Vec<PathBuf> = ids
        .iter()
        .map(|id| {
            let script = format!("echo init-{id}; exec sleep 600");
            env.bundle(&format!("b-{id}"), &[], &["sh", "-c", &script])
        })
        .collect();
    std::thread::scope(|s| {
        for (id, b) in ids.iter().zip(&bundles) {
            let env = &env;
            s.spawn(move || {
                let out = env.dir.path().join(format!("{id}.out"));
                let created = env
                    .husk()
                    .args(["create", "--bundle", b.to_str().unwrap(), id])
                    .stdout(std::fs::File::create(&out).unwrap())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(created.success(), "create {id}: {created}");
                env.ok(&["start", id]);
                let ex = env.ok(&["exec", id, "sh", "-c", &format!("echo exec-{id}")]);
                assert_eq!(ex, format!("exec-{id}\n"));
                assert_eq!(env.status_of(id), "running");
                let listed = env.ok(&["list"]);
                assert!(
                    listed
                        .lines()
                        .any(|l| l.split_whitespace().next() == Some(*id)),
                    "{id} not in:\n{listed}"
                );
                env.ok(&["kill", id, "KILL"]);
                wait_status(env, id, "stopped");
                env.ok(&["delete", id]);
                assert_eq!(
                    std::fs::read_to_string(&out).unwrap(),
                    format!("init-{id}\n"),
                    "{id}'s own output"
                );
            });
        }
    });
    env.assert_clean();
}

/// Receives one fd sent with SCM_RIGHTS on `listener` (the console socket).
fn recv_console(listener: &std::os::unix::net::UnixListener) -> std::fs::File {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the fd was just received and is owned by nobody else.
            return unsafe { std::fs::File::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket");
}

#[test]
fn terminal_through_console_socket_with_resize() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &["--tty"], &["sh"]);
    let sock_path = env.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let receiver = std::thread::spawn(move || recv_console(&listener));
    env.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--console-socket",
        sock_path.to_str().unwrap(),
        "t1",
    ]);
    let mut master = receiver.join().unwrap();
    env.ok(&["start", "t1"]);
    let ws = libc::winsize {
        ws_row: 33,
        ws_col: 111,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&master);
    // SAFETY: TIOCSWINSZ reads one winsize from `ws` for the open master.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
    // Time for the resize to reach the guest's terminal ahead of the input
    // below: only `stty size` in there shows it, so there is nothing to poll.
    std::thread::sleep(Duration::from_millis(500));
    master
        .write_all(b"echo tty-$((6*7)); stty size; exit 3\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        use std::io::Read;
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains("tty-42") && text.contains("33 111") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("tty-42"), "terminal output: {text:?}");
    assert!(text.contains("33 111"), "window size not applied: {text:?}");
    wait_status(&env, "t1", "stopped");
    env.ok(&["delete", "t1"]);
    env.assert_clean();
}

#[test]
fn exec_with_a_tty_through_console_socket() {
    require!(common::guest_ready());
    let env = Env::new();
    let b = env.bundle("b", &[], &["sleep", "600"]);
    env.ok(&["run", "--detach", "--bundle", b.to_str().unwrap(), "x1"]);
    let sock_path = env.dir.path().join("exec-console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let receiver = std::thread::spawn(move || recv_console(&listener));
    let pid_file = env.dir.path().join("exec.pid");
    env.ok(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        sock_path.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "x1",
        "sh",
        "-c",
        "tty; [ -t 0 ] && echo is-a-tty; read line; echo got-$line",
    ]);
    let mut master = receiver.join().unwrap();
    assert!(fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse::<i32>()
        .is_ok());
    master.write_all(b"abc\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains("got-abc") {
        use std::io::Read;
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        text.contains("is-a-tty") && text.contains("got-abc"),
        "{text:?}"
    );
    env.ok(&["delete", "--force", "x1"]);
    env.assert_clean();
}

/// The pids of the processes whose command line names `dir` (the VM's
/// host processes all name its state directory), with their names.
fn vm_processes(dir: &std::path::Path) -> Vec<(i32, String)> {
    common::processes_mentioning(dir.to_str().unwrap())
        .iter()
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .filter_map(|pid: i32| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, comm.trim().to_owned()))
        })
        .collect()
}

/// `/proc/PID/cgroup` as (hierarchy line prefix `ID:CONTROLLERS`, path).
fn cgroups_of(pid: i32) -> Vec<(String, String)> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (h, p) = l.rsplit_once(':')?;
            Some((h.to_owned(), p.to_owned()))
        })
        .collect()
}

/// The directory of `path` on each cgroup mount.
fn dirs_of(path: &str) -> Vec<PathBuf> {
    common::cgroup_mounts()
        .iter()
        .map(|m| m.join(path.trim_start_matches('/')))
        .collect()
}

fn read_trim(p: PathBuf) -> String {
    fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// The VM's host processes (the monitor, qemu where it is the engine,
/// virtiofsd, husk-vsockd) live in the container's host cgroup on
/// every mounted hierarchy (v1, v2 or hybrid) from `create` on, with the
/// memory, CPU and pids limits derived from the VM's size; `delete` kills
/// what is left in it after a crashed monitor and removes it. systemd's
/// `slice:prefix:name` (`--systemd-cgroup`) and relative paths are placed
/// as runc places them; a `..` path, a malformed systemd path and a cgroup
/// that exists already are refused naming `linux.cgroupsPath`, leaving
/// nothing (and the existing cgroup as it was).
#[test]
fn the_vm_lives_in_the_containers_host_cgroup_until_delete() {
    use husk_runtime::host_cgroup::{
        HOST_CPU_OVERHEAD, HOST_MEMORY_OVERHEAD_MIB, HOST_PIDS_BASE, HOST_PIDS_PER_VCPU,
    };
    use husk_runtime::sizing::MEMORY_OVERHEAD_MIB;
    require!(common::guest_ready());
    let env = Env::new();
    let mounts = common::cgroup_mounts();
    assert!(!mounts.is_empty(), "no cgroup hierarchy is mounted");
    let b = env.bundle("b", &[], &["sleep", "600"]);
    env.edit_config(&b, |c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 128u64 << 20});
        c["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 50_000, "period": 100_000});
    });
    let set_path = |p: Option<&str>| {
        env.edit_config(&b, |c| match p {
            Some(p) => c["linux"]["cgroupsPath"] = serde_json::json!(p),
            None => {
                c["linux"].as_object_mut().unwrap().remove("cgroupsPath");
            }
        })
    };

    // Unset: PARENT/ID, the parent being HUSK_CGROUP_PARENT (the env's).
    set_path(None);
    env.ok(&["create", "--bundle", b.to_str().unwrap(), "hc1"]);
    let want = format!("{}/hc1", env.cgroup_parent());
    let st: serde_json::Value = serde_json::from_str(&env.ok(&["state", "hc1"])).unwrap();
    let monitor = st["pid"].as_i64().unwrap() as i32;
    let procs = vm_processes(&env.root().join("hc1"));
    let names: Vec<&str> = procs.iter().map(|(_, n)| n.as_str()).collect();
    for must in ["husk-vmm", "virtiofsd", "husk-vsockd"] {
        assert!(names.contains(&must), "no {must} among {procs:?}");
    }
    assert!(procs.iter().any(|(p, _)| *p == monitor), "{procs:?}");
    let ours = cgroups_of(std::process::id() as i32);
    for (pid, name) in &procs {
        let theirs = cgroups_of(*pid);
        assert_eq!(theirs.len(), ours.len(), "{name} ({pid}): {theirs:?}");
        for (h, path) in &theirs {
            assert_eq!(path, &want, "{name} ({pid}) in hierarchy {h}");
        }
    }
    for d in dirs_of(&want) {
        let members = read_trim(d.join("cgroup.procs"));
        assert!(
            members.lines().any(|l| l == monitor.to_string()),
            "{}: {members}",
            d.display()
        );
        // guest RAM (128 MiB + the guest's overhead) + the host processes'.
        let memory = ((128 + u64::from(MEMORY_OVERHEAD_MIB)) + HOST_MEMORY_OVERHEAD_MIB) << 20;
        let quota = (1 + HOST_CPU_OVERHEAD) * 100_000;
        if d.join("memory.max").exists() {
            assert_eq!(read_trim(d.join("memory.max")), memory.to_string());
        }
        if d.join("memory.limit_in_bytes").exists() {
            assert_eq!(
                read_trim(d.join("memory.limit_in_bytes")),
                memory.to_string()
            );
        }
        if d.join("cpu.max").exists() {
            assert_eq!(read_trim(d.join("cpu.max")), format!("{quota} 100000"));
        }
        if d.join("cpu.cfs_quota_us").exists() {
            assert_eq!(read_trim(d.join("cpu.cfs_quota_us")), quota.to_string());
        }
        if d.join("pids.max").exists() {
            let pids = HOST_PIDS_BASE + HOST_PIDS_PER_VCPU;
            assert_eq!(read_trim(d.join("pids.max")), pids.to_string());
        }
    }
    let limited: Vec<_> = dirs_of(&want)
        .into_iter()
        .filter(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists())
        .collect();
    assert_eq!(limited.len(), 1, "one hierarchy has the memory controller");

    // A stray in the cgroup, and the monitor crashes: delete kills the
    // stray and removes the cgroup on every hierarchy.
    let mut stray = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    for d in dirs_of(&want) {
        fs::write(d.join("cgroup.procs"), stray.id().to_string()).unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    env.ok(&["delete", "--force", "hc1"]);
    husk_test_support::wait_until(
        Duration::from_secs(10),
        "the stray in the host cgroup to die",
        || stray.try_wait().unwrap().is_some(),
    );
    for d in dirs_of(&want) {
        assert!(!d.exists(), "{} is left", d.display());
    }
    env.assert_clean();

    // systemd's layout, made on cgroupfs: slices nest, the leaf is a scope;
    // the parents made for it go with it.
    let n = std::process::id();
    set_path(Some(&format!("husk{n}-e2e.slice:hk:sd1")));
    env.ok(&[
        "--systemd-cgroup",
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "sd1",
    ]);
    let want = format!("/husk{n}.slice/husk{n}-e2e.slice/hk-sd1.scope");
    let monitor: i32 = serde_json::from_str::<serde_json::Value>(&env.ok(&["state", "sd1"]))
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    for (h, path) in cgroups_of(monitor) {
        assert_eq!(path, want, "hierarchy {h}");
    }
    env.ok(&["delete", "--force", "sd1"]);
    for d in dirs_of(&format!("/husk{n}.slice")) {
        assert!(!d.exists(), "{} is left", d.display());
    }

    // Relative: below husk's own cgroup in each hierarchy (on pure v2,
    // next to it, as runc does).
    let rel = format!("husk-e2e-rel{n}/r1");
    set_path(Some(&rel));
    env.ok(&["create", "--bundle", b.to_str().unwrap(), "r1"]);
    let monitor: i32 = serde_json::from_str::<serde_json::Value>(&env.ok(&["state", "r1"])).unwrap()
        ["pid"]
        .as_i64()
        .unwrap() as i32;
    let pure_v2 = ours.len() == 1 && ours[0].0 == "0:";
    let theirs = cgroups_of(monitor);
    assert_eq!(theirs.len(), ours.len());
    for ((h, mine), (_, path)) in ours.iter().zip(&theirs) {
        let base = if pure_v2 {
            std::path::Path::new(mine)
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .to_str()
                .unwrap()
                .to_owned()
        } else {
            mine.clone()
        };
        let want = format!("{}/{rel}", base.trim_end_matches('/'));
        assert_eq!(path, &want, "hierarchy {h}");
    }
    env.ok(&["delete", "--force", "r1"]);
    for (h, path) in &theirs {
        let gone = mounts.iter().all(|m| {
            let p = m.join(path.trim_start_matches('/'));
            !p.exists() && !p.parent().unwrap().exists()
        });
        assert!(gone, "{path} ({h}) is left");
    }

    // Refused, naming the field, leaving nothing.
    for (flags, path, why) in [
        (&[][..], "/husk-e2e/../escape", "\"..\""),
        (
            &["--systemd-cgroup"][..],
            "/not/a/slice",
            "slice:prefix:name",
        ),
    ] {
        set_path(Some(path));
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["create", "--bundle", b.to_str().unwrap(), "bad1"]);
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {err}");
        assert!(
            err.contains(&format!("linux.cgroupsPath {path:?}: ")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
        env.assert_clean();
    }
    assert!(dirs_of("/escape").iter().all(|d| !d.exists()));

    // A cgroup that is not the container's own: refused, and left as it
    // was, with its process.
    let taken = format!("{}/taken", env.cgroup_parent());
    let first = dirs_of(&taken).remove(0);
    fs::create_dir_all(&first).unwrap();
    let mut owner = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    fs::write(first.join("cgroup.procs"), owner.id().to_string()).unwrap();
    set_path(Some(&taken));
    let out = env.run(&["create", "--bundle", b.to_str().unwrap(), "bad2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("linux.cgroupsPath {taken:?}: ")),
        "{err}"
    );
    assert!(err.contains("exists already"), "{err}");
    assert!(owner.try_wait().unwrap().is_none(), "the owner was killed");
    assert!(first.is_dir());
    owner.kill().unwrap();
    owner.wait().unwrap();
    // (The kernel takes the dead process out of the cgroup at once.)
    fs::remove_dir(&first).unwrap();
    env.assert_clean();
}
