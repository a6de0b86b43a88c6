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

use super::SetupError;

/// The syscall number of `name` on x86_64; `None` for a name the kernel
/// does not have (which a profile's rule then skips, as runc does).
pub fn syscall_number(name: &str) -> Option<i64> {
    name.parse::<syscalls::x86_64::Sysno>()
        .ok()
        .map(|s| i64::from(s.id()))
}

/// The seccompiler action of `a`; `field` names where it is in the spec,
/// for the error.
fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    field: &dyn Fn() -> String,
) -> Result<SeccompAction, SetupError> {
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
            return Err(SetupError::Invalid(format!(
                "{}: seccomp action SCMP_ACT_NOTIFY is not supported (no listener can \
                 receive the guest kernel's notifications)",
                field()
            )))
        }
    })
}

/// Compiles `profile`; returns the programs to install (in order) and the
/// syscall names that this kernel does not know (skipped, like runc).
pub fn compile(profile: &LinuxSeccomp) -> Result<(Vec<BpfProgram>, Vec<String>), SetupError> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        &|| "linux.seccomp.defaultAction".into(),
    )?;
    let mut groups: Vec<(SeccompAction, BTreeMap<i64, Vec<SeccompRule>>)> = Vec::new();
    let mut unknown = Vec::new();
    for (i, sc) in profile
        .syscalls()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let act = action(sc.action(), sc.errno_ret(), &|| {
            format!("linux.seccomp.syscalls[{i}].action")
        })?;
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

/// Whether `spec` lets its processes open AF_VSOCK sockets.
pub fn vsock_allowed(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(husk_protocol::GUEST_VSOCK_ANNOTATION))
        .is_some_and(|v| v == "allow")
}

/// The rule every container gets unless its spec allows vsock:
/// `socket(AF_VSOCK, ..)` fails with EAFNOSUPPORT, as on a kernel without
/// vsock. The agent's port is for the host alone; a container that could
/// open vsock sockets could also reach whatever the host forwards.
pub fn deny_vsock() -> Result<BpfProgram, SetupError> {
    let family = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .map_err(|e| SetupError::Invalid(format!("seccomp condition: {e}")))?;
    let rule = SeccompRule::new(vec![family])
        .map_err(|e| SetupError::Invalid(format!("seccomp rule: {e}")))?;
    build(
        BTreeMap::from([(libc::SYS_socket, vec![rule])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
    )
}

/// The programs a container process gets: its profile's, then the vsock
/// rule unless the spec allows vsock.
pub fn programs_for(spec: &oci_spec::runtime::Spec) -> Result<Vec<BpfProgram>, SetupError> {
    let mut programs = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => compile(profile)?.0,
        None => Vec::new(),
    };
    if !vsock_allowed(spec) {
        programs.push(deny_vsock()?);
    }
    Ok(programs)
}

/// Installs the programs on the calling thread (last step before exec).
///
/// Unlike `seccompiler::apply_filter` this does not set no_new_privs: as
/// with runc, a process whose spec leaves `noNewPrivileges` false keeps it
/// off, and installs its filters while it still holds CAP_SYS_ADMIN. The
/// caller sets no_new_privs first when the spec asks for it.
pub fn install(programs: &[BpfProgram]) -> Result<(), SetupError> {
    for p in programs {
        let len = u16::try_from(p.len()).map_err(|_| {
            SetupError::Invalid(format!("seccomp program of {} instructions", p.len()))
        })?;
        let prog = libc::sock_fprog {
            len,
            // seccompiler's sock_filter has the kernel's layout (u16, u8,
            // u8, u32), as libc's does.
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `prog` points at `len` instructions that live in `p` for
        // the duration of the call; the kernel copies them.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(SetupError::Sys {
                what: "install seccomp filter".into(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_names_resolve_to_x86_64_numbers() {
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

    /// The host refuses seccomp user notification before a VM boots; an
    /// agent asked directly still refuses it, naming the field.
    #[test]
    fn notify_is_refused_naming_the_field() {
        let p: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO"},
                {"names":["mount"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap();
        let e = compile(&p).unwrap_err().to_message();
        assert!(
            e.starts_with("linux.seccomp.syscalls[1].action: seccomp action SCMP_ACT_NOTIFY"),
            "{e}"
        );
        let p: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
        let e = compile(&p).unwrap_err().to_message();
        assert!(e.starts_with("linux.seccomp.defaultAction: "), "{e}");
    }

    fn spec_with(annotations: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "annotations": annotations
        }))
        .unwrap()
    }

    #[test]
    fn vsock_is_denied_unless_the_spec_allows_it() {
        let plain = spec_with(serde_json::json!({}));
        assert!(!vsock_allowed(&plain));
        assert_eq!(programs_for(&plain).unwrap().len(), 1, "the vsock rule");
        let other = spec_with(serde_json::json!({"husk.guest_vsock": "yes"}));
        assert!(!vsock_allowed(&other));
        let allowed = spec_with(serde_json::json!({"husk.guest_vsock": "allow"}));
        assert!(vsock_allowed(&allowed));
        assert!(programs_for(&allowed).unwrap().is_empty());
    }

    /// The rule runs in a forked child: AF_VSOCK fails with EAFNOSUPPORT,
    /// AF_UNIX still works, and no_new_privs stays off.
    #[test]
    fn deny_vsock_rule_refuses_only_vsock() {
        let prog = deny_vsock().unwrap();
        match crate::sys::fork().unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    // Without the rule this host opens vsock sockets, so
                    // the test cannot pass by accident.
                    use nix::errno::Errno;
                    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
                    let open = |family| socket(family, SockType::Stream, SockFlag::empty(), None);
                    let before = open(AddressFamily::Vsock);
                    if before.is_err() {
                        crate::sys::exit_now(2);
                    }
                    // Unprivileged test runs cannot install without NNP.
                    if !nix::unistd::geteuid().is_root() {
                        nix::sys::prctl::set_no_new_privs().ok()?;
                    }
                    install(&[prog]).ok()?;
                    let v = open(AddressFamily::Vsock);
                    let u = open(AddressFamily::Unix);
                    let nnp = nix::sys::prctl::get_no_new_privs().ok()?;
                    let nnp_ok = !nix::unistd::geteuid().is_root() || !nnp;
                    Some(v.err() == Some(Errno::EAFNOSUPPORT) && u.is_ok() && nnp_ok)
                })();
                crate::sys::exit_now(if code == Some(true) { 0 } else { 1 })
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).unwrap();
                assert_ne!(
                    st,
                    nix::sys::wait::WaitStatus::Exited(child, 2),
                    "this host cannot open AF_VSOCK sockets at all (load vsock_loopback or vhost_vsock)"
                );
                assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
