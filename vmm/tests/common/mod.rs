//! Shared helpers for husk-vmm's end-to-end tests: locating what they need
//! (skipping with a printed reason when something is missing), running the
//! monitor, and asserting nothing is left behind.
#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The monitor binary under test.
pub const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Prints why a test is skipped; use as `let Some(x) = ... else { return skip(..) }`.
pub use husk_test_support::skip;

fn newest(glob_dir: &str, file: &str) -> Option<PathBuf> {
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(glob_dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn locate_artifact(env: &str, installed: &str, cache_dir: &str, file: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let p = PathBuf::from(installed);
    if p.is_file() {
        return Some(p);
    }
    newest(cache_dir, file)
}

/// The guest kernel: `$HUSK_KERNEL`, the installed one, or the newest build.
pub fn kernel() -> Option<PathBuf> {
    locate_artifact(
        "HUSK_KERNEL",
        "/usr/local/share/husk/vmlinux",
        "/var/cache/husk/kernel",
        "vmlinux",
    )
}

/// The agent initramfs: `$HUSK_INITRAMFS`, the installed one, or the newest
/// build.
pub fn agent_initramfs() -> Option<PathBuf> {
    locate_artifact(
        "HUSK_INITRAMFS",
        "/usr/local/share/husk/initramfs.cpio",
        "/var/cache/husk/initramfs",
        "initramfs.cpio",
    )
}

/// Everything an end-to-end test needs on the host, or why it is missing.
pub fn host_ready() -> Result<PathBuf, String> {
    husk_test_support::root().map_err(|e| format!("{e} (virtiofsd)"))?;
    for b in ["qemu-system-x86_64", "virtiofsd"] {
        husk_vmm::binaries::locate(b, None).map_err(|e| e.to_string())?;
    }
    // The monitor runs the husk-vsockd next to it first.
    if !Path::new(VMM).with_file_name("husk-vsockd").is_file() {
        husk_vmm::binaries::locate("husk-vsockd", None)
            .map_err(|e| format!("{e} (cargo build -p husk-vsockd)"))?;
    }
    kernel()
        .ok_or_else(|| "no guest kernel (set HUSK_KERNEL or run guest-kernel/build.sh)".to_string())
}

/// A unique short scratch dir (socket paths must stay short).
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hv-{name}-"))
        .tempdir_in("/tmp")
        .unwrap()
}

/// Processes whose command line mentions `needle` (other than this test).
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Unix sockets left anywhere under `dir`.
pub fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_socket() {
            v.push(e.path());
        } else if ft.is_dir() {
            v.extend(sockets_under(&e.path()));
        }
    }
    v
}

/// Asserts no qemu, daemon or monitor of this state dir runs and no socket
/// is left in it.
pub fn assert_nothing_left(state: &Path) {
    let needle = state.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let socks = sockets_under(state);
    assert!(socks.is_empty(), "sockets left behind: {socks:?}");
}

/// Waits for `child` up to `timeout`, killing it on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("husk-vmm did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` contains `needle`.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {} after {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `husk-vmm` command for `state` with the kernel set, on the engine
/// `HUSK_ENGINE` names (the nested tier sets `builtin`), else qemu: the
/// engine that runs a Linux guest on every host.
pub fn vmm(kernel: &Path, state: &Path) -> Command {
    let engine = std::env::var("HUSK_ENGINE").unwrap_or_else(|_| "qemu".into());
    vmm_on(kernel, state, &engine)
}

/// A `husk-vmm` command for `state` with the kernel set, on `engine`.
pub fn vmm_on(kernel: &Path, state: &Path, engine: &str) -> Command {
    let mut c = Command::new(VMM);
    c.arg("--kernel")
        .arg(kernel)
        .arg("--state-dir")
        .arg(state)
        .arg("--engine")
        .arg(engine);
    c.env("HUSK_LOG", "debug");
    c
}

/// Makes `cmd` report readiness on a pipe (`--ready-fd 3`) and returns the
/// pipe's read end. Spawn `cmd` before reading; the write end closes with
/// the returned guard's drop after the spawn.
pub fn ready_pipe(cmd: &mut Command) -> (std::fs::File, std::os::fd::OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let raw = w.as_raw_fd();
    cmd.arg("--ready-fd").arg("3");
    // SAFETY: dup2 is async-signal-safe; it gives the child the pipe's
    // write end as fd 3 without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    (std::fs::File::from(r), w)
}

/// Packs /bin/busybox and `script` as /init into a newc cpio.
pub fn busybox_initramfs(dir: &Path, script: &str) -> Result<PathBuf, String> {
    let bb = Path::new("/bin/busybox");
    if !bb.is_file() {
        return Err("no /bin/busybox (apt-get install busybox-static)".into());
    }
    let root = dir.join("initrd");
    for d in ["bin", "proc", "dev", "sys", "mnt"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap();
    let init = root.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox --install -s /bin\n{script}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initrd.cpio");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet > {}",
            root.display(),
            out.display()
        ))
        .status()
        .map_err(|e| format!("sh: {e}"))?;
    if !st.success() {
        return Err("cpio failed (apt-get install cpio)".into());
    }
    Ok(out)
}

/// The kernel, a scratch dir and a busybox initramfs running `script`, or
/// None (after printing why) when the host lacks something.
pub fn busybox_guest(name: &str, script: &str) -> Option<(PathBuf, tempfile::TempDir, PathBuf)> {
    let kernel = host_ready().map_err(|why| skip(&why)).ok()?;
    let tmp = scratch(name);
    let initrd = busybox_initramfs(tmp.path(), script)
        .map_err(|why| skip(&why))
        .ok()?;
    Some((kernel, tmp, initrd))
}
