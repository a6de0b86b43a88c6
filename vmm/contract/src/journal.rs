//! What a monitor records in its state directory for whoever comes after
//! it (the runtime's `state`, `delete`, the shim's cleanup): the processes
//! it started ([`CHILDREN_FILE`]) and what its guest is doing
//! ([`VM_STATE_FILE`]).
//!
//! A monitor's children die with it (`PR_SET_PDEATHSIG`) except where the
//! kernel clears that setting: qemu's `-runas` changes its uid, which does.
//! So that whoever cleans up after a SIGKILLed monitor stops exactly what
//! it started, and never a process that merely looks like it (another
//! container's, or an operator's `tail -f` of a log), each child is
//! appended to [`CHILDREN_FILE`] as `PID START_TIME NAME` right after it is
//! spawned. A pid counts as that child only while its start time (clock
//! ticks since boot, from `/proc/PID/stat`) is the recorded one.

use std::io::Write;
use std::path::Path;

/// The file in the state directory.
pub const CHILDREN_FILE: &str = "children";

/// One recorded child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Its pid.
    pub pid: i32,
    /// Its start time when it was recorded.
    pub start_time: u64,
    /// What it is (`qemu`, `virtiofsd[TAG]`, `vhost-device-vsock`).
    pub name: String,
}

impl Recorded {
    /// Whether this very process still runs (same pid, same start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// The start time of `pid` in clock ticks since boot; `None` when it is
/// gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    if stat.state == 'Z' || stat.state == 'X' {
        return None;
    }
    Some(stat.starttime)
}

/// Appends `pid` (which must be alive) to `state_dir`'s list.
pub fn record(state_dir: &Path, pid: u32, name: &str) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let start = start_time(pid).ok_or(std::io::ErrorKind::NotFound)?;
    let name: String = name
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(CHILDREN_FILE))?;
    // One write(2) per line: O_APPEND keeps lines whole.
    f.write_all(format!("{pid} {start} {name}\n").as_bytes())
}

/// The children recorded in `state_dir`; malformed lines are skipped.
pub fn read(state_dir: &Path) -> Vec<Recorded> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(CHILDREN_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some(Recorded {
                pid: it.next()?.parse().ok().filter(|p| *p > 1)?,
                start_time: it.next()?.parse().ok()?,
                name: it.next()?.to_owned(),
            })
        })
        .collect()
}

/// Sends `signal` to every recorded child of `state_dir` that still runs;
/// returns how many were signalled.
pub fn signal_recorded(state_dir: &Path, signal: nix::sys::signal::Signal) -> usize {
    read(state_dir)
        .iter()
        .filter(|r| r.alive())
        .filter(|r| nix::sys::signal::kill(nix::unistd::Pid::from_raw(r.pid), signal).is_ok())
        .count()
}

/// SIGKILLs every recorded child of `state_dir` that still runs and waits
/// up to `timeout` until none does (a zombie no longer runs); returns how
/// many were killed.
pub fn kill_recorded(state_dir: &Path, timeout: std::time::Duration) -> usize {
    let killed = signal_recorded(state_dir, nix::sys::signal::Signal::SIGKILL);
    if killed > 0 {
        let deadline = std::time::Instant::now() + timeout;
        while read(state_dir).iter().any(Recorded::alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_signals_only_the_very_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        record(dir.path(), child.id(), "a name").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(CHILDREN_FILE))
            .unwrap()
            // The other sleeper's pid with a start time it does not have:
            // a recycled pid, which must be left alone. And junk.
            .write_all(format!("{} 1 stale\nnot a line\n1 5 init\n", other.id()).as_bytes())
            .unwrap();
        let recs = read(dir.path());
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].name, "a_name");
        assert!(recs[0].alive() && !recs[1].alive());
        assert_eq!(
            signal_recorded(dir.path(), nix::sys::signal::Signal::SIGKILL),
            1
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        assert!(
            other.try_wait().unwrap().is_none(),
            "the look-alike survives"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!recs[0].alive());
        assert_eq!(read(Path::new("/nonexistent")), Vec::new());
    }

    /// A live process has its start time; once it is a zombie, or
    /// reaped, it has none.
    #[test]
    fn start_time_is_none_for_zombies_and_the_gone() {
        let me = i32::try_from(std::process::id()).unwrap();
        let mine = start_time(me).expect("this process's start time");
        assert_eq!(start_time(me), Some(mine));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        // Until it is waited for, the exited child stays a zombie.
        let zombie = nix::sys::wait::waitid(
            nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(pid)),
            nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT,
        );
        assert!(zombie.is_ok(), "{zombie:?}");
        assert_eq!(start_time(pid), None);
        child.wait().unwrap();
        assert_eq!(start_time(pid), None);
    }
}

/// The file in the state directory saying what the guest is doing:
/// `running`, `paused` (its vCPUs parked, after `husk pause`) or `stopped`
/// (the container's init exited, or the VM ended: written the moment the
/// monitor learns it, before it drains the output and stops the VM, so
/// `husk state` says `stopped` at once). Written by the monitor, read by
/// the runtime.
pub const VM_STATE_FILE: &str = "vm-state";

/// What the monitor's [`VM_STATE_FILE`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// The vCPUs are parked.
    Paused,
    /// The container's init exited or the VM ended; never changes again.
    Stopped,
}

impl VmState {
    /// The file's text: all of the same length, so one write at offset 0
    /// replaces the last.
    fn text(self) -> &'static [u8; 8] {
        match self {
            VmState::Running => b"running\n",
            VmState::Paused => b"paused \n",
            VmState::Stopped => b"stopped\n",
        }
    }
}

/// The monitor's [`VM_STATE_FILE`], opened before it confines itself.
#[derive(Debug)]
pub struct VmStateFile {
    file: std::fs::File,
    last: VmState,
}

impl VmStateFile {
    /// Creates `STATE_DIR/vm-state` saying `running`.
    pub fn create(state_dir: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(state_dir.join(VM_STATE_FILE))?;
        let mut f = VmStateFile {
            file,
            last: VmState::Running,
        };
        f.write(VmState::Running)?;
        Ok(f)
    }

    /// Records `state`, unless `stopped` was recorded already: a stopped
    /// guest is not paused or resumed again.
    pub fn set(&mut self, state: VmState) -> std::io::Result<()> {
        if self.last == VmState::Stopped || self.last == state {
            return Ok(());
        }
        self.write(state)?;
        self.last = state;
        Ok(())
    }

    /// lseek + write, which the confined monitor may use.
    fn write(&mut self, state: VmState) -> std::io::Result<()> {
        use std::io::Seek;
        self.file.rewind()?;
        self.file.write_all(state.text())
    }
}

/// What the monitor of `state_dir` says its guest does (`None` when it
/// says nothing: no such file, an older monitor).
pub fn vm_state(state_dir: &Path) -> Option<VmState> {
    match std::fs::read_to_string(state_dir.join(VM_STATE_FILE))
        .ok()?
        .trim()
    {
        "paused" => Some(VmState::Paused),
        "running" => Some(VmState::Running),
        "stopped" => Some(VmState::Stopped),
        _ => None,
    }
}
