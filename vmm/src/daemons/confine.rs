//! What the monitor takes away from its device daemons between fork and
//! exec. Both daemons parse rings and requests a hostile guest writes, so
//! each runs with `no_new_privs`, a trimmed capability set and seccomp
//! filters installed here, before its own code runs (filters survive exec
//! and cannot be removed).
//!
//! * virtiofsd keeps only the capabilities its sandbox and file operations
//!   need (no `CAP_MKNOD`, `CAP_FSETID`, `CAP_SETFCAP`, even in the bounding
//!   set), and a filter refuses every way of giving a host file a setuid or
//!   setgid bit or making a device node, whatever virtiofsd is asked.
//! * husk-vsockd keeps no capabilities at all, may make only the syscalls
//!   it needs (an allowlist), may create only Unix sockets and may not open
//!   files for writing or change any file's metadata (it still runs as
//!   uid 0, which owns most of the host's files).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use caps::Capability;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use husk_vmm_contract::config::VirtiofsdSandbox;

/// A daemon's confinement could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// seccompiler refused a filter (a bug in the rules below).
    #[error("cannot build the {daemon} seccomp filter")]
    Filter {
        /// The daemon.
        daemon: &'static str,
        /// Why.
        #[source]
        source: seccompiler::BackendError,
    },
}

/// The capabilities virtiofsd 1.14 asks for by default (its
/// `drop_capabilities`); `--modcaps` edits this list.
pub const VIRTIOFSD_DEFAULT_CAPS: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

/// Defaults virtiofsd is told to drop (`--modcaps=-...`) and that are
/// taken out of its bounding set as well:
/// * `CAP_MKNOD`: guest root cannot make device nodes on the host (FIFOs,
///   sockets and overlayfs whiteouts need no capability).
/// * `CAP_FSETID`: a write through virtiofsd clears the setuid bit of a
///   host file, as it would for any unprivileged writer; otherwise guest
///   root could replace the contents of a setuid-root binary already in the
///   share and keep the bit.
/// * `CAP_SETFCAP`: no `security.capability` xattr (file capabilities) can
///   be set, even if xattr support is ever turned on.
pub const VIRTIOFSD_REFUSED_CAPS: [Capability; 3] = [
    Capability::CAP_MKNOD,
    Capability::CAP_FSETID,
    Capability::CAP_SETFCAP,
];

/// The value of virtiofsd's `--modcaps` that drops [`VIRTIOFSD_REFUSED_CAPS`].
pub fn virtiofsd_modcaps() -> String {
    VIRTIOFSD_REFUSED_CAPS
        .iter()
        .map(|c| {
            let name = c.to_string();
            format!("-{}", name.trim_start_matches("CAP_").to_ascii_lowercase())
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// The bounding set virtiofsd keeps (measured with virtiofsd 1.14.0: fewer
/// and it fails to start). Beyond its file-operation capabilities:
/// `CAP_SYS_ADMIN` for the namespace sandbox (unshare, mounts,
/// pivot_root), `CAP_SETPCAP` for trimming its own bounding set,
/// `CAP_DAC_READ_SEARCH` (without it libcap-ng cannot apply the set), and
/// `CAP_SYS_CHROOT` only for `--sandbox chroot`.
pub fn virtiofsd_bounding_set(sandbox: VirtiofsdSandbox) -> u64 {
    let mut keep: u64 = VIRTIOFSD_DEFAULT_CAPS
        .iter()
        .filter(|c| !VIRTIOFSD_REFUSED_CAPS.contains(c))
        .fold(0, |m, c| m | c.bitmask());
    keep |= Capability::CAP_SYS_ADMIN.bitmask()
        | Capability::CAP_SETPCAP.bitmask()
        | Capability::CAP_DAC_READ_SEARCH.bitmask();
    if sandbox == VirtiofsdSandbox::Chroot {
        keep |= Capability::CAP_SYS_CHROOT.bitmask();
    }
    keep
}

/// How one daemon is confined; [`Confinement::install`] puts it into the
/// daemon's `Command`.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Capabilities left in the bounding set (a bit per capability).
    bounding: u64,
    /// Also empty the permitted and effective sets (the daemon runs with
    /// no capabilities at all).
    drop_all: bool,
    /// Seccomp programs, installed in order.
    filters: Vec<BpfProgram>,
}

impl Confinement {
    /// virtiofsd: its bounding set trimmed to [`virtiofsd_bounding_set`],
    /// no inheritable or ambient capabilities, `no_new_privs`, and
    /// [`virtiofsd_filters`]. virtiofsd then drops to its own set.
    pub fn virtiofsd(sandbox: VirtiofsdSandbox) -> Result<Self, ConfineError> {
        Ok(Confinement {
            bounding: virtiofsd_bounding_set(sandbox),
            drop_all: false,
            filters: virtiofsd_filters(sandbox)?,
        })
    }

    /// husk-vsockd: no capabilities, `no_new_privs`, and
    /// [`vsock_filters`].
    pub fn vsock() -> Result<Self, ConfineError> {
        Ok(Confinement {
            bounding: 0,
            drop_all: true,
            filters: vsock_filters()?,
        })
    }

    /// Makes `cmd`'s child confine itself just before exec. Everything is
    /// prepared here; the child only makes syscalls.
    pub fn install(self, cmd: &mut Command) {
        // SAFETY: `confine_child` only makes async-signal-safe syscalls
        // (capget, prctl, capset, seccomp) on memory prepared before the
        // fork; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || confine_child(self.bounding, self.drop_all, &self.filters));
        }
    }

    /// The seccomp programs (for tests).
    pub fn filters(&self) -> &[BpfProgram] {
        &self.filters
    }

    /// The bounding set kept (for tests).
    pub fn bounding(&self) -> u64 {
        self.bounding
    }
}

const CAP_V3: u32 = 0x2008_0522; // _LINUX_CAPABILITY_VERSION_3

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Runs in the forked child. Async-signal-safe.
fn confine_child(bounding: u64, drop_all: bool, filters: &[BpfProgram]) -> std::io::Result<()> {
    let last_err = std::io::Error::last_os_error;
    let mut hdr = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two CapData (the v3 layout) into `data`.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(last_err());
    }
    let privileged = data.iter().any(|d| d.permitted != 0);
    // Without capabilities the bounding set cannot be changed, and needs no
    // change: no_new_privs below keeps exec from granting file capabilities.
    if privileged {
        for cap in 0..64u64 {
            if bounding & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments has no memory effects.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                let e = last_err();
                // EINVAL: past the last capability this kernel knows.
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break;
                }
                return Err(e);
            }
        }
    }
    // SAFETY: as above.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(last_err());
    }
    // A root exec keeps the inheritable set whatever the bounding set says.
    for d in &mut data {
        d.inheritable = 0;
        if drop_all {
            d.permitted = 0;
            d.effective = 0;
        }
    }
    // SAFETY: capset reads two CapData from `data`.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(last_err());
    }
    // SAFETY: as above.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last_err());
    }
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| match e {
            seccompiler::Error::Seccomp(io) | seccompiler::Error::Prctl(io) => io,
            _ => std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
    }
    Ok(())
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type Built<T> = Result<T, seccompiler::BackendError>;

fn cond(arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64) -> Built<SeccompCondition> {
    SeccompCondition::new(arg, len, op, value)
}

/// `arg & mask == value`, on the argument's low 32 bits (ints, mode_t).
fn masked(arg: u8, mask: u32, value: u32) -> Built<SeccompCondition> {
    cond(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask.into()),
        value.into(),
    )
}

const SUID: u32 = libc::S_ISUID;
const SGID: u32 = libc::S_ISGID;

/// Rules matching a mode argument that has the setuid or the setgid bit,
/// each with `extra` conditions too.
fn privileged_mode(mode_arg: u8, extra: &[SeccompCondition]) -> Built<Vec<SeccompRule>> {
    [SUID, SGID]
        .into_iter()
        .map(|bit| {
            let mut c = extra.to_vec();
            c.push(masked(mode_arg, bit, bit)?);
            SeccompRule::new(c)
        })
        .collect()
}

/// Rules for an open-style call (`flags_arg`, `mode_arg`): the mode counts
/// only with `O_CREAT` or `O_TMPFILE`; otherwise that register is garbage.
fn creating_privileged(flags_arg: u8, mode_arg: u8) -> Built<Vec<SeccompRule>> {
    let creat = libc::O_CREAT as u32;
    let tmpfile = libc::O_TMPFILE as u32;
    let mut v = privileged_mode(mode_arg, &[masked(flags_arg, creat, creat)?])?;
    v.extend(privileged_mode(
        mode_arg,
        &[masked(flags_arg, tmpfile, tmpfile)?],
    )?);
    Ok(v)
}

/// Rules for a mknod-style call: block and character devices (except the
/// 0:0 character device, an overlayfs whiteout, which is no device) and
/// setuid/setgid modes.
fn device_or_privileged_node(mode_arg: u8, dev_arg: u8) -> Built<Vec<SeccompRule>> {
    let fmt = libc::S_IFMT;
    let mut v = vec![
        SeccompRule::new(vec![masked(mode_arg, fmt, libc::S_IFBLK)?])?,
        SeccompRule::new(vec![
            masked(mode_arg, fmt, libc::S_IFCHR)?,
            // dev_t is 64 bits wide.
            cond(dev_arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0)?,
        ])?,
    ];
    v.extend(privileged_mode(mode_arg, &[])?);
    Ok(v)
}

/// Rules that match a syscall whatever its arguments.
fn always(nrs: &[i64]) -> Rules {
    nrs.iter().map(|nr| (*nr, Vec::new())).collect()
}

fn compile(
    daemon: &'static str,
    rules: impl FnOnce() -> Built<Rules>,
    action: SeccompAction,
) -> Result<BpfProgram, ConfineError> {
    rules()
        .and_then(|r| SeccompFilter::new(r, SeccompAction::Allow, action, TargetArch::x86_64))
        .and_then(BpfProgram::try_from)
        .map_err(|source| ConfineError::Filter { daemon, source })
}

fn errno(e: i32) -> SeccompAction {
    SeccompAction::Errno(e as u32)
}

/// Syscalls whose arguments no filter can read, refused with ENOSYS as if
/// this kernel lacked them: `openat2` (flags and mode live in a struct;
/// virtiofsd probes it once and then uses `openat`) and io_uring (its
/// operations bypass seccomp).
const OPAQUE: [i64; 4] = [
    libc::SYS_openat2,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Refuses every x32-ABI syscall (numbers with bit 30 set) with ENOSYS:
/// they share the x86_64 audit arch, so the per-number rules of the other
/// filters would not see them. Neither daemon is an x32 program.
fn no_x32() -> BpfProgram {
    const LD_NR: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter {
            code: LD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: JGE,
            jt: 0,
            jf: 1,
            k: 0x4000_0000,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        sock_filter {
            code: RET,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

/// virtiofsd's filters, on top of which it installs its own allowlist:
/// 1. EPERM for any chmod with `S_ISUID`/`S_ISGID` in the mode (setgid
///    directories included), any open/creat that creates a file with them,
///    and any mknod of a block or character device or with them;
/// 2. ENOSYS for `openat2` (its mode is in a struct a filter cannot read;
///    virtiofsd probes it once and then uses `openat`) and io_uring (whose
///    operations no filter sees);
/// 3. ENOSYS for x32 syscalls.
///
/// With `--sandbox none` `openat2` stays allowed: there nothing but its
/// `RESOLVE_IN_ROOT` keeps a guest-supplied name such as `..` inside the
/// share (virtiofsd does not check names itself; pivot_root or chroot does
/// it in the other sandboxes), and a way out of the share is worse than
/// the setuid bit an `openat2` create could then set.
pub fn virtiofsd_filters(sandbox: VirtiofsdSandbox) -> Result<Vec<BpfProgram>, ConfineError> {
    let d = "virtiofsd";
    let eperm = || -> Built<Rules> {
        let mut r = Rules::new();
        r.insert(libc::SYS_chmod, privileged_mode(1, &[])?);
        r.insert(libc::SYS_fchmod, privileged_mode(1, &[])?);
        r.insert(libc::SYS_fchmodat, privileged_mode(2, &[])?);
        r.insert(libc::SYS_fchmodat2, privileged_mode(2, &[])?);
        r.insert(libc::SYS_creat, privileged_mode(1, &[])?);
        r.insert(libc::SYS_open, creating_privileged(1, 2)?);
        r.insert(libc::SYS_openat, creating_privileged(2, 3)?);
        r.insert(libc::SYS_mknod, device_or_privileged_node(1, 2)?);
        r.insert(libc::SYS_mknodat, device_or_privileged_node(2, 3)?);
        Ok(r)
    };
    Ok(vec![
        compile(d, eperm, errno(libc::EPERM))?,
        compile(
            d,
            || {
                let mut r = always(&OPAQUE);
                if sandbox == VirtiofsdSandbox::None {
                    r.remove(&libc::SYS_openat2);
                }
                Ok(r)
            },
            errno(libc::ENOSYS),
        )?,
        no_x32(),
    ])
}

/// Every syscall husk-vsockd makes, the only ones its filter lets through
/// (anything else fails with EPERM). Measured with `strace -f` over
/// `tests/vhost_user_devices.rs::husk_vsockd_serves_the_builtin_frontend`
/// (start, both connection kinds, data, half-close, a driver reset) and
/// `husk run` (which spawns it through `process::Supervised`), plus the
/// paths those do not take: a frontend
/// reconnecting (threads, memory tables), exits and panics.
const VSOCKD_ALLOWED: &[i64] = &[
    // the monitor's own pre-exec steps after the filters (`process.rs`:
    // is the parent still there?), exec and the loader
    libc::SYS_getppid,
    libc::SYS_execve,
    libc::SYS_brk,
    libc::SYS_arch_prctl,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prlimit64,
    libc::SYS_access,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_getrandom,
    libc::SYS_poll,
    // memory (guest RAM is mmapped from the frontend's fds)
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    // threads, signals, time
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_prctl,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // fds, epoll, eventfds
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_dup,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // Unix sockets (the domain is checked by the first filter)
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_unlink,
];

/// husk-vsockd's filters:
/// 1. EPERM for opening a file for writing, creating or truncating it, and
///    for sockets other than `AF_UNIX`;
/// 2. ENOSYS for `openat2` and io_uring (arguments no filter can read);
/// 3. ENOSYS for x32 syscalls;
/// 4. EPERM for every syscall not in [`VSOCKD_ALLOWED`] (so nothing that
///    changes files' names, owners, modes or attributes, no ptrace, mount,
///    bpf, modules, ...).
pub fn vsock_filters() -> Result<Vec<BpfProgram>, ConfineError> {
    let d = "husk-vsockd";
    let writing = |flags: u8| -> Built<Vec<SeccompRule>> {
        let acc = libc::O_ACCMODE as u32;
        let mut v = vec![
            SeccompRule::new(vec![masked(flags, acc, libc::O_WRONLY as u32)?])?,
            SeccompRule::new(vec![masked(flags, acc, libc::O_RDWR as u32)?])?,
        ];
        for f in [libc::O_CREAT, libc::O_TRUNC, libc::O_TMPFILE] {
            v.push(SeccompRule::new(vec![masked(flags, f as u32, f as u32)?])?);
        }
        Ok(v)
    };
    let not_unix = || -> Built<Vec<SeccompRule>> {
        let domain = cond(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            libc::AF_UNIX as u64,
        )?;
        Ok(vec![SeccompRule::new(vec![domain])?])
    };
    let eperm = || -> Built<Rules> {
        let mut r = Rules::new();
        r.insert(libc::SYS_open, writing(1)?);
        r.insert(libc::SYS_openat, writing(2)?);
        r.insert(libc::SYS_socket, not_unix()?);
        r.insert(libc::SYS_socketpair, not_unix()?);
        Ok(r)
    };
    Ok(vec![
        compile(d, eperm, errno(libc::EPERM))?,
        compile(d, || Ok(always(&OPAQUE)), errno(libc::ENOSYS))?,
        no_x32(),
        allow_only(d, VSOCKD_ALLOWED, errno(libc::EPERM))?,
    ])
}

/// A filter that lets `allowed` through and answers everything else with
/// `refused`.
fn allow_only(
    daemon: &'static str,
    allowed: &[i64],
    refused: SeccompAction,
) -> Result<BpfProgram, ConfineError> {
    SeccompFilter::new(
        always(allowed),
        refused,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|source| ConfineError::Filter { daemon, source })
}

#[cfg(test)]
#[path = "confine_tests.rs"]
mod tests;
