//! The VM of one shim (one pod): its state directory, the share directory
//! every container's rootfs is bind-mounted into, the plain `husk-vmm`
//! monitor in the pod's host cgroup ([`crate::host_cgroup`]), and
//! teardown.
//!
//! The share (`DIR/share`) is served while the guest runs, and the guest
//! can write it through virtiofsd. So nothing is prepared there by path: a
//! container's tree is built in `DIR/staging/<id>` (the VM's directory is
//! mode 0700 and not shared) and a copy of it is attached at
//! `share/<id>` by file descriptor; teardown is one lazy unmount of
//! `share/<id>` that does not follow a symlink, then an `rmdir`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use husk_protocol::client::{AgentAddr, AgentClient};
use husk_protocol::Request;
use husk_vmm_contract::config::{NetConfig, ShareConfig};
use husk_vmm_contract::{READY_FD, TAP_FD};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::{ShimError, CRI_SANDBOX_MEMORY};
pub use crate::mounts::mounts_under;

use crate::bundle::{attach_share, detach_share, unmount_all, Bundle, ShareMounts, SHARE_TAG};
use crate::host_cgroup::{
    looks_like_systemd, CgroupPath, HostCgroupState, HostLimits, Joiner, Layout,
};
use crate::monitor::{launch_monitor, ready_timeout, Launch, LaunchError, NoReport};
use crate::ops::AGENT_TIMEOUT;
use crate::sizing::{size_vm, VmSize, MEMORY_OVERHEAD_MIB};

/// The pod network's [`crate::network::NetState`] in the VM's directory.
const NETWORK_STATE: &str = "network.json";
/// The pod's host cgroup ([`HostCgroupState`]) in the VM's directory.
const HOST_CGROUP_STATE: &str = "host-cgroup.json";
/// Where containers' share trees are built, in the VM's directory, out of
/// the guest's reach (see [`PodVm::share_bundle`]).
const STAGING: &str = "staging";

/// A running VM.
#[derive(Debug)]
pub struct PodVm {
    /// The state directory.
    pub dir: PathBuf,
    /// The share directory (a shared mount point served as [`SHARE_TAG`]).
    pub share: PathBuf,
    /// The agent.
    pub addr: AgentAddr,
    /// The monitor's pid.
    pub monitor_pid: i32,
    /// The VM's size.
    pub size: VmSize,
    /// The pod network mirrored into the VM, undone on teardown.
    pub network: Option<crate::network::NetState>,
    /// The pod namespace's loopback led into the guest's (`kubectl
    /// port-forward`), stopped on teardown.
    pub port_forward: Option<crate::portforward::PortForward>,
    /// The pod's cgroup on the host, holding the VM's host processes
    /// (also in [`HOST_CGROUP_STATE`]); removed on teardown.
    pub host_cgroup: Option<HostCgroupState>,
}

/// Sizes the VM of a pod (or of a lone container) from the first
/// container's spec: [`size_vm`] (memory limit + [`MEMORY_OVERHEAD_MIB`],
/// `husk.*` annotations), or the pod's memory limit from containerd 1.7's
/// `io.kubernetes.cri.sandbox-memory` annotation.
pub fn size_pod(spec: &Spec, env: impl Fn(&str) -> Option<String>) -> Result<VmSize, ShimError> {
    let mut size = size_vm(spec, env).map_err(crate::ops::OpError::from)?;
    let ann = spec.annotations().clone().unwrap_or_default();
    if !ann.contains_key(crate::policy::MEMORY_MIB) {
        if let Some(bytes) = ann
            .get(CRI_SANDBOX_MEMORY)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|b| *b > 0)
        {
            size.memory_mib = size.clamp_memory(crate::sizing::memory_for_limit(bytes));
        }
    }
    Ok(size)
}

impl PodVm {
    /// Boots a VM in `dir` sized from `spec`, reading defaults through `env`.
    pub fn boot(
        dir: &Path,
        spec: &Spec,
        vmm_binary: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PodVm, ShimError> {
        let cgroup_parent = env(crate::host_cgroup::PARENT_ENV);
        let size = size_pod(spec, env)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(ShimError::io(format!("create {}", dir.display())))?;
        let share = dir.join("share");
        let mut vm = PodVm {
            dir: dir.to_owned(),
            share: share.clone(),
            addr: AgentAddr::HybridVsock {
                uds: dir.join("vsock.sock"),
                port: husk_protocol::DEFAULT_AGENT_PORT,
            },
            monitor_pid: 0,
            size,
            network: None,
            port_forward: None,
            host_cgroup: None,
        };
        match vm.start_monitor(vmm_binary, spec, cgroup_parent.as_deref()) {
            Ok(()) => Ok(vm),
            Err(e) => {
                vm.teardown();
                Err(e)
            }
        }
    }

    /// Makes the pod's host cgroup: the sandbox's `linux.cgroupsPath`
    /// (systemd's `slice:prefix:name` when it has that shape, as CRI
    /// writes it with `SystemdCgroup`; else a cgroupfs path), or
    /// `PARENT/<the VM directory's name>` (`parent`: the operator's
    /// `HUSK_CGROUP_PARENT`, default `/husk`), with the limits the VM's
    /// size calls for. Recorded in [`HOST_CGROUP_STATE`] before it is made.
    fn make_host_cgroup(&mut self, spec: &Spec, parent: Option<&str>) -> Result<Joiner, ShimError> {
        let value = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref())
            .and_then(Path::to_str)
            .filter(|p| !p.is_empty());
        let systemd = value.is_some_and(looks_like_systemd);
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "pod".into());
        let path = CgroupPath::resolve(value, &name, systemd, parent)
            .map_err(crate::ops::OpError::from)?;
        let layout = Layout::probe().map_err(ShimError::io("read the host's cgroup layout"))?;
        let limits = HostLimits::for_spec(&self.size, spec);
        let file = self.dir.join(HOST_CGROUP_STATE);
        let (cg, joiner) = crate::host_cgroup::setup(&layout, &path, &limits, |cg| {
            crate::state::write_atomic(&file, &serde_json::to_vec(cg).expect("serializes"))
                .map_err(|e| crate::error_chain(&e))
        })
        .map_err(crate::ops::OpError::from)?;
        self.host_cgroup = Some(cg);
        Ok(joiner)
    }

    fn start_monitor(
        &mut self,
        vmm_binary: &Path,
        spec: &Spec,
        cgroup_parent: Option<&str>,
    ) -> Result<(), ShimError> {
        let cgroup = self.make_host_cgroup(spec, cgroup_parent)?;
        make_shared_mount(&self.share)?;

        let size = &self.size;
        let mut vm = size.vm_config(&self.dir).map_err(ShimError::Invalid)?;
        if let AgentAddr::HybridVsock { uds, .. } = &self.addr {
            vm.vsock.uds_path = Some(uds.clone());
        }
        vm.shares = vec![ShareConfig {
            tag: SHARE_TAG.into(),
            host_dir: self.share.clone(),
            cache: Default::default(),
            readonly: false,
            writeback: false,
            threads: None,
        }];
        let net = match crate::network::netns_path(spec) {
            Some(ns) => crate::network::setup(&ns).map_err(|e| {
                ShimError::Invalid(format!("pod network: {}", crate::error_chain(&e)))
            })?,
            None => None,
        };
        if let Some(n) = &net {
            self.network = Some(n.state.clone());
            let _ = fs::write(
                self.dir.join(NETWORK_STATE),
                serde_json::to_vec(&n.state).expect("state serializes"),
            );
            vm.net = vec![NetConfig {
                tap_fd: TAP_FD,
                mac: n.mac.clone(),
                mtu: n.mtu,
            }];
        }
        vm.validate()
            .map_err(|e| ShimError::Invalid(crate::error_chain(&e)))?;
        let cfg = self.dir.join("vmm.json");
        crate::state::write_atomic(
            &cfg,
            &serde_json::to_vec_pretty(&vm).expect("config serializes"),
        )
        .map_err(|e| ShimError::Invalid(e.to_string()))?;
        let out = fs::File::create(self.dir.join("husk-vmm.out"))
            .map_err(ShimError::io("create husk-vmm.out"))?;
        let launch = Launch {
            binary: vmm_binary,
            config: &cfg,
            args: vec![
                "--ready-fd".into(),
                READY_FD.to_string().into(),
                "--log-file".into(),
                self.dir.join("husk-vmm.log").into(),
            ],
            stdin: Stdio::null(),
            stdout: out.try_clone().map_err(ShimError::io("dup"))?.into(),
            stderr: out.into(),
            controlling_tty: false,
            tap: net.as_ref().map(|n| &n.tap_fd),
            cgroup: &cgroup,
            ready_timeout: ready_timeout(vm.boot_timeout_s),
        };
        let started = Instant::now();
        let dir = self.dir.clone();
        let monitor_pid = &mut self.monitor_pid;
        // The shim's reaper (containerd-shim's SIGCHLD handler) reaps it.
        let launched = launch_monitor(launch, |pid| {
            *monitor_pid = pid;
            let _ = fs::write(dir.join("monitor.pid"), pid.to_string());
            let _ = fs::write(dir.join("shim.pid"), std::process::id().to_string());
        });
        drop(cgroup);
        let guest_net = net.map(|n| n.guest);
        if let Err(e) = launched {
            return Err(match e {
                LaunchError::Fds { what, source } => ShimError::Io {
                    what: what.into(),
                    source,
                },
                LaunchError::Spawn {
                    binary,
                    cgroup,
                    source,
                } => ShimError::io(format!(
                    "cannot run {} in the pod's host cgroup {cgroup} (linux.cgroupsPath)",
                    binary.display(),
                ))(source),
                LaunchError::NoReport {
                    why: NoReport::TimedOut,
                    ..
                } => self.boot_failed("timed out"),
                LaunchError::NoReport { .. } => self.boot_failed("the monitor exited"),
                LaunchError::BadReport { line, .. } => self.boot_failed(line.trim()),
                LaunchError::Failed { error, .. } => self.boot_failed(&error),
            });
        }
        if let Some(g) = guest_net {
            self.agent()?
                .call(Request::ConfigureNetwork(g))
                .map_err(|e| {
                    ShimError::Invalid(format!(
                        "cannot configure the guest network: {}",
                        crate::error_chain(&e)
                    ))
                })?;
        }
        if let Some(ns) = self.network.as_ref().map(|n| n.netns.clone()) {
            // A pod without port-forward still runs: warn, do not fail it.
            match crate::portforward::PortForward::start(&ns, self.addr.clone()) {
                Ok(f) => self.port_forward = Some(f),
                Err(e) => tracing::warn!(
                    error = %crate::error_chain(&e),
                    "kubectl port-forward will not reach this pod"
                ),
            }
        }
        tracing::info!(
            boot_ms = started.elapsed().as_millis() as u64,
            memory_mib = size.memory_mib,
            vcpus = size.vcpus,
            overhead_mib = MEMORY_OVERHEAD_MIB,
            monitor_pid = self.monitor_pid,
            dir = %self.dir.display(),
            "VM booted, agent listening (guest RAM = memory limit + overhead_mib; host overhead: see README.md)"
        );
        Ok(())
    }

    fn boot_failed(&self, why: &str) -> ShimError {
        ShimError::Invalid(format!(
            "the VM failed to start: {why}; see {}",
            self.dir.join("husk-vmm.log").display()
        ))
    }

    /// A control connection to the agent.
    pub fn agent(&self) -> Result<AgentClient, ShimError> {
        Ok(AgentClient::connect(&self.addr, AGENT_TIMEOUT)?)
    }

    /// Shares `bundle` into the running VM at `share/<id>/` and returns its
    /// spec rewritten for the guest and the mount made. The guest can
    /// already write the share, so the tree is built in `staging/<id>`
    /// under the VM's directory, which the guest cannot reach, and attached
    /// by fd ([`attach_share`]): a symlink the guest plants at `share/<id>`
    /// is refused, never followed.
    pub fn share_bundle(
        &self,
        bundle: &Bundle,
        id: &str,
    ) -> Result<(Spec, ShareMounts), ShimError> {
        let staging = self.dir.join(STAGING).join(id);
        let (mut spec, mounts) =
            attach_share(bundle, &staging, &self.share, id).map_err(crate::ops::OpError::from)?;
        // Every container of the pod shares the guest's root network
        // namespace, which is the pod's network.
        crate::network::drop_netns_path(&mut spec);
        let base = PathBuf::from(husk_protocol::share_mount_point(SHARE_TAG));
        let re = |p: &Path| -> Option<PathBuf> {
            p.strip_prefix(&base)
                .ok()
                .map(|rel| base.join(id).join(rel))
        };
        if let Some(mut root) = spec.root().clone() {
            if let Some(p) = re(root.path()) {
                root.set_path(p);
            }
            spec.set_root(Some(root));
        }
        if let Some(ms) = spec.mounts().clone() {
            let ms = ms
                .into_iter()
                .map(|mut m| {
                    if let Some(p) = m.source().as_deref().and_then(re) {
                        m.set_source(Some(p));
                    }
                    m
                })
                .collect();
            spec.set_mounts(Some(ms));
        }
        Ok((spec, mounts))
    }

    /// Undoes [`PodVm::share_bundle`]: one lazy unmount of `share/<id>`
    /// and the removal of the then empty directory.
    pub fn unshare_bundle(&self, id: &str, mounts: &[PathBuf]) {
        if let Err(e) = detach_share(&self.share, id, mounts) {
            tracing::warn!(id, error = %e, "cannot remove the container's share");
        }
    }

    /// Stops the VM (the agent powers it off; signals if it does not) and
    /// removes the state directory. Called once, by whoever took the VM
    /// out of the shim's state; a call still holding a clone of it then
    /// gets the agent's connection errors.
    pub fn shutdown(&self) {
        if self.monitor_pid > 0 && alive(self.monitor_pid) {
            match self
                .agent()
                .and_then(|mut a| Ok(a.call(Request::Shutdown)?))
            {
                // The agent answers once the guest's writes are on the host:
                // the monitor may stop the VM now rather than wait for the
                // guest's reboot (seconds under emulation).
                Ok(_) => {
                    let _ = kill(Pid::from_raw(self.monitor_pid), Signal::SIGTERM);
                    stop_pid(self.monitor_pid, Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "agent shutdown failed");
                    stop_pid(self.monitor_pid, Duration::from_secs(15));
                }
            }
        }
        self.teardown();
    }

    fn teardown(&self) {
        if let Some(f) = &self.port_forward {
            f.stop();
        }
        if self.monitor_pid > 0 {
            stop_pid(self.monitor_pid, Duration::from_secs(5));
        }
        // What the monitor started and may have outlived it (qemu after
        // -runas has no parent-death signal).
        husk_vmm_contract::journal::signal_recorded(&self.dir, Signal::SIGKILL);
        // What is still in the pod's host cgroup is killed with it.
        if let Some(cg) = &self.host_cgroup {
            crate::host_cgroup::remove(cg);
        }
        if let Some(n) = &self.network {
            crate::network::teardown(n);
        }
        unmount_under(&self.dir);
        remove_unmounted(&self.dir);
    }
}

/// Creates `dir` and makes it a shared mount point (a bind on itself).
/// Mounts made under the share later (containers of the pod) must reach
/// virtiofsd's own mount namespace, a slave copy of the host's made when
/// virtiofsd starts: so the share is shared before that.
pub fn make_shared_mount(dir: &Path) -> Result<(), ShimError> {
    fs::create_dir_all(dir).map_err(ShimError::io("create the share dir"))?;
    let share_err = |e: nix::errno::Errno| ShimError::Io {
        what: format!("make {} a shared mount", dir.display()),
        source: e.into(),
    };
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(share_err)?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(share_err)
}

/// Cleans up after a shim that died: stops its monitor, unmounts and removes
/// its state. Leaves everything alone while the shim still runs.
pub fn cleanup_dead(dir: &Path, id: &str) {
    let pid_in = |f: &str| {
        fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
    };
    if pid_in("shim.pid").is_some_and(|p| p != std::process::id() as i32 && alive(p)) {
        tracing::info!(
            id,
            "the shim of {} still runs; leaving its VM",
            dir.display()
        );
        return;
    }
    if let Some(p) = pid_in("monitor.pid") {
        stop_pid(p, Duration::from_secs(5));
    }
    husk_vmm_contract::journal::signal_recorded(dir, Signal::SIGKILL);
    if let Some(cg) = fs::read(dir.join(HOST_CGROUP_STATE))
        .ok()
        .and_then(|b| serde_json::from_slice::<HostCgroupState>(&b).ok())
    {
        crate::host_cgroup::remove(&cg);
    }
    if let Some(n) = fs::read(dir.join(NETWORK_STATE))
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::network::NetState>(&b).ok())
    {
        crate::network::teardown(&n);
    }
    unmount_under(dir);
    remove_unmounted(dir);
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie (or a pid gone since) has no start time.
    husk_vmm_contract::journal::start_time(pid).is_some()
}

/// Waits for `pid` to end; SIGTERM after `grace`, SIGKILL after as long again.
fn stop_pid(pid: i32, grace: Duration) {
    let start = Instant::now();
    let mut sent = 0;
    while alive(pid) {
        let t = start.elapsed();
        if sent == 0 && t >= grace {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            sent = 1;
        } else if sent == 1 && t >= grace * 2 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            sent = 2;
        } else if t >= grace * 3 {
            tracing::warn!(pid, "process does not die");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unmount_under(dir: &Path) {
    let mut points = mounts_under(dir);
    points.reverse();
    if let Err(e) = unmount_all(&points) {
        tracing::warn!(dir = %dir.display(), error = %e, "unmount failed");
    }
}

/// Removes `dir` unless something is still mounted below it (removing
/// through a mount would delete a container's files).
fn remove_unmounted(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let left = mounts_under(dir);
    if !left.is_empty() {
        tracing::warn!(dir = %dir.display(), ?left, "still mounted; not removing");
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove");
    }
}
