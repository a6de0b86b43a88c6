//! What runs in the forked child: namespaces, the pid-namespace fork, the
//! rootfs, then (after StartContainer for an init) the process setup and
//! exec. Every failure goes back to the agent as a [`ChildMsg::Error`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::unistd::{dup2, getpid, sethostname, setsid, ForkResult};
use oci_spec::runtime::{Process, Spec};

use super::stdio::ChildStdio;
use super::sync::{recv_msg, send_msg, ChildMsg, ParentMsg};
use super::{capabilities, hooks, namespaces, process, rootfs, seccomp, sys, SetupError};

/// Building a container's init, or joining a running one for an exec.
#[derive(Debug)]
pub enum Mode<'a> {
    /// A new container whose rootfs is at this (absolute, guest) path.
    Create {
        /// The rootfs.
        rootfs: &'a Path,
    },
    /// An exec into the container whose init has this pid.
    Exec {
        /// The container's init pid.
        init_pid: i32,
    },
}

/// Everything the child needs; it lives in the child's copy of memory.
#[derive(Debug)]
pub struct ChildArgs<'a> {
    /// Create or exec.
    pub mode: Mode<'a>,
    /// The container's id.
    pub id: &'a str,
    /// The container's spec.
    pub spec: &'a Spec,
    /// The process to run (the spec's, or the exec's).
    pub process: &'a Process,
    /// The container's cgroup directory to join.
    pub cgroup: Option<&'a Path>,
    /// The child's stdio.
    pub stdio: ChildStdio,
    /// The child's end of the sync socket.
    pub sync: OwnedFd,
}

/// Runs the child; never returns.
pub fn run(args: ChildArgs<'_>) -> ! {
    let sync = args.sync.try_clone().ok();
    let extra = sync.as_ref().map(|s| s.as_raw_fd());
    let e = match child_main(args, extra) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    if let Some(s) = sync {
        let _ = send_msg(
            &s,
            &ChildMsg::Error {
                code: e.code(),
                message: e.to_message(),
            },
        );
    }
    crate::sys::exit_now(if matches!(e, SetupError::Exec(_)) {
        127
    } else {
        1
    })
}

fn close_other_fds(keep: &[i32]) {
    let mut keep: Vec<u32> = keep.iter().map(|f| *f as u32).filter(|f| *f > 2).collect();
    keep.sort_unstable();
    let mut next = 3u32;
    for k in keep {
        if k > next {
            let _ = crate::sys::close_range(next, k - 1);
        }
        next = k + 1;
    }
    let _ = crate::sys::close_range(next, u32::MAX);
}

fn child_main(
    args: ChildArgs<'_>,
    extra_keep: Option<i32>,
) -> Result<std::convert::Infallible, SetupError> {
    crate::sys::reset_signals();
    let mut keep = vec![args.sync.as_raw_fd()];
    keep.extend(extra_keep);
    keep.extend(args.stdio.fds.iter().map(|f| f.as_raw_fd()));
    close_other_fds(&keep);
    if let Some(cg) = args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), "0")
            .map_err(sys(format!("join cgroup {}", cg.display())))?;
    }
    let linux = args.spec.linux().clone().unwrap_or_default();
    let plan = match args.mode {
        Mode::Create { .. } => namespaces::plan_create(&linux)?,
        Mode::Exec { init_pid } => namespaces::plan_exec(init_pid)?,
    };
    namespaces::enter(&plan, || {
        send_msg(&args.sync, &ChildMsg::MapIds).map_err(sync_err)?;
        match recv_msg::<ParentMsg>(&args.sync, Duration::from_secs(30)).map_err(sync_err)? {
            Some(ParentMsg::Continue) => Ok(()),
            other => Err(SetupError::Invalid(format!(
                "unexpected answer to MapIds: {other:?}"
            ))),
        }
    })?;
    if plan.fork_for_pid {
        match crate::sys::fork().map_err(sys("fork into the pid namespace"))? {
            ForkResult::Parent { child } => {
                let _ = send_msg(&args.sync, &ChildMsg::Pid(child.as_raw()));
                crate::sys::exit_now(0);
            }
            ForkResult::Child => {}
        }
    } else {
        send_msg(&args.sync, &ChildMsg::Pid(getpid().as_raw())).map_err(sync_err)?;
    }

    setsid().map_err(sys("setsid"))?;
    let tty = args.stdio.tty;
    for (i, fd) in args.stdio.fds.iter().enumerate() {
        dup2(fd.as_raw_fd(), i as i32).map_err(sys(format!("dup2 stdio fd {i}")))?;
    }
    drop(args.stdio);

    let p = args.process;
    process::apply_oom_score_adj(p)?;
    process::apply_rlimits(p)?;
    process::apply_memory_policy(args.spec)?;
    if let Mode::Create { rootfs: root } = args.mode {
        if let Some(h) = args.spec.hostname() {
            sethostname(h).map_err(sys(format!("set hostname {h:?}")))?;
        }
        if let Some(d) = args.spec.domainname() {
            set_domainname(d)?;
        }
        // createContainer hooks: after the mounts, before pivot_root.
        let created = args
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.create_container().clone())
            .unwrap_or_default();
        rootfs::setup(args.spec, root, || {
            if created.is_empty() {
                return Ok(());
            }
            let state = hooks::state_json(args.spec, args.id, "creating", bundle_of(root));
            hooks::run("createContainer", &created, &state, Some(root))
        })?;
        rootfs::apply_sysctl(args.spec)?;
        rootfs::mask_paths(args.spec)?;
        rootfs::readonly_paths(args.spec)?;
        rootfs::readonly_root(args.spec)?;
        if tty {
            let n = setup_pty(&args.sync, p)?;
            console_on(&format!("/dev/pts/{n}"))?;
        }
        send_msg(&args.sync, &ChildMsg::Ready).map_err(sync_err)?;
        match recv_msg::<ParentMsg>(&args.sync, Duration::from_secs(u32::MAX as u64)) {
            Ok(Some(ParentMsg::Start)) => {}
            // The agent dropped the container before starting it.
            _ => crate::sys::exit_now(1),
        }
    }
    if tty && matches!(args.mode, Mode::Exec { .. }) {
        setup_pty(&args.sync, p)?;
    }
    process::enter_cwd(p)?;
    let exec = process::prepare_exec(p)?;
    let programs = seccomp::programs_for(args.spec)?;
    let nnp = p.no_new_privileges().unwrap_or(false);
    if !nnp {
        seccomp::install(&programs)?;
    }
    capabilities::drop_bounding(p.capabilities())?;
    process::switch_user(p)?;
    capabilities::apply(p.capabilities())?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(sys("prctl PR_SET_NO_NEW_PRIVS"))?;
        seccomp::install(&programs)?;
    }
    if let Mode::Create { rootfs: root } = args.mode {
        // startContainer hooks: in the container, as its process, just
        // before the exec (runc's order).
        let starting = args
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().clone())
            .unwrap_or_default();
        if !starting.is_empty() {
            let state = hooks::state_json(args.spec, args.id, "created", bundle_of(root));
            hooks::run("startContainer", &starting, &state, None)?;
        }
    }
    Err(process::exec(&exec))
}

/// Opens the pty inside the container (its devpts, so `tty` names it),
/// sends the master to the agent, makes the slave the controlling terminal
/// and stdio.
fn setup_pty(sync: &OwnedFd, p: &Process) -> Result<u32, SetupError> {
    let (master, slave) = crate::sys::open_pty().map_err(sys("open a pty through /dev/ptmx"))?;
    let n = crate::sys::pty_number(std::os::fd::AsFd::as_fd(&master))
        .map_err(sys("get the pty number"))?;
    // Sized here, before the exec, so the program never sees 0x0.
    if let Some(b) = p.console_size() {
        crate::sys::set_winsize(
            std::os::fd::AsFd::as_fd(&master),
            b.height() as u16,
            b.width() as u16,
        )
        .map_err(sys("set the console size"))?;
    }
    super::sync::send_msg_fd(sync, &ChildMsg::PtyMaster, &master).map_err(sync_err)?;
    drop(master);
    crate::sys::set_controlling_tty(std::os::fd::AsFd::as_fd(&slave))
        .map_err(sys("set the controlling terminal"))?;
    for i in 0..3 {
        dup2(slave.as_raw_fd(), i).map_err(sys(format!("dup2 pty to fd {i}")))?;
    }
    Ok(n)
}

/// Binds the container's terminal on /dev/console, like runc (skipped when
/// /dev cannot hold the mount point).
fn console_on(pts: &str) -> Result<(), SetupError> {
    use nix::mount::{mount, MsFlags};
    let console = Path::new("/dev/console");
    if !console.exists() && std::fs::File::create(console).is_err() {
        return Ok(());
    }
    mount(
        Some(pts),
        console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("bind {pts} on /dev/console")))
}

/// The bundle in the state in-container hooks get: the guest directory
/// holding the rootfs.
fn bundle_of(rootfs: &Path) -> &Path {
    rootfs.parent().unwrap_or(rootfs)
}

fn set_domainname(name: &str) -> Result<(), SetupError> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| SetupError::Invalid("domainname has a NUL byte".into()))?;
    crate::sys::setdomainname(&c).map_err(sys(format!("set domainname {name:?}")))
}

fn sync_err(e: super::sync::SyncError) -> SetupError {
    SetupError::Sys {
        what: "talk to the agent".into(),
        source: std::io::Error::other(e.to_string()),
    }
}
