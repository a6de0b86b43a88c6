//! Translates the OCI seccomp profile to BPF with seccompiler.
//!
//! seccompiler filters have one match action and one mismatch action, so a
//! profile becomes one filter per action: `{default on mismatch, allow on
//! match}` for the allowed syscalls and `{allow on mismatch, A on match}`
//! for each other action A. The kernel runs every installed filter and
//! takes the most restrictive answer.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscalls::SYSCALLS;
use super::SetupError;

/// The syscall number of `name` on x86_64.
pub fn syscall_number(name: &str) -> Option<i64> {
    SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| SYSCALLS[i].1)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SetupError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SetupError::Invalid(
                "seccomp action SCMP_ACT_NOTIFY is not supported".into(),
            ))
        }
    })
}

/// Compiles `profile`; returns the programs to install (in order) and the
/// syscall names that this kernel does not know (skipped, like runc).
pub fn compile(profile: &LinuxSeccomp) -> Result<(Vec<BpfProgram>, Vec<String>), SetupError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    let mut unknown = Vec::new();
    for sc in profile.syscalls().clone().unwrap_or_default() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == default {
            continue;
        }
        let mut conds = Vec::new();
        for a in sc.args().clone().unwrap_or_default() {
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    SeccompCmpOp::MaskedEq(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            let index = u8::try_from(a.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| SetupError::Invalid(format!("seccomp arg index {}", a.index())))?;
            conds.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| SetupError::Invalid(format!("seccomp condition: {e}")))?,
            );
        }
        let pos = match groups.iter().position(|(a, _)| *a == act) {
            Some(p) => p,
            None => {
                groups.push((act.clone(), BTreeMap::new()));
                groups.len() - 1
            }
        };
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                unknown.push(name.clone());
                continue;
            };
            let rules = groups[pos].1.entry(nr).or_default();
            if conds.is_empty() {
                rules.clear();
            } else if let Ok(r) = SeccompRule::new(conds.clone()) {
                rules.push(r);
            }
        }
    }
    let mut programs = Vec::new();
    let allow = groups.iter().position(|(a, _)| *a == SeccompAction::Allow);
    if default != SeccompAction::Allow {
        let rules = allow.map(|i| groups[i].1.clone()).unwrap_or_default();
        programs.push(build(rules, default.clone(), SeccompAction::Allow)?);
    }
    for (act, rules) in groups {
        if act != SeccompAction::Allow && !rules.is_empty() {
            programs.push(build(rules, SeccompAction::Allow, act)?);
        }
    }
    Ok((programs, unknown))
}

fn build(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SetupError> {
    let f = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| SetupError::Invalid(format!("seccomp filter: {e}")))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| SetupError::Invalid(format!("seccomp filter: {e}")))
}

/// Installs the programs on the calling thread (last step before exec).
pub fn install(programs: &[BpfProgram]) -> Result<(), SetupError> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| SetupError::Sys {
            what: "install seccomp filter".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_table_is_sorted_and_known() {
        assert_eq!(syscall_number("read"), Some(0));
        assert_eq!(syscall_number("mkdir"), Some(83));
        assert_eq!(syscall_number("nope"), None);
    }

    #[test]
    fn profile_compiles_to_one_program_per_action() {
        let p: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","bogus_call"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["chmod"],"action":"SCMP_ACT_ERRNO","errnoRet":13,
                 "args":[{"index":1,"value":511,"op":"SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap();
        let (progs, unknown) = compile(&p).unwrap();
        assert_eq!(progs.len(), 2);
        assert_eq!(unknown, vec!["bogus_call".to_string()]);
    }
}
