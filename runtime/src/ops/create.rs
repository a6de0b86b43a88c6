//! `create`: claim the id, share the bundle into a new VM, have the monitor
//! build the container, run the host hooks. Any failure undoes all of it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use husk_protocol::{CreateContainer, StdioSpec};
use husk_vmm_contract::config::{ContainerConfig, NetConfig, ShareConfig};
use husk_vmm_contract::{ReadyReport, READY_FD, TAP_FD};

use super::lifecycle::{oci_state_json, teardown};
use super::stdio::{raw_pty, send_console};
use super::{OpError, Runtime};
use crate::bundle::{prepare_share, Bundle, SHARE_TAG};
use crate::hooks::run_hooks;
use crate::host_cgroup::{CgroupPath, HostLimits, Joiner, Layout};
use crate::monitor::{launch_monitor, ready_timeout, Launch, LaunchError};
use crate::sizing::size_vm;
use crate::state::{process_start_time, write_atomic, ContainerState, Status};

/// What `create` (and `run`) take.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the monitor's pid.
    pub pid_file: Option<PathBuf>,
    /// Where to send the pty master of a terminal container.
    pub console_socket: Option<PathBuf>,
    /// Extra fds passed to the container.
    pub preserve_fds: u32,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is systemd's
    /// `slice:prefix:name` ([`crate::host_cgroup`]).
    pub systemd_cgroup: bool,
}

/// Creates container `id`; returns its state.
pub fn create(rt: &Runtime, id: &str, opts: &CreateOptions) -> Result<ContainerState, OpError> {
    let (bundle, size) = check(opts, |k| std::env::var(k).ok())?;
    let dir = rt.root.claim(id)?;
    let mut st = ContainerState {
        oci_version: bundle.spec.version().clone(),
        id: id.to_owned(),
        status: Status::Creating,
        pid: 0,
        pid_start_time: 0,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: now_rfc3339(),
        annotations: bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        guest_pid: 0,
        engine_pid: None,
        vsock_uds: dir.join("vsock.sock"),
        agent_port: husk_protocol::DEFAULT_AGENT_PORT,
        mounts: Vec::new(),
        network: None,
        hooks: Some(bundle.spec.hooks().clone().unwrap_or_default()),
        resources: bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone()),
        host_cgroup: None,
    };
    match build(rt, &bundle, &dir, &size, opts, &mut st) {
        Ok(()) => Ok(st),
        Err(e) => {
            tracing::debug!(id, error = %crate::error_chain(&e), "create failed, cleaning up");
            teardown(rt, &st);
            Err(e)
        }
    }
}

/// What `create` checks before it claims the id or touches the host: the
/// bundle and its config.json ([`Bundle::load`]: every parse error names
/// the field), the options, the operator's policy and the VM's size (read
/// through `env`), the engine; logs the fields it accepts and does not
/// apply ([`crate::unsupported`]). No other side effects: the config fuzz harness
/// (`runtime/tests/fuzz_config.rs`) drives exactly this.
pub fn check(
    opts: &CreateOptions,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Bundle, crate::sizing::VmSize), OpError> {
    let mut bundle = Bundle::load(&opts.bundle)?;
    crate::bundle::check_namespaces(&bundle.spec).map_err(|reason| {
        crate::bundle::BundleError::Invalid {
            path: bundle.dir.join("config.json"),
            reason,
        }
    })?;
    crate::unsupported::warn_ignored(
        &crate::unsupported::ignored(&bundle.spec),
        &bundle.dir.display().to_string(),
    );
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal && opts.console_socket.is_none() {
        return Err(OpError::Invalid(
            "process.terminal is true: --console-socket is required (as with runc)".into(),
        ));
    }
    if opts.preserve_fds > 0 {
        return Err(OpError::Invalid(
            "--preserve-fds: passing extra fds into a VM is not supported".into(),
        ));
    }
    // A cgroupsPath that cannot name a cgroup of the container's own.
    if let Some(p) = cgroups_path(&bundle.spec) {
        CgroupPath::parse(p, opts.systemd_cgroup)?;
    }
    let size = size_vm(&bundle.spec, env)?;
    // The guest's copy of the spec names only vCPUs the VM has.
    crate::sizing::fit_cpuset(&mut bundle.spec, &size)?;
    // The engine name (an annotation, when enabled) parses.
    size.vm_config(&bundle.dir).map_err(OpError::Invalid)?;
    Ok((bundle, size))
}

fn build(
    rt: &Runtime,
    bundle: &Bundle,
    dir: &Path,
    size: &crate::sizing::VmSize,
    opts: &CreateOptions,
    st: &mut ContainerState,
) -> Result<(), OpError> {
    // Record the state, and the one mount the share is, before mounting
    // anything, so `delete --force` can always find what to undo.
    let share_dir = dir.join("share");
    st.mounts = vec![share_dir.clone()];
    rt.root.save(st)?;
    let cgroup = host_cgroup(rt, bundle, size, opts, st)?;
    let (mut guest_spec, mounts) = prepare_share(bundle, &share_dir)?;
    st.mounts = mounts.points;
    rt.root.save(st)?;
    let net = match crate::network::netns_path(&bundle.spec) {
        Some(ns) => {
            let net = crate::network::setup(&ns).map_err(|e| {
                OpError::Invalid(format!("pod network: {}", crate::error_chain(&e)))
            })?;
            crate::network::drop_netns_path(&mut guest_spec);
            if let Some(n) = &net {
                st.network = Some(n.state.clone());
                rt.root.save(st)?;
            }
            net
        }
        None => None,
    };

    let terminal = guest_spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let mut vm = size.vm_config(dir).map_err(OpError::Invalid)?;
    vm.vsock.uds_path = Some(st.vsock_uds.clone());
    vm.shares = vec![ShareConfig {
        tag: SHARE_TAG.into(),
        host_dir: share_dir,
        cache: Default::default(),
        readonly: false,
        writeback: false,
        threads: None,
    }];
    vm.container = Some(ContainerConfig {
        create: CreateContainer {
            container_id: st.id.clone(),
            spec: guest_spec,
            shares: vec![SHARE_TAG.into()],
            // The container gets the fds `create` was started with.
            stdio: StdioSpec {
                stdin: !terminal,
                stdout: !terminal,
                stderr: !terminal,
            },
        },
        ready_fd: Some(READY_FD),
        network: net.as_ref().map(|n| n.guest.clone()),
    });
    if let Some(n) = &net {
        vm.net = vec![NetConfig {
            tap_fd: TAP_FD,
            mac: n.mac.clone(),
            mtu: n.mtu,
        }];
    }
    vm.validate()
        .map_err(|e| OpError::Invalid(crate::error_chain(&e)))?;
    let cfg_path = dir.join("vmm.json");
    write_atomic(
        &cfg_path,
        &serde_json::to_vec_pretty(&vm).expect("config serializes"),
    )?;

    // A terminal container talks to a host pty whose slave is the monitor's
    // stdio and controlling terminal (so a resize reaches it as SIGWINCH);
    // the master goes to --console-socket.
    let pty = if terminal {
        Some(raw_pty().map_err(OpError::io("cannot open a pty"))?)
    } else {
        None
    };
    let (pid, guest_pid) = spawn_monitor(
        rt,
        &cfg_path,
        &st.id,
        vm.boot_timeout_s,
        pty.as_ref().map(|p| &p.slave),
        net.as_ref().map(|n| &n.tap_fd),
        &cgroup,
    )?;
    drop(cgroup);
    // The monitor holds the tap now; ours closes.
    drop(net);
    if let (Some(pty), Some(sock)) = (&pty, &opts.console_socket) {
        send_console(sock, pty).map_err(OpError::io(format!(
            "cannot send the pty to {}",
            sock.display()
        )))?;
    }
    drop(pty);
    st.pid = pid;
    st.pid_start_time = process_start_time(pid).unwrap_or(0);
    st.guest_pid = guest_pid;
    st.engine_pid = None;
    st.status = Status::Created;
    rt.root.save(st)?;
    if let Some(p) = &opts.pid_file {
        write_atomic(p, pid.to_string().as_bytes())?;
    }
    let hooks = bundle.spec.hooks().clone().unwrap_or_default();
    // The container is being created until these hooks are done (runc
    // gives them "creating" too).
    let state_json = oci_state_json(st, Status::Creating);
    #[allow(deprecated)]
    run_hooks(
        "prestart",
        hooks.prestart().as_deref().unwrap_or_default(),
        &state_json,
    )?;
    run_hooks(
        "createRuntime",
        hooks.create_runtime().as_deref().unwrap_or_default(),
        &state_json,
    )?;
    Ok(())
}

/// `linux.cgroupsPath` when the spec sets one.
fn cgroups_path(spec: &oci_spec::runtime::Spec) -> Option<&str> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_deref())
        .and_then(Path::to_str)
        .filter(|p| !p.is_empty())
}

/// Makes the container's host cgroup with the limits its VM's size calls
/// for ([`crate::host_cgroup`]), recorded in the state first; returns what
/// the monitor joins it with.
fn host_cgroup(
    rt: &Runtime,
    bundle: &Bundle,
    size: &crate::sizing::VmSize,
    opts: &CreateOptions,
    st: &mut ContainerState,
) -> Result<Joiner, OpError> {
    let parent = std::env::var(crate::host_cgroup::PARENT_ENV).ok();
    let path = CgroupPath::resolve(
        cgroups_path(&bundle.spec),
        &st.id,
        opts.systemd_cgroup,
        parent.as_deref(),
    )?;
    let layout = Layout::probe().map_err(OpError::io("cannot read the host's cgroup layout"))?;
    let limits = HostLimits::for_spec(size, &bundle.spec);
    let (cg, joiner) = crate::host_cgroup::setup(&layout, &path, &limits, |cg| {
        st.host_cgroup = Some(cg.clone());
        rt.root.save(st).map_err(|e| crate::error_chain(&e))
    })?;
    tracing::debug!(id = %st.id, path = %cg.path, "the VM's host processes go in this cgroup");
    Ok(joiner)
}

/// Starts `husk-vmm` ([`launch_monitor`]) in the container's host cgroup,
/// with this process's stdio (or the pty's slave, as its controlling
/// terminal) as the container's, and waits for its ready report; returns
/// the monitor's pid and the container's guest pid. A monitor that fails
/// is killed.
fn spawn_monitor(
    rt: &Runtime,
    cfg: &Path,
    id: &str,
    timeout_s: u64,
    tty: Option<&OwnedFd>,
    tap: Option<&OwnedFd>,
    cgroup: &Joiner,
) -> Result<(i32, i32), OpError> {
    let (stdin, stdout, stderr) = match tty {
        Some(slave) => {
            let io = |f: &OwnedFd| {
                f.try_clone()
                    .map(Stdio::from)
                    .map_err(OpError::io("dup pty"))
            };
            (io(slave)?, io(slave)?, io(slave)?)
        }
        None => (Stdio::inherit(), Stdio::inherit(), Stdio::inherit()),
    };
    let launch = Launch {
        binary: &rt.vmm_binary,
        config: cfg,
        args: Vec::new(),
        stdin,
        stdout,
        stderr,
        controlling_tty: tty.is_some(),
        tap,
        cgroup,
        ready_timeout: ready_timeout(timeout_s),
    };
    let fail = |pid: i32, reason: String| {
        // The monitor cleans up after itself on failure; make sure it is gone.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        OpError::Monitor {
            id: id.to_owned(),
            reason,
        }
    };
    let launched = launch_monitor(launch, |_| {}).map_err(|e| match e {
        LaunchError::Fds { what, source } => OpError::Io {
            what: what.into(),
            source,
        },
        LaunchError::Spawn { source, .. } => OpError::io(format!(
            "cannot run {} in the container's host cgroup {} (linux.cgroupsPath)",
            rt.vmm_binary.display(),
            cgroup.path()
        ))(source),
        LaunchError::NoReport { pid, .. } => fail(
            pid,
            format!("{e}; see {}", cfg.with_file_name("husk-vmm.log").display()),
        ),
        LaunchError::BadReport { pid, .. } | LaunchError::Failed { pid, .. } => {
            fail(pid, e.to_string())
        }
    })?;
    // Relayed from the guest: an impossible pid is refused, not cut down
    // to an i32.
    let guest_pid = launched
        .reported_pid
        .ok_or_else(|| {
            format!(
                "no guest pid in the readiness report {:?}",
                ReadyReport::Ready {
                    pid: None,
                    boot: vec![],
                }
                .to_line()
            )
        })
        .and_then(|p| husk_protocol::check_guest_pid(p).map_err(|e| e.to_string()))
        .and_then(|p| i32::try_from(p).map_err(|e| e.to_string()))
        .map_err(|reason| fail(launched.pid, reason))?;
    Ok((launched.pid, guest_pid))
}

/// The current time as RFC 3339 UTC with nanoseconds.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// `t` as RFC 3339 UTC with all nine digits of nanoseconds
/// (`2026-01-02T03:04:05.000000006Z`), the form state and log lines use.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    // The description has no component a UTC date-time lacks (and a year
    // past 9999 is written with five digits), so formatting cannot fail.
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_of_known_instants() {
        use time::OffsetDateTime;
        let t = |secs: i64, nanos: i128| {
            super::rfc3339(
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(secs) * 1_000_000_000 + nanos)
                    .unwrap(),
            )
        };
        assert_eq!(t(0, 0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (a leap day in a year divisible by 400), 23:59:59.
        assert_eq!(t(951_868_799, 6), "2000-02-29T23:59:59.000000006Z");
        assert_eq!(
            t(1_798_761_600, 123_456_789),
            "2027-01-01T00:00:00.123456789Z"
        );
    }

    #[test]
    fn rfc3339_shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 30, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
    }
}
