//! Seccomp filters for husk-vmm's own threads, one allowlist per kind of
//! thread (`allowlists.rs`), built with seccompiler. A syscall outside the
//! list kills the whole process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`,
//! which the kernel also logs as an audit record naming the syscall).
//!
//! Filters are per thread and inherited by threads and processes created
//! later, so each thread installs its own once it has done what its list
//! does not allow: the main thread after the last child was spawned
//! (`crate::confine`), vCPU threads and the net worker first thing, before
//! they touch the guest, the container pumps when they start.
//!
//! The mode is process-wide and off unless the `husk-vmm` binary turns it
//! on (`--seccomp`, default `on`), so the library's users and its unit
//! tests are not confined by surprise.

mod allowlists;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use allowlists::{allowlist, Context};

/// What a confined thread does with a syscall outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process with SIGSYS (the default for `husk-vmm`).
    On,
    /// Install no filters (operator escape hatch; logged as a warning).
    Off,
    /// Allow it but have the kernel log it (audit `type=1326` in the
    /// kernel log, with the thread's name): for extending the lists.
    Log,
}

static MODE: AtomicU8 = AtomicU8::new(MODE_OFF);
const MODE_OFF: u8 = 0;
const MODE_ON: u8 = 1;
const MODE_LOG: u8 = 2;

/// Sets the process-wide mode; call before the VM starts.
pub fn set_mode(mode: SeccompMode) {
    let m = match mode {
        SeccompMode::On => MODE_ON,
        SeccompMode::Off => MODE_OFF,
        SeccompMode::Log => MODE_LOG,
    };
    MODE.store(m, Ordering::SeqCst);
}

/// The process-wide mode.
pub fn mode() -> SeccompMode {
    match MODE.load(Ordering::SeqCst) {
        MODE_ON => SeccompMode::On,
        MODE_LOG => SeccompMode::Log,
        _ => SeccompMode::Off,
    }
}

/// The kinds of husk-vmm threads, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once every child process was spawned: the monitor
    /// or container supervisor loop, signals (read from a signalfd here,
    /// there is no signal thread), shutdown.
    Main,
    /// A builtin-engine vCPU thread (`husk_kvm::vcpu`, confined through
    /// `engine::kvm::confine_hook`).
    Vcpu,
    /// The builtin virtio-net worker (`husk_kvm::virtio::net`).
    NetWorker,
    /// A container-mode stdio pump or the `WaitProcess` waiter
    /// (`supervise.rs`).
    Pump,
    /// The console relay (`console.rs`): the console pipe into the log.
    Console,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::NetWorker,
        ThreadKind::Pump,
        ThreadKind::Console,
    ];

    /// The kind's name in logs and in `HUSK_VMM_TEST_FORBIDDEN_SYSCALL`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::NetWorker => "net",
            ThreadKind::Pump => "pump",
            ThreadKind::Console => "console",
        }
    }
}

/// A condition on one syscall argument (compared as 32 bits: every
/// argument we look at is an int, a flag word or an ioctl number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The argument is one of `values`.
    OneOf {
        /// Argument index (0..=5).
        index: u8,
        /// Allowed values.
        values: Vec<u64>,
    },
    /// None of the bits of `mask` are set.
    BitsClear {
        /// Argument index.
        index: u8,
        /// Forbidden bits.
        mask: u64,
    },
    /// All bits of `mask` are set.
    BitsSet {
        /// Argument index.
        index: u8,
        /// Required bits.
        mask: u64,
    },
}

/// One allowed syscall and the conditions (all must hold) on its
/// arguments; none means any arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The syscall number (x86_64).
    pub nr: i64,
    /// Its name, as in `man 2`.
    pub name: &'static str,
    /// Conditions on its arguments.
    pub conds: Vec<Cond>,
}

impl Allowed {
    /// `constant` is the `libc::SYS_*` name it came from.
    fn new(nr: i64, constant: &'static str, conds: Vec<Cond>) -> Self {
        Allowed {
            nr,
            name: constant.trim_start_matches("SYS_"),
            conds,
        }
    }
}

/// A filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("cannot build the seccomp filter for the {kind} thread")]
    Build {
        /// Which thread's.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter on the {kind} thread")]
    Install {
        /// Which thread's.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

fn condition(
    index: u8,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .map_err(seccompiler::Error::Backend)
}

/// The rules for one syscall: the conditions ANDed, each `OneOf`
/// multiplying the rules (a syscall matches if any rule does).
fn rules_for(a: &Allowed) -> Result<Vec<SeccompRule>, seccompiler::Error> {
    if a.conds.is_empty() {
        return Ok(Vec::new());
    }
    let mut alternatives: Vec<Vec<SeccompCondition>> = vec![Vec::new()];
    for c in &a.conds {
        match c {
            Cond::OneOf { index, values } => {
                let mut next = Vec::with_capacity(alternatives.len() * values.len());
                for alt in &alternatives {
                    for &v in values {
                        let mut alt = alt.clone();
                        alt.push(condition(*index, SeccompCmpOp::Eq, v)?);
                        next.push(alt);
                    }
                }
                alternatives = next;
            }
            Cond::BitsClear { index, mask } => {
                for alt in &mut alternatives {
                    alt.push(condition(*index, SeccompCmpOp::MaskedEq(*mask), 0)?);
                }
            }
            Cond::BitsSet { index, mask } => {
                for alt in &mut alternatives {
                    alt.push(condition(*index, SeccompCmpOp::MaskedEq(*mask), *mask)?);
                }
            }
        }
    }
    alternatives
        .into_iter()
        .map(|conds| SeccompRule::new(conds).map_err(seccompiler::Error::Backend))
        .collect()
}

/// Merges an allowlist into seccompiler's map: a syscall listed twice is
/// allowed when either entry allows it (unconditional wins).
fn rule_map(list: &[Allowed]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::Error> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in list {
        let rules = rules_for(a)?;
        let entry = map.entry(a.nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), rules.is_empty()) {
            (_, true) => *entry = None,
            (Some(existing), false) => existing.extend(rules),
            (None, false) => {}
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::Error> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(seccompiler::Error::Backend)?;
    f.try_into().map_err(seccompiler::Error::Backend)
}

/// The programs for `kind`, in installation order: one per errno for the
/// syscalls [`refused`] answers with an error, then the allowlist (a miss
/// kills the process, or is logged in [`SeccompMode::Log`]). The allowlist
/// goes last: installing a program takes `prctl` and `seccomp`, which
/// most lists forbid.
pub fn compile(
    kind: ThreadKind,
    ctx: &Context,
    mode: SeccompMode,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let build = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let miss = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let refused = refused(kind);
    let mut allowed = rule_map(&allowlist(kind, ctx)).map_err(build)?;
    let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for r in &refused {
        // The allowlist lets it through; the errno program answers it.
        allowed.insert(r.nr, Vec::new());
        by_errno
            .entry(r.errno)
            .or_default()
            .insert(r.nr, Vec::new());
    }
    let mut progs = Vec::with_capacity(by_errno.len() + 1);
    for (errno, rules) in by_errno {
        progs.push(
            program(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
            )
            .map_err(build)?,
        );
    }
    progs.push(program(allowed, miss, SeccompAction::Allow).map_err(build)?);
    Ok(progs)
}

/// A syscall answered with an errno instead of killing the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The syscall number.
    pub nr: i64,
    /// Its name.
    pub name: &'static str,
    /// What it returns.
    pub errno: i32,
}

/// What `kind` gets an error for: `clone3` (ENOSYS) where threads are
/// created, so glibc falls back to `clone`, whose flags the allowlist can
/// see; opening files (EACCES) outside the main thread, because glibc's
/// malloc reads `/proc/sys/vm/overcommit_memory` once, in whichever
/// thread first shrinks a per-thread heap, and takes a failure as "no".
pub fn refused(kind: ThreadKind) -> Vec<Refused> {
    let r = |nr, name, errno| Refused { nr, name, errno };
    let mut v = Vec::new();
    if matches!(kind, ThreadKind::Main | ThreadKind::Vcpu) {
        v.push(r(libc::SYS_clone3, "clone3", libc::ENOSYS));
    }
    if kind != ThreadKind::Main {
        v.push(r(libc::SYS_openat, "openat", libc::EACCES));
        v.push(r(libc::SYS_open, "open", libc::EACCES));
    }
    v
}

/// Confines the calling thread as `kind` in the current mode (nothing in
/// [`SeccompMode::Off`]). Also sets no_new_privs, which seccomp needs.
pub fn install(kind: ThreadKind, ctx: &Context) -> Result<(), SeccompError> {
    let mode = mode();
    if mode == SeccompMode::Off {
        probe_if_asked(kind);
        return Ok(());
    }
    for p in compile(kind, ctx, mode)? {
        seccompiler::apply_filter(&p).map_err(|source| SeccompError::Install {
            kind: kind.name(),
            source,
        })?;
    }
    tracing::debug!(thread = kind.name(), ?mode, "seccomp filter installed");
    probe_if_asked(kind);
    Ok(())
}

/// This process's context for the threads that signal nobody but
/// themselves.
pub fn own_context() -> Context {
    Context {
        pid: std::process::id() as i32,
        children: Vec::new(),
    }
}

/// The environment variable that makes a just-confined thread of the named
/// kind (`main`, `vcpu`, `net`, `pump`) make a syscall no list allows, so
/// a test can see the process die of SIGSYS.
pub const FORBIDDEN_PROBE_ENV: &str = "HUSK_VMM_TEST_FORBIDDEN_SYSCALL";

/// `personality(0xffffffff)` only reads the execution domain: harmless
/// when no filter stops it, and in no allowlist.
fn probe_if_asked(kind: ThreadKind) {
    if std::env::var(FORBIDDEN_PROBE_ENV).is_ok_and(|v| v == kind.name()) {
        tracing::warn!(
            thread = kind.name(),
            "{FORBIDDEN_PROBE_ENV}: making a forbidden syscall (personality)"
        );
        // SAFETY: personality(0xffffffff) queries the persona and changes
        // nothing.
        let r = unsafe { libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) };
        tracing::warn!(result = r, "the forbidden syscall returned");
    }
}

/// Running a unit test under the real filters. The mode is process-wide
/// and a miss kills the process, so the test binary runs the one test
/// again in a child process with the mode on, and the parent checks how
/// the child ended.
#[cfg(test)]
pub(crate) mod testing {
    use std::process::Command;

    /// Set in the child.
    const CHILD_ENV: &str = "HUSK_VMM_CONFINED_TEST_CHILD";

    /// In the child (seccomp mode on): true, the caller runs its body. In
    /// the parent: reruns test `module::name` in a child, asserts it
    /// passed, returns false.
    pub fn in_child_process(module: &str, name: &str) -> bool {
        if std::env::var_os(CHILD_ENV).is_some() {
            super::set_mode(super::SeccompMode::On);
            return true;
        }
        let module = module.split_once("::").map_or(module, |(_, m)| m);
        let test = format!("{module}::{name}");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{test} under seccomp: {:?} (SIGSYS is a syscall missing from an allowlist; the kernel log names it)\n{text}",
            out.status
        );
        assert!(text.contains("1 passed"), "{test} did not run:\n{text}");
        false
    }
}

#[cfg(test)]
mod tests;
