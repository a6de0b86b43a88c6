//! The OCI hooks that run inside the container, in its namespaces, with
//! the container's state JSON on stdin (the host runs the others: prestart,
//! createRuntime, poststart, poststop):
//!
//! - `createContainer`: in the container's init, after the mounts and
//!   before pivot_root. The runtime spec resolves its path in the runtime's
//!   namespace, which for a VM is the host: its files are not in the guest,
//!   and the guest's own root holds nothing but the agent. So the path
//!   resolves in the container's rootfs (the hook is chrooted into it, the
//!   mounts in place), as `startContainer`'s does.
//! - `startContainer`: in the container's init after `StartContainer`,
//!   just before the process's exec, as the process's user with its
//!   capabilities and seccomp filter (runc's order); the path resolves in
//!   the container.
//!
//! A failing hook, or one that outlives its `timeout`, fails the create or
//! the start with a message naming the hook and carrying its output. The
//! state's `pid` is the init's pid in the container's pid namespace, its
//! `bundle` the guest directory holding the rootfs (the host's bundle is
//! not in the VM).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use oci_spec::runtime::{Hook, Spec};

use super::SetupError;

/// How much of a failing hook's output its error carries.
const OUTPUT_KEPT: usize = 4096;

/// The container's OCI state as the in-container hooks get it.
pub fn state_json(spec: &Spec, id: &str, status: &str, bundle: &Path) -> Vec<u8> {
    let mut v = serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": std::process::id(),
        "bundle": bundle,
    });
    if let Some(a) = spec.annotations().as_ref().filter(|a| !a.is_empty()) {
        v["annotations"] = serde_json::json!(a);
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Runs `hooks` of `stage` in order with `state` on stdin, stopping at the
/// first failure; with `root`, each is chrooted into it first (its path
/// resolves there).
pub fn run(
    stage: &str,
    hooks: &[Hook],
    state: &[u8],
    root: Option<&Path>,
) -> Result<(), SetupError> {
    for h in hooks {
        run_one(stage, h, state, root)?;
    }
    Ok(())
}

fn run_one(stage: &str, hook: &Hook, state: &[u8], root: Option<&Path>) -> Result<(), SetupError> {
    let fail =
        |why: String| SetupError::Hook(format!("{stage} hook {}: {why}", hook.path().display()));
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| fail(format!("{what}: {e}"))
    };
    // A memfd, not a pipe: a hook that exits without reading cannot
    // raise SIGPIPE here, and the state's size does not matter.
    let mut stdin = File::from(
        memfd_create(c"oci-state", MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| io("memfd for the state")(e.into()))?,
    );
    stdin
        .write_all(state)
        .and_then(|()| stdin.rewind())
        .map_err(io("write the state"))?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| io("pipe for the hook's output")(e.into()))?;
    let mut cmd = Command::new(hook.path());
    // OCI: args[0] is argv[0]; env replaces the environment.
    if let Some((first, rest)) = hook.args().as_deref().and_then(|a| a.split_first()) {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let out_w2 = out_w.try_clone().map_err(io("dup the output pipe"))?;
    cmd.stdin(Stdio::from(stdin))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    if let Some(root) = root {
        let root = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| fail("the rootfs path has a NUL byte".into()))?;
        // SAFETY: between fork and exec the closure makes two
        // async-signal-safe syscalls on a string allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end go with the command, so the read
    // end sees EOF once the hook (and whatever it left) closes it.
    drop(cmd);
    let mut child = spawned.map_err(io("cannot run"))?;
    let mut output = File::from(out_r);
    let _ = fcntl(output.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let deadline = hook
        .timeout()
        .map(|s| (s, Instant::now() + Duration::from_secs(s.max(1) as u64)));
    let mut kept = Vec::new();
    let status: ExitStatus = loop {
        drain(&mut output, &mut kept);
        if let Some(st) = child.try_wait().map_err(io("wait"))? {
            drain(&mut output, &mut kept);
            break st;
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("timed out after {secs} s")));
            }
        }
        let mut fds = [PollFd::new(output.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(20u8));
    };
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&kept);
    let text = text.trim();
    Err(fail(if text.is_empty() {
        format!("failed: {status}")
    } else {
        format!("failed: {status}: {text}")
    }))
}

/// Reads what `pipe` (non-blocking) holds, keeping the first
/// [`OUTPUT_KEPT`] bytes in `kept`.
fn drain(pipe: &mut File, kept: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = OUTPUT_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn state_on_stdin_env_replaced_and_output_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let h = hook(serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}; echo \"$X:$HOME\" >> {}", out.display(), out.display())],
            "env": ["X=hi"]}));
        run("startContainer", &[h], b"{\"id\":\"c\"}", None).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":\"c\"}hi:\n"
        );
        let bad = hook(serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"]}));
        let never = hook(serde_json::json!({"path": "/bin/touch", "args": ["touch", out]}));
        std::fs::remove_file(&out).unwrap();
        let e = run("createContainer", &[bad, never], b"", None)
            .unwrap_err()
            .to_message();
        assert!(
            e.starts_with("createContainer hook /bin/sh: failed: exit status: 3"),
            "{e}"
        );
        assert!(e.contains("to-stdout") && e.contains("to-stderr"), "{e}");
        assert!(!out.exists(), "a failure stops the list");
    }

    #[test]
    fn a_hook_that_exits_without_reading_or_outlives_its_timeout() {
        // A large state and a hook that reads none of it.
        let state = vec![b'x'; 1 << 20];
        run(
            "startContainer",
            &[hook(serde_json::json!({"path": "/bin/true"}))],
            &state,
            None,
        )
        .unwrap();
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1}));
        let started = Instant::now();
        let e = run("startContainer", &[slow], b"", None)
            .unwrap_err()
            .to_message();
        assert_eq!(e, "startContainer hook /bin/sleep: timed out after 1 s");
        assert!(started.elapsed() < Duration::from_secs(5));
        let e = run(
            "startContainer",
            &[hook(serde_json::json!({"path": "/nonexistent/hook"}))],
            b"",
            None,
        )
        .unwrap_err()
        .to_message();
        assert!(
            e.starts_with("startContainer hook /nonexistent/hook: cannot run: "),
            "{e}"
        );
    }

    #[test]
    fn state_json_has_the_oci_fields() {
        let spec: Spec = serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2",
            "annotations": {"a": "b"}}))
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&state_json(&spec, "c1", "creating", Path::new("/run/b")))
                .unwrap();
        assert_eq!(v["ociVersion"], "1.0.2");
        assert_eq!(
            (v["id"].as_str(), v["status"].as_str()),
            (Some("c1"), Some("creating"))
        );
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(
            (v["bundle"].as_str(), v["annotations"]["a"].as_str()),
            (Some("/run/b"), Some("b"))
        );
    }
}
