//! Host-side OCI hooks: prestart and createRuntime (after the VM holds the
//! created container), poststart (after start), poststop (after delete).
//! Each gets the container's OCI state JSON on stdin. A prestart or
//! createRuntime hook that fails or outlives its timeout fails `create`
//! ([`run_hooks`]); a failing poststart or poststop hook is logged as a
//! warning and the remaining hooks and the operation go on, as the runtime
//! spec says ([`run_hooks_warn`]). createContainer and startContainer
//! hooks run in the container, in the guest (the agent's
//! `container::hooks`).

use std::io::{Read, Seek, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// How much of a failing hook's stderr its error carries.
const STDERR_KEPT: usize = 4096;

/// Why a hook failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("{stage} hook {path}: cannot run")]
    Spawn {
        /// Which hook list.
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited non-zero or by a signal.
    #[error("{stage} hook {path} failed: {status}{stderr}")]
    Failed {
        /// Which hook list.
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// How it ended.
        status: String,
        /// Its stderr, if any, prefixed with ": ".
        stderr: String,
    },
    /// The hook ran past its timeout and was killed.
    #[error("{stage} hook {path} timed out after {secs} s")]
    Timeout {
        /// Which hook list.
        stage: &'static str,
        /// The hook's path.
        path: String,
        /// The timeout.
        secs: i64,
    },
}

/// Runs `hooks` in order with `state_json` on stdin, stopping at the first
/// failure (prestart, createRuntime).
pub fn run_hooks(stage: &'static str, hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    for h in hooks {
        run_hook(stage, h, state_json)?;
    }
    Ok(())
}

/// Runs every one of `hooks` with `state_json` on stdin; a failure is
/// logged as a warning naming container `id` and the hook, and the rest
/// still run (poststart, poststop). Returns the failures.
pub fn run_hooks_warn(
    stage: &'static str,
    hooks: &[Hook],
    state_json: &[u8],
    id: &str,
) -> Vec<HookError> {
    let mut failed = Vec::new();
    for h in hooks {
        if let Err(e) = run_hook(stage, h, state_json) {
            tracing::warn!(
                id,
                stage,
                error = %crate::error_chain(&e),
                "{stage} hook failed; the remaining hooks and the operation go on"
            );
            failed.push(e);
        }
    }
    failed
}

/// The state as the hook's stdin: an unlinked in-memory file, not a pipe,
/// so a hook that exits without reading cannot raise SIGPIPE here (the
/// CLI dies of it, as runc's tools do), and no size blocks the write.
fn state_file(state_json: &[u8]) -> std::io::Result<std::fs::File> {
    let fd =
        nix::sys::memfd::memfd_create(c"oci-state", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut f = std::fs::File::from(fd);
    f.write_all(state_json)?;
    f.rewind()?;
    Ok(f)
}

fn run_hook(stage: &'static str, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let spawn_err = |source| HookError::Spawn {
        stage,
        path: path.clone(),
        source,
    };
    let mut cmd = Command::new(hook.path());
    // OCI: args[0] is argv[0]; env replaces the environment.
    if let Some(args) = hook.args() {
        if let Some((first, rest)) = args.split_first() {
            use std::os::unix::process::CommandExt;
            cmd.arg0(first);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(state_file(state_json).map_err(spawn_err)?)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Read stderr as it comes, so a chatty hook cannot block on a full
    // pipe; keep the start of it for the error.
    let reader = child.stderr.take().map(|mut e| {
        thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = e.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        })
    });
    let deadline = hook
        .timeout()
        .map(|s| (s, Instant::now() + Duration::from_secs(s.max(1) as u64)));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(source) => {
                return Err(HookError::Spawn {
                    stage,
                    path,
                    source,
                })
            }
        }
        if let Some((secs, d)) = deadline {
            if Instant::now() >= d {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { stage, path, secs });
            }
        }
        thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    // A process the hook left behind may hold stderr open: its output is
    // not waited for.
    let stderr = reader
        .filter(|r| {
            let until = Instant::now() + Duration::from_millis(200);
            while !r.is_finished() && Instant::now() < until {
                thread::sleep(Duration::from_millis(5));
            }
            r.is_finished()
        })
        .and_then(|r| r.join().ok())
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    Err(HookError::Failed {
        stage,
        path,
        status: status.to_string(),
        stderr: if stderr.is_empty() {
            String::new()
        } else {
            format!(": {stderr}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(v: serde_json::Value) -> Hook {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_env() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let h = hook(serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}; echo \"$X\" >> {}", out.display(), out.display())],
            "env": ["X=hello"]}));
        run_hooks("prestart", &[h], b"{\"id\":\"c\"}").unwrap();
        assert_eq!(
            std::fs::read_to_string(out).unwrap(),
            "{\"id\":\"c\"}hello\n"
        );
    }

    #[test]
    fn failing_hook_names_itself_and_stops_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("second-ran");
        let bad = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}),
        );
        let second = hook(serde_json::json!({"path": "/bin/touch", "args": ["touch", marker]}));
        let err = run_hooks("poststart", &[bad, second], b"{}").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("poststart hook /bin/sh failed") && msg.contains("nope"),
            "{msg}"
        );
        assert!(!marker.exists());
    }

    /// poststart and poststop: a failing hook does not stop the others
    /// (runtime spec: log a warning, go on as if it had succeeded).
    #[test]
    fn warn_runs_every_hook_and_returns_the_failures() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("second-ran");
        let bad = hook(serde_json::json!({"path": "/bin/false"}));
        let second = hook(serde_json::json!({"path": "/bin/touch", "args": ["touch", marker]}));
        let failed = run_hooks_warn("poststop", &[bad, second], b"{}", "c");
        assert!(marker.exists(), "the hook after the failing one ran");
        assert_eq!(failed.len(), 1);
        assert!(matches!(
            &failed[0],
            HookError::Failed {
                stage: "poststop",
                ..
            }
        ));
    }

    /// A hook that exits at once without reading its stdin, with a state
    /// larger than a pipe holds, neither kills nor blocks the caller; a
    /// hook whose stderr overflows a pipe is not deadlocked.
    #[test]
    fn unread_state_and_loud_stderr_are_fine() {
        let state = vec![b'x'; 1 << 20];
        for _ in 0..20 {
            run_hooks(
                "prestart",
                &[hook(serde_json::json!({"path": "/bin/true"}))],
                &state,
            )
            .unwrap();
        }
        let loud = hook(serde_json::json!({"path": "/bin/sh",
            "args": ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' e >&2; exit 5"],
            "timeout": 20}));
        let e = run_hooks("prestart", &[loud], b"").unwrap_err();
        let HookError::Failed { status, stderr, .. } = &e else {
            panic!("{e:?}");
        };
        assert!(status.contains('5'), "{status}");
        assert!(
            stderr.len() <= STDERR_KEPT + 2 && stderr.starts_with(": eee"),
            "{}",
            stderr.len()
        );
    }

    #[test]
    fn slow_hook_times_out_and_missing_hook_fails() {
        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "10"], "timeout": 1}));
        assert!(matches!(
            run_hooks("createRuntime", &[slow], b""),
            Err(HookError::Timeout { .. })
        ));
        let missing = hook(serde_json::json!({"path": "/nonexistent/hook"}));
        assert!(matches!(
            run_hooks("prestart", &[missing], b""),
            Err(HookError::Spawn { .. })
        ));
    }
}
