//! Shared helpers of the runtime's end-to-end tests: finding what a real
//! guest needs, making bundles, running `husk`, and checking that nothing
//! (state, process, mount, host cgroup) is left behind.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether this host can run a guest, or why not: a test skips with
/// `husk_test_support::require!(common::guest_ready())`.
pub fn guest_ready() -> Result<(), String> {
    husk_test_support::root()?;
    let husk = PathBuf::from(env!("CARGO_BIN_EXE_husk"));
    if !husk.with_file_name("husk-vmm").is_file() && std::env::var_os("HUSK_VMM").is_none() {
        return Err("husk-vmm is not built next to husk (cargo test --workspace builds it)".into());
    }
    husk_test_support::husk_kernel()?;
    husk_test_support::husk_initramfs()?;
    // The monitor runs the husk-vsockd next to it first.
    let vmm = std::env::var_os("HUSK_VMM")
        .map(PathBuf::from)
        .unwrap_or_else(|| husk.with_file_name("husk-vmm"));
    let beside = vmm.with_file_name("husk-vsockd").is_file();
    for bin in ["qemu-system-x86_64", "virtiofsd", "husk-vsockd"] {
        if bin == "husk-vsockd" && beside {
            continue;
        }
        husk_test_support::program(bin).map_err(|e| format!("{e} (run scripts/setup.sh)"))?;
    }
    Ok(())
}

/// A temp directory holding a state root and bundles; on drop, deletes any
/// container left and checks nothing remains.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Environment variables every husk command of this env gets.
    vars: Vec<(&'static str, String)>,
}

impl Env {
    pub fn new() -> Env {
        // Short paths: the monitor's sockets live in the state directory.
        let dir = tempfile::Builder::new()
            .prefix("hk")
            .tempdir_in("/tmp")
            .unwrap();
        fs::create_dir(dir.path().join("r")).unwrap();
        Env {
            dir,
            vars: Vec::new(),
        }
    }

    /// This env with `key=value` in every husk command's environment.
    pub fn with_var(mut self, key: &'static str, value: &str) -> Env {
        self.vars.push((key, value.to_owned()));
        self
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("r")
    }

    /// Makes a busybox bundle running `args`.
    pub fn bundle(&self, name: &str, flags: &[&str], args: &[&str]) -> PathBuf {
        let b = self.dir.path().join(name);
        let out = Command::new(repo_root().join("tests/make-bundle.sh"))
            .args(flags)
            .arg(&b)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-bundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    /// Edits a bundle's config.json.
    pub fn edit_config(&self, bundle: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let p = bundle.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// The parent of the host cgroups of this env's containers that set
    /// no `linux.cgroupsPath` (`HUSK_CGROUP_PARENT`): one of its own, so
    /// that [`Env::assert_clean`] finds what its containers left, and the
    /// same ids in two envs (or in two test runs at once) do not meet.
    pub fn cgroup_parent(&self) -> String {
        format!(
            "/husk-e2e-{}",
            self.dir.path().file_name().unwrap().to_string_lossy()
        )
    }

    pub fn husk(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_husk"));
        c.arg("--root").arg(self.root());
        c.env("HUSK_CGROUP_PARENT", self.cgroup_parent());
        c.envs(self.vars.iter().map(|(k, v)| (k, v)));
        c.stdin(Stdio::null());
        c
    }

    /// Runs husk with `args`, stdin from /dev/null. stdout and stderr go
    /// through files, not pipes: a created container keeps the stdio it
    /// was created with, and a pipe would not see EOF until it exits.
    pub fn run(&self, args: &[&str]) -> Output {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (o, e) = (
            self.dir.path().join(format!("o{n}")),
            self.dir.path().join(format!("e{n}")),
        );
        let status = self
            .husk()
            .args(args)
            .stdout(fs::File::create(&o).unwrap())
            .stderr(fs::File::create(&e).unwrap())
            .status()
            .unwrap();
        let out = Output {
            status,
            stdout: fs::read(&o).unwrap(),
            stderr: fs::read(&e).unwrap(),
        };
        let _ = (fs::remove_file(o), fs::remove_file(e));
        out
    }

    /// Runs husk and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "husk {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until `husk state ID` says running, for a container a `run`
    /// started in the background (its state may not exist yet).
    pub fn wait_running(&self, id: &str, timeout: std::time::Duration) {
        husk_test_support::wait_until(timeout, &format!("{id} to run"), || {
            self.run(&["state", id])
                .stdout
                .windows(9)
                .any(|w| w == b"\"running\"")
        });
    }

    pub fn status_of(&self, id: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["state", id])).unwrap();
        v["status"].as_str().unwrap().to_owned()
    }

    /// Asserts that no state, process, mount or host cgroup of this env is
    /// left.
    pub fn assert_clean(&self) {
        let root = self.root();
        let left: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // What is left says how it came to be left: name each file.
        let inside: Vec<_> = left
            .iter()
            .map(|d| {
                let files: Vec<_> = fs::read_dir(root.join(d))
                    .map(|r| r.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                format!("{d:?}: {files:?}")
            })
            .collect();
        assert!(
            left.is_empty(),
            "state left in {}: {inside:?}",
            root.display()
        );
        let needle = self.dir.path().to_str().unwrap().to_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&needle)),
            "mounts left: {}",
            mounts
                .lines()
                .filter(|l| l.contains(&needle))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let procs = processes_mentioning(&needle);
        assert!(procs.is_empty(), "processes left: {procs:?}");
        let cgroups: Vec<PathBuf> = cgroup_mounts()
            .into_iter()
            .flat_map(|m| subdirs(&m.join(self.cgroup_parent().trim_start_matches('/'))))
            .collect();
        assert!(cgroups.is_empty(), "host cgroups left: {cgroups:?}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(rd) = fs::read_dir(self.root()) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.run(&["delete", "--force", &id]);
            }
        }
        // The parent the first container made stays when another one
        // still used it then.
        for m in cgroup_mounts() {
            let _ = fs::remove_dir(m.join(self.cgroup_parent().trim_start_matches('/')));
        }
    }
}

/// Where the host's cgroup hierarchies are mounted (v1 and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2").then_some(())?;
            Some(PathBuf::from(pre.split(' ').nth(4)?))
        })
        .collect()
}

/// The directories in `dir` (none when it does not exist).
pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle` (qemu, daemons, monitors).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                // Zombies have an empty cmdline; a live match is a leak.
                out.push(format!("{name}: {c}"));
            }
        }
    }
    out
}
