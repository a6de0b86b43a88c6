//! Host-side OCI hooks: prestart and createRuntime (after the VM holds the
//! created container), poststart (after start), poststop (after delete).
//! Each gets the container's OCI state JSON on stdin; a hook that fails or
//! outlives its timeout fails the operation (poststop only warns, as runc).

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

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
/// failure.
pub fn run_hooks(stage: &'static str, hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    for h in hooks {
        run_hook(stage, h, state_json)?;
    }
    Ok(())
}

fn run_hook(stage: &'static str, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
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
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        stage,
        path: path.clone(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state_json);
    }
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
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
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
