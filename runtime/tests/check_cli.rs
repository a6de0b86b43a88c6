//! `husk check` on the host it runs on: the verdict and the engine agree
//! with what the CPU and /dev/kvm offer (qemu TCG on a host without
//! VT-x/AMD-V, the builtin engine in the nested tier's AMD-V L1), and a
//! missing guest kernel turns the verdict and the exit status. Skips (with
//! its reason) where the host lacks root, the built guest or the daemons.

mod common;

use std::process::Command;

use husk_test_support::require;

fn husk_check(env: &[(&str, &str)]) -> (i32, serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.args(["--root", "/tmp/husk-check-test-root", "check", "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (
        out.status.code().unwrap(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == flag))
}

#[test]
fn check_says_which_engine_runs_here_and_why() {
    require!(common::guest_ready());
    let (code, r, err) = husk_check(&[]);
    assert_eq!(code, 0, "{r:#}\n{err}");
    assert_eq!(r["can_run"], true);
    let hw = cpu_flag("vmx") || cpu_flag("svm");
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let engine = r["host"]["engine"].as_str().unwrap();
    let verdict = r["verdict"].as_str().unwrap();
    let kvm_line = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kvm")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    if hw {
        assert_eq!(engine, "builtin", "{r:#}");
        assert!(verdict.contains("builtin KVM engine"), "{verdict}");
        assert!(kvm_line.contains("VT-x/AMD-V"), "{kvm_line}");
    } else {
        assert_eq!(engine, "qemu", "{r:#}");
        assert_eq!(r["host"]["accel"], "tcg");
        assert!(verdict.contains("TCG"), "{verdict}");
        assert!(
            r["host"]["reason"]
                .as_str()
                .unwrap()
                .contains("no hardware virtualization"),
            "{r:#}"
        );
        if kvm {
            assert!(kvm_line.contains("PVM"), "{kvm_line}");
        }
    }
    // Every helper the monitor needs was found, with its version.
    for p in r["host"]["programs"].as_array().unwrap() {
        if p["required"] == true {
            assert!(p["version"].is_string(), "{p:#}");
        }
    }
}

#[test]
fn a_missing_kernel_fails_the_check_and_names_it() {
    require!(common::guest_ready());
    let (code, r, _) = husk_check(&[("HUSK_KERNEL", "/nonexistent/vmlinux")]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["can_run"], false);
    assert_eq!(
        r["verdict"],
        "husk cannot run containers on this host: fix guest kernel"
    );
    let kernel = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "guest kernel")
        .unwrap();
    assert_eq!(kernel["status"], "fail");
    assert!(
        kernel["detail"]
            .as_str()
            .unwrap()
            .starts_with("/nonexistent/vmlinux: "),
        "{kernel:#}"
    );
}

/// The operator's configuration file: its values are in effect where the
/// environment leaves them unset, `husk check` shows where each came from,
/// and a file with an unknown key stops every command with the key named.
#[test]
fn the_configuration_file_is_read_and_checked() {
    let t = tempfile::tempdir().unwrap();
    let good = t.path().join("husk.toml");
    std::fs::write(&good, "engine = \"qemu\"\nmax_vcpus = 2\n").unwrap();
    let root = t.path().join("root");
    let husk = |config: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
        cmd.env("HUSK_CONFIG", config)
            .env_remove("HUSK_ENGINE")
            .env_remove("HUSK_MAX_VCPUS")
            .arg("--root")
            .arg(&root)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = husk(&good, &["check", "--json"], &[]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let eff = |r: &serde_json::Value, key: &str| {
        r["config"]["effective"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap()
            .clone()
    };
    assert_eq!(eff(&r, "engine")["value"], "qemu");
    assert_eq!(eff(&r, "engine")["source"], good.display().to_string());
    assert_eq!(eff(&r, "max_vcpus")["value"], "2");
    assert_eq!(eff(&r, "kernel")["source"], "built-in default");
    // The monitor was asked about the engine the file names.
    assert_eq!(r["host"]["engine"], "qemu", "{r:#}");
    // The environment wins over the file.
    let out = husk(&good, &["check", "--json"], &[("HUSK_ENGINE", "auto")]);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eff(&r, "engine")["value"], "auto");
    assert_eq!(eff(&r, "engine")["source"], "environment HUSK_ENGINE");

    let bad = t.path().join("bad.toml");
    std::fs::write(&bad, "engine = \"qemu\"\nmax_vcpu = 2\n").unwrap();
    let out = husk(&bad, &["list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "configuration file {}: unknown key \"max_vcpu\"",
            bad.display()
        )),
        "{err}"
    );
    let out = husk(&bad, &["check", "--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "configuration")
        .unwrap()
        .clone();
    assert_eq!(config["status"], "fail");
    assert!(r["verdict"].as_str().unwrap().contains("configuration"));
    let out = husk(&t.path().join("absent.toml"), &["list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}
