//! The process part of the spec: rlimits, oomScoreAdj, the NUMA memory
//! policy (`linux.memoryPolicy`), user and groups, umask, cwd, env, the PATH
//! lookup of args[0], and the final exec.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{execve, setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::Process;

use super::{sys, SetupError};

/// The default PATH when the process env has none (runc's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Applies `process.rlimits`.
pub fn apply_rlimits(p: &Process) -> Result<(), SetupError> {
    for r in p.rlimits().clone().unwrap_or_default() {
        let name = serde_json::to_value(r.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let res = resource(&name)
            .ok_or_else(|| SetupError::Invalid(format!("unknown rlimit {name:?}")))?;
        setrlimit(res, r.soft(), r.hard()).map_err(sys(format!("setrlimit {name}")))?;
    }
    Ok(())
}

/// The highest NUMA node number a `linux.memoryPolicy.nodes` list may
/// name (the kernel's own limit is `CONFIG_NODES_SHIFT`; an x86 guest
/// stays far below this).
const MAX_NODES: u32 = 1024;

/// Sets `linux.memoryPolicy` with set_mempolicy(2): the process and what it
/// execs allocate by that policy. The guest has one NUMA node, 0 (the
/// runtime maps the host's node numbers onto it).
pub fn apply_memory_policy(spec: &oci_spec::runtime::Spec) -> Result<(), SetupError> {
    use oci_spec::runtime::{MemoryPolicyFlagType as F, MemoryPolicyModeType as M};
    let Some(policy) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.memory_policy().clone())
    else {
        return Ok(());
    };
    // linux/mempolicy.h: the modes, and the flags or'ed into the mode.
    let mode: i32 = match policy.mode() {
        M::MpolDefault => 0,
        M::MpolPreferred => 1,
        M::MpolBind => 2,
        M::MpolInterleave => 3,
        M::MpolLocal => 4,
        M::MpolPreferredMany => 5,
        M::MpolWeightedInterleave => 6,
    };
    let flags = policy
        .flags()
        .clone()
        .unwrap_or_default()
        .iter()
        .fold(0, |acc, f| {
            acc | match f {
                F::MpolFStaticNodes => 1 << 15,
                F::MpolFRelativeNodes => 1 << 14,
                F::MpolFNumaBalancing => 1 << 13,
            }
        });
    let list = policy.nodes().clone().unwrap_or_default();
    let field = || format!("linux.memoryPolicy ({}, nodes {list:?})", policy.mode());
    let mask =
        node_mask(&list).map_err(|why| SetupError::Invalid(format!("{}: {why}", field())))?;
    crate::sys::set_mempolicy(mode | flags, &mask)
        .map_err(|e| SetupError::Invalid(format!("{}: set_mempolicy: {e}", field())))
}

/// A node list (`0-2,5`) as the bitmask set_mempolicy(2) takes.
fn node_mask(list: &str) -> Result<Vec<u64>, String> {
    let mut mask = Vec::new();
    let num = |s: &str| -> Result<u32, String> {
        let n: u32 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a node number"))?;
        if n >= MAX_NODES {
            return Err(format!("node {n} is beyond {}", MAX_NODES - 1));
        }
        Ok(n)
    };
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi {
            return Err(format!("{part:?} ends before it starts"));
        }
        for n in lo..=hi {
            let word = (n / 64) as usize;
            if mask.len() <= word {
                mask.resize(word + 1, 0);
            }
            mask[word] |= 1 << (n % 64);
        }
    }
    Ok(mask)
}

/// Writes `process.oomScoreAdj`.
pub fn apply_oom_score_adj(p: &Process) -> Result<(), SetupError> {
    if let Some(adj) = p.oom_score_adj() {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(sys(format!("set oom_score_adj {adj}")))?;
    }
    Ok(())
}

/// Switches to `process.user` (numeric ids only: no NSS in a static binary)
/// keeping the permitted capabilities for [`super::capabilities::apply`].
pub fn switch_user(p: &Process) -> Result<(), SetupError> {
    let u = p.user();
    let groups: Vec<Gid> = u
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::sys::prctl::set_keepcaps(true).map_err(sys("prctl PR_SET_KEEPCAPS"))?;
    // setgroups is refused in a user ns whose setgroups is "deny"; only an
    // error when the spec asks for groups.
    if let Err(e) = setgroups(&groups) {
        if !groups.is_empty() {
            return Err(sys("setgroups")(e));
        }
    }
    let gid = Gid::from_raw(u.gid());
    setresgid(gid, gid, gid).map_err(sys(format!("setgid {}", u.gid())))?;
    let uid = Uid::from_raw(u.uid());
    setresuid(uid, uid, uid).map_err(sys(format!("setuid {}", u.uid())))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("prctl PR_SET_KEEPCAPS"))?;
    if let Some(m) = u.umask() {
        umask(Mode::from_bits_truncate(m));
    }
    Ok(())
}

/// `process.cwd`, relative to the container root.
pub fn enter_cwd(p: &Process) -> Result<(), SetupError> {
    let cwd = p.cwd();
    nix::unistd::chdir(cwd.as_path()).map_err(sys(format!("chdir to cwd {}", cwd.display())))
}

/// The value of `key` in an env list.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

/// The environment as runc's `prepareEnv` leaves it: each variable once,
/// with its last value, where it last occurs. A later entry overrides an
/// earlier one (`exec --env K=V` after the spec's `K`), where execve would
/// pass both and getenv(3) would find the first. Like runc, an entry
/// without `=` or with an empty name is refused.
pub fn dedup_env(env: &[String]) -> Result<Vec<String>, SetupError> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(env.len());
    for (i, kv) in env.iter().enumerate().rev() {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(SetupError::Invalid(format!(
                "process.env[{i}] {kv:?} is not NAME=VALUE (no '=')"
            )));
        };
        if key.is_empty() {
            return Err(SetupError::Invalid(format!(
                "process.env[{i}] {kv:?} has an empty name"
            )));
        }
        if seen.insert(key) {
            out.push(kv.clone());
        }
    }
    out.reverse();
    Ok(out)
}

/// Resolves args[0] through the container's PATH, like execvp.
pub fn lookup(arg0: &str, env: &[String]) -> Result<PathBuf, SetupError> {
    if arg0.is_empty() {
        return Err(SetupError::Invalid("process.args is empty".into()));
    }
    if arg0.contains('/') {
        return Ok(PathBuf::from(arg0));
    }
    let path = env_get(env, "PATH").unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(arg0);
        if let Ok(m) = fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(cand);
            }
        }
    }
    Err(SetupError::Exec(format!(
        "exec {arg0:?}: executable file not found in $PATH"
    )))
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, SetupError> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| SetupError::Invalid(format!("{what} has a NUL byte")))
        })
        .collect()
}

/// The prepared exec: everything is resolved before privileges drop.
#[derive(Debug)]
pub struct ExecPlan {
    path: CString,
    shown: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

/// Resolves the program and builds argv/envp.
pub fn prepare_exec(p: &Process) -> Result<ExecPlan, SetupError> {
    let args = p.args().clone().unwrap_or_default();
    let mut env = dedup_env(p.env().as_deref().unwrap_or_default())?;
    if env_get(&env, "HOME").is_none() {
        env.push("HOME=/".into());
    }
    let arg0 = args
        .first()
        .ok_or_else(|| SetupError::Invalid("process.args is empty".into()))?;
    let path = lookup(arg0, &env)?;
    let shown = path.display().to_string();
    Ok(ExecPlan {
        path: CString::new(shown.as_bytes())
            .map_err(|_| SetupError::Invalid("args[0] has a NUL byte".into()))?,
        shown,
        argv: cstrings(&args, "process.args")?,
        envp: cstrings(&env, "process.env")?,
    })
}

/// Execs; only returns with the error, as ExecFailed with the errno text.
pub fn exec(plan: &ExecPlan) -> SetupError {
    let e = match execve(&plan.path, &plan.argv, &plan.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    SetupError::Exec(format!(
        "exec {:?}: {}",
        plan.shown,
        std::io::Error::from(e)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// runc's prepareEnv: the last value of a name wins, at the place of
    /// its last occurrence; the rest keep their order.
    #[test]
    fn a_later_variable_overrides_an_earlier_one() {
        let env = strings(&["PATH=/bin", "K=spec", "TERM=xterm", "K=exec", "A=1", "A="]);
        assert_eq!(
            dedup_env(&env).unwrap(),
            strings(&["PATH=/bin", "TERM=xterm", "K=exec", "A="])
        );
        assert_eq!(env_get(&dedup_env(&env).unwrap(), "K"), Some("exec"));
        // `=` in a value is part of the value.
        assert_eq!(
            dedup_env(&strings(&["X=a=b", "Y=1"])).unwrap(),
            strings(&["X=a=b", "Y=1"])
        );
    }

    #[test]
    fn entries_that_are_not_name_value_are_refused() {
        let e = dedup_env(&strings(&["A=1", "JUSTNAME"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "process.env[1] \"JUSTNAME\" is not NAME=VALUE (no '=')"
        );
        let e = dedup_env(&strings(&["=v", "B=2"])).unwrap_err();
        assert_eq!(e.to_string(), "process.env[0] \"=v\" has an empty name");
    }

    #[test]
    fn the_exec_plan_carries_the_deduplicated_env() {
        let p: Process = serde_json::from_value(serde_json::json!({
            "args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "env": ["K=spec", "HOME=/root", "K=flag"],
        }))
        .unwrap();
        let plan = prepare_exec(&p).unwrap();
        let env: Vec<&str> = plan.envp.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(env, ["HOME=/root", "K=flag"]);
    }

    #[test]
    fn node_lists_become_set_mempolicy_masks() {
        assert_eq!(node_mask("").unwrap(), Vec::<u64>::new());
        assert_eq!(node_mask("0").unwrap(), [1]);
        assert_eq!(node_mask("0-2,5").unwrap(), [0b100111]);
        assert_eq!(node_mask("64").unwrap(), [0, 1]);
        assert!(node_mask("3-1").unwrap_err().contains("ends before"));
        assert!(node_mask("x").unwrap_err().contains("not a node number"));
        assert!(node_mask("4096").unwrap_err().contains("beyond"));
    }
}
