//! `start`, `state`, `kill`, `delete`, `list`, `ps`, `pause`, `resume`, and
//! the teardown every failure path shares (`events` is in `events.rs`).

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use husk_protocol::{ContainerRef, ContainerStatus, ProcessInfo, Request, Response, SignalProcess};
use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use super::{OpError, Runtime};
use crate::bundle::{unmount_all, Bundle};
use crate::hooks::run_hooks_warn;
use crate::state::{ContainerState, Status};
use husk_vmm_contract::journal::VmState;

/// The OCI state (`husk state`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    /// The spec version.
    pub oci_version: String,
    /// The id.
    pub id: String,
    /// The status.
    pub status: Status,
    /// The monitor's pid (0 once stopped).
    pub pid: i32,
    /// The bundle.
    pub bundle: PathBuf,
    /// The host rootfs.
    pub rootfs: PathBuf,
    /// Creation time.
    pub created: String,
    /// The owner (always root).
    pub owner: String,
    /// The spec's annotations.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The OCI state JSON hooks get on stdin.
pub fn oci_state_json(st: &ContainerState, status: Status) -> Vec<u8> {
    let mut v = to_oci(st, status);
    if status == Status::Stopped {
        v.pid = 0;
    }
    serde_json::to_vec(&v).expect("state serializes")
}

fn to_oci(st: &ContainerState, status: Status) -> OciState {
    OciState {
        oci_version: st.oci_version.clone(),
        id: st.id.clone(),
        status,
        pid: if status == Status::Stopped { 0 } else { st.pid },
        bundle: st.bundle.clone(),
        rootfs: st.rootfs.clone(),
        created: st.created.clone(),
        owner: "root".into(),
        annotations: st.annotations.clone(),
    }
}

/// What the monitor last wrote in the container's `vm-state` file.
fn recorded_vm_state(rt: &Runtime, st: &ContainerState) -> Option<VmState> {
    rt.root
        .dir(&st.id)
        .ok()
        .and_then(|d| husk_vmm_contract::journal::vm_state(&d))
}

/// How often [`agent_status`] reads the monitor's record while it waits
/// for the agent's answer.
const RECORD_POLL: Duration = Duration::from_millis(10);

/// The live status: the recorded one, corrected by whether the monitor
/// still runs, by its `vm-state` file (`stopped` the moment the
/// container's init exited, while the VM still shuts down) and by what the
/// agent says within `deadline` (connect and answer together); an agent
/// that is silent, dying or gone leaves the recorded status.
fn agent_status(rt: &Runtime, st: &ContainerState, deadline: Duration) -> Status {
    if !st.monitor_alive() {
        return if st.status == Status::Creating {
            Status::Creating
        } else {
            Status::Stopped
        };
    }
    if st.status == Status::Creating {
        return st.status;
    }
    // What the monitor recorded: its journal, or its being gone.
    let recorded = || {
        if !st.monitor_alive() {
            return Some(Status::Stopped);
        }
        match recorded_vm_state(rt, st) {
            Some(VmState::Stopped) => Some(Status::Stopped),
            Some(VmState::Paused) => Some(Status::Paused),
            _ if st.status == Status::Paused => Some(st.status),
            _ => None,
        }
    };
    if let Some(s) = recorded() {
        return s;
    }
    // Asked on a thread of its own while the record is read again every
    // few ms: the container may exit meanwhile, and then its agent shuts
    // down and stops answering (waiting on the one connect made a `state`
    // right after the exit wait out the whole deadline, 2 s, one time in
    // two). The thread is left behind if the record answers first; the
    // command ends soon after.
    let until = Instant::now() + deadline;
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, id) = (Runtime::agent_addr(st), st.id.clone());
    thread::spawn(move || {
        let asked =
            husk_protocol::client::AgentClient::connect(&addr, deadline).and_then(|mut a| {
                a.call_with_timeout(
                    Request::State(ContainerRef { container_id: id }),
                    until.saturating_duration_since(Instant::now()),
                )
            });
        let _ = tx.send(asked);
    });
    let asked = loop {
        match rx.recv_timeout(RECORD_POLL) {
            Ok(asked) => break Some(asked),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Some(s) = recorded() {
                    return s;
                }
                if Instant::now() >= until {
                    break None;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
        }
    };
    match &asked {
        Some(Err(e)) => {
            tracing::debug!(id = %st.id, error = %husk_protocol::error_chain(e), "agent status unknown; using the recorded one")
        }
        None => {
            tracing::debug!(id = %st.id, "no agent status within {deadline:?}; using the recorded one")
        }
        Some(Ok(_)) => {}
    }
    let asked = asked.and_then(Result::ok);
    match asked {
        Some(Response::State(s)) => match s.status {
            ContainerStatus::Creating => Status::Creating,
            ContainerStatus::Created => Status::Created,
            ContainerStatus::Running => Status::Running,
            ContainerStatus::Stopped => Status::Stopped,
            ContainerStatus::Paused => Status::Paused,
        },
        _ if !st.monitor_alive() => Status::Stopped,
        _ => st.status,
    }
}

/// The live status; a stop the agent reports is recorded, so that the
/// status cannot fall back to `running` while the VM shuts down and its
/// agent no longer answers. Recorded under the container's lock, on the
/// state as it is then, and only if no other command holds the lock (it
/// is changing or removing the state: `state` and `list` never wait, and
/// never write back a stale copy).
pub(super) fn live_status(rt: &Runtime, st: &ContainerState) -> Status {
    let status = agent_status(rt, st, rt.deadlines.status);
    if status == Status::Stopped && st.status != Status::Stopped && st.monitor_alive() {
        record_stop(rt, &st.id);
    }
    status
}

fn record_stop(rt: &Runtime, id: &str) {
    let Ok(Some(_lock)) = rt.root.try_lock(id) else {
        tracing::debug!(
            id,
            "another command holds the state: the stop is not recorded"
        );
        return;
    };
    let Ok(mut now) = rt.root.load(id) else {
        return;
    };
    if now.status == Status::Stopped {
        return;
    }
    now.status = Status::Stopped;
    if let Err(e) = rt.root.save(&now) {
        tracing::warn!(id, error = %e, "recording the stop");
    }
}

/// `state`.
pub fn state(rt: &Runtime, id: &str) -> Result<OciState, OpError> {
    let st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    Ok(to_oci(&st, status))
}

/// `list`: every container's state. The agents are asked in parallel, so
/// silent ones cost one [`super::STATUS_DEADLINE`] in all, not one each.
pub fn list(rt: &Runtime) -> Result<Vec<OciState>, OpError> {
    // A directory without state.json is a create in progress or debris.
    let states: Vec<ContainerState> = rt
        .root
        .list()?
        .iter()
        .filter_map(|id| rt.root.load(id).ok())
        .collect();
    Ok(thread::scope(|s| {
        let asks: Vec<_> = states
            .iter()
            .map(|st| (st, s.spawn(|| live_status(rt, st))))
            .collect();
        asks.into_iter()
            .map(|(st, ask)| {
                // A panicked ask leaves the recorded status.
                let status = ask.join().unwrap_or(st.status);
                to_oci(st, status)
            })
            .collect()
    }))
}

/// `start`.
pub fn start(rt: &Runtime, id: &str) -> Result<(), OpError> {
    let _lock = rt.root.lock(id)?;
    let mut st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    if status != Status::Created {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "only a created container can start",
        });
    }
    let mut agent = rt.agent(&st)?;
    agent.start(id).map_err(|source| OpError::Agent {
        id: id.into(),
        source,
    })?;
    st.status = Status::Running;
    rt.root.save(&st)?;
    // A failing poststart hook is logged; the start stands (runtime spec).
    if let Some(h) = recorded_hooks(&st, "poststart").and_then(|h| h.poststart().clone()) {
        run_hooks_warn("poststart", &h, &oci_state_json(&st, Status::Running), id);
    }
    Ok(())
}

/// The hooks recorded at create; for a state an older husk wrote, the
/// bundle's, or `None` (logged) when its config.json cannot be read any
/// more, so `stage`'s hooks cannot run.
fn recorded_hooks(st: &ContainerState, stage: &str) -> Option<oci_spec::runtime::Hooks> {
    if let Some(h) = &st.hooks {
        return Some(h.clone());
    }
    match Bundle::load(&st.bundle) {
        Ok(b) => b.spec.hooks().clone(),
        Err(e) => {
            tracing::warn!(
                id = %st.id,
                error = %crate::error_chain(&e),
                "cannot read the bundle: its {stage} hooks do not run"
            );
            None
        }
    }
}

/// Asks the agent of a container that has processes (created, running or
/// paused); `what` says what cannot be done otherwise.
fn ask_live(rt: &Runtime, id: &str, what: &'static str, req: Request) -> Result<Response, OpError> {
    let st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what,
        });
    }
    rt.agent(&st)?.call(req).map_err(|source| OpError::Agent {
        id: id.into(),
        source,
    })
}

/// What `kill` of a container that is not running says (runc's
/// `ErrNotRunning`).
const NOT_RUNNING: &str = "container not running";

/// `kill`, as runc 1.1: a created, running or paused container's init is
/// signalled (every process with `--all`); a stopped container is an error
/// ("container not running") unless `--all` is given, which then signals
/// nothing and succeeds (runc: a stopped container whose cgroup is gone).
/// An init that exits between the state check and the signal is the same
/// stopped container.
pub fn kill(rt: &Runtime, id: &str, signal: i32, all: bool) -> Result<(), OpError> {
    let st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    let not_running = |status| OpError::BadState {
        id: id.into(),
        status,
        what: NOT_RUNNING,
    };
    match status {
        Status::Created | Status::Running | Status::Paused => {}
        Status::Stopped if all => return Ok(()),
        other => return Err(not_running(other)),
    }
    let req = SignalProcess {
        container_id: id.into(),
        exec_id: None,
        signal,
        all,
    };
    match rt.agent(&st)?.call(Request::SignalProcess(req)) {
        Ok(_) => Ok(()),
        Err(e) if !all && e.code() == Some(husk_protocol::ErrorCode::NotFound) => {
            tracing::debug!(id, error = %e, "the init exited meanwhile");
            Err(not_running(Status::Stopped))
        }
        Err(source) => Err(OpError::Agent {
            id: id.into(),
            source,
        }),
    }
}

/// `ps`: the container's guest processes.
pub fn ps(rt: &Runtime, id: &str) -> Result<Vec<ProcessInfo>, OpError> {
    let req = Request::ListProcesses(ContainerRef {
        container_id: id.into(),
    });
    // The client refused impossible pids already.
    match ask_live(rt, id, "it has no processes", req)? {
        Response::Processes { processes } => Ok(processes),
        other => Err(OpError::Invalid(format!(
            "container {id}: unexpected agent answer {other:?}"
        ))),
    }
}

/// `ps`'s table: one line per process. The exec ids come from the guest
/// and are printed escaped ([`husk_protocol::sanitize`]).
pub fn ps_table(procs: &[ProcessInfo]) -> String {
    let mut out = String::from("PID\tEXEC\n");
    for p in procs {
        let exec = p.exec_id.as_deref().unwrap_or("-");
        out.push_str(&format!("{}\t{}\n", p.pid, husk_protocol::sanitize(exec)));
    }
    out
}

/// `delete`.
pub fn delete(rt: &Runtime, id: &str, force: bool) -> Result<(), OpError> {
    // Held until the directory is gone (an open directory can be removed).
    let _lock = rt.root.lock(id)?;
    let st = match rt.root.load(id) {
        Ok(st) => st,
        Err(crate::state::StateError::NotFound(_)) if force => {
            // A directory left by a create that died before writing state.
            return Ok(rt.root.remove(id)?);
        }
        Err(e) => return Err(e.into()),
    };
    let status = live_status(rt, &st);
    if matches!(status, Status::Running | Status::Paused) && !force {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "stop it first or use --force",
        });
    }
    teardown(rt, &st);
    // Each failing poststop hook is logged; the others still run.
    if let Some(h) = recorded_hooks(&st, "poststop").and_then(|h| h.poststop().clone()) {
        run_hooks_warn("poststop", &h, &oci_state_json(&st, Status::Stopped), id);
    }
    Ok(())
}

/// Stops the VM (agent shutdown, then SIGTERM/SIGKILL of the monitor and
/// anything it left, in its host cgroup too), removes the host cgroup,
/// unmounts the share and removes the state directory.
/// Best effort: every step runs even if one before it failed.
pub(super) fn teardown(rt: &Runtime, st: &ContainerState) {
    // The monitor recorded the init's exit: it is on its own exit path
    // (stdio drained, the agent's Shutdown, the VM stopped: tens of ms), so
    // wait for it; connecting to an agent that is going away would wait out
    // the connect timeout (a `delete` right after `state` said stopped took
    // 2 s one time in three).
    let exiting = st.monitor_alive() && recorded_vm_state(rt, st) == Some(VmState::Stopped);
    if exiting && wait_gone(st, MONITOR_EXIT_GRACE) {
        tracing::debug!(id = %st.id, "the monitor ended on its own exit path");
    } else if st.monitor_alive() {
        let pid = Pid::from_raw(st.pid);
        if st.status == Status::Paused {
            if let Err(e) = set_paused(rt, st, false) {
                tracing::warn!(id = %st.id, error = %e, "resuming before the stop");
            }
        }
        if let Ok(mut agent) = husk_protocol::client::AgentClient::connect(
            &Runtime::agent_addr(st),
            Duration::from_secs(2),
        ) {
            // A silent agent is killed with its monitor below.
            let _ = agent.call_with_timeout(Request::Shutdown, Duration::from_secs(2));
        }
        if !wait_gone(st, Duration::from_secs(5)) {
            let _ = send_signal(pid, Signal::SIGKILL);
            wait_gone(st, Duration::from_secs(5));
        }
    }
    let mut removable = true;
    if let Ok(dir) = rt.root.dir(&st.id) {
        kill_leftovers(&dir);
    }
    // Whatever is still in the container's host cgroup (a crashed
    // monitor's children) is killed, then the cgroup is removed.
    if let Some(cg) = &st.host_cgroup {
        crate::host_cgroup::remove(cg);
    }
    if let Ok(dir) = rt.root.dir(&st.id) {
        if let Err(e) = unmount_all(&st.mounts) {
            tracing::warn!(id = %st.id, error = %e, "unmounting the share");
        }
        // A create killed between making a mount and recording it leaves
        // one that is not in the state: everything mounted under the
        // container's own directory is husk's, so detach that too.
        let unrecorded = crate::mounts::mounts_under(&dir);
        if !unrecorded.is_empty() {
            tracing::debug!(id = %st.id, ?unrecorded, "detaching mounts the state does not list");
            if let Err(e) = unmount_all(&unrecorded) {
                tracing::warn!(id = %st.id, error = %e, "unmounting what the state does not list");
            }
        }
        // Removing the directory through a mount would delete the
        // container's files: leave it if anything is still mounted there.
        let left = crate::mounts::mounts_under(&dir);
        if !left.is_empty() {
            tracing::warn!(id = %st.id, ?left, "still mounted; not removing the state directory");
            removable = false;
        }
    }
    if let Some(n) = &st.network {
        crate::network::teardown(n);
    }
    if !removable {
        return;
    }
    if let Err(e) = rt.root.remove(&st.id) {
        tracing::warn!(id = %st.id, error = %e, "removing the state directory");
    }
}

/// How long `teardown` waits for a monitor that recorded its container's
/// exit to finish its own exit path before stopping the VM itself.
const MONITOR_EXIT_GRACE: Duration = Duration::from_secs(3);

fn wait_gone(st: &ContainerState, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !st.monitor_alive() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    !st.monitor_alive()
}

/// Kills what a SIGKILLed monitor may have left: the children it recorded
/// in its state directory (pid and start time, so a recycled pid or a
/// process that only mentions the directory is never touched).
fn kill_leftovers(dir: &std::path::Path) {
    let n = husk_vmm_contract::journal::kill_recorded(dir, Duration::from_secs(2));
    if n > 0 {
        tracing::debug!(dir = %dir.display(), killed = n, "stopped the monitor's leftover children");
    }
}

/// Asks the monitor to park (`true`) or run the VM's vCPUs (SIGTSTP /
/// SIGCONT, which it never forwards to the container) and waits until its
/// `vm-state` file says so. Both engines: the builtin engine parks its vCPU
/// threads, the qemu engine stops qemu.
fn set_paused(rt: &Runtime, st: &ContainerState, paused: bool) -> Result<(), OpError> {
    let id = &st.id;
    let dir = rt.root.dir(id)?;
    let sig = if paused {
        Signal::SIGTSTP
    } else {
        Signal::SIGCONT
    };
    if !st.monitor_alive() || send_signal(Pid::from_raw(st.pid), sig).is_err() {
        return Err(OpError::Invalid(format!(
            "container {id}: its monitor is not running"
        )));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let want = if paused {
        VmState::Paused
    } else {
        VmState::Running
    };
    loop {
        match husk_vmm_contract::journal::vm_state(&dir) {
            Some(s) if s == want => break,
            Some(VmState::Stopped) => {
                return Err(OpError::Invalid(format!(
                    "container {id}: it stopped before its VM could {}",
                    if paused { "park" } else { "resume" }
                )))
            }
            _ => {}
        }
        if std::time::Instant::now() >= deadline || !st.monitor_alive() {
            return Err(OpError::Invalid(format!(
                "container {id}: the monitor did not {} the VM's vCPUs within 10 s",
                if paused { "park" } else { "resume" }
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// `pause`: stops the VM's vCPUs.
pub fn pause(rt: &Runtime, id: &str) -> Result<(), OpError> {
    let _lock = rt.root.lock(id)?;
    let mut st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    if status != Status::Running && status != Status::Created {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "only a running container can pause",
        });
    }
    set_paused(rt, &st, true)?;
    st.status = Status::Paused;
    rt.root.save(&st)?;
    Ok(())
}

/// `resume`.
pub fn resume(rt: &Runtime, id: &str) -> Result<(), OpError> {
    let _lock = rt.root.lock(id)?;
    let mut st = rt.root.load(id)?;
    let status = live_status(rt, &st);
    if status != Status::Paused {
        return Err(OpError::BadState {
            id: id.into(),
            status,
            what: "it is not paused",
        });
    }
    set_paused(rt, &st, false)?;
    st.status = Status::Running;
    rt.root.save(&st)?;
    Ok(())
}

/// Waits for the monitor (a child of this process) to exit; returns the
/// container's exit status.
pub fn wait_monitor(pid: i32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return 255,
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
