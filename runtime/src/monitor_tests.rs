use super::*;

use std::os::unix::fs::PermissionsExt;

use crate::host_cgroup::HostCgroupState;

/// A fake `husk-vmm` running `body`, a stand-in `cgroup.procs` and a tap
/// stand-in, in a temporary directory.
struct Fake {
    dir: tempfile::TempDir,
    binary: PathBuf,
    joiner: Joiner,
    tap: OwnedFd,
}

impl Fake {
    fn new(body: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("husk-vmm");
        std::fs::write(&binary, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cg = dir.path().join("cg");
        std::fs::create_dir(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "").unwrap();
        let joiner = Joiner::open(&HostCgroupState {
            path: "/fake".into(),
            dirs: vec![cg],
            parents: Vec::new(),
        })
        .unwrap();
        let tap = File::create(dir.path().join("tap")).unwrap().into();
        Fake {
            dir,
            binary,
            joiner,
            tap,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn launch(&self, timeout: Duration) -> (Result<Launched, LaunchError>, Option<i32>) {
        let config = self.path("vmm.json");
        loop {
            let mut started = None;
            let r = launch_monitor(
                Launch {
                    binary: &self.binary,
                    config: &config,
                    args: vec!["--ready-fd".into(), READY_FD.to_string().into()],
                    stdin: Stdio::null(),
                    stdout: Stdio::null(),
                    stderr: Stdio::null(),
                    controlling_tty: false,
                    tap: Some(&self.tap),
                    cgroup: &self.joiner,
                    ready_timeout: timeout,
                },
                |pid| started = Some(pid),
            );
            // Another test's fork may briefly hold the script open for
            // writing (ETXTBSY); that is the test's race, not the launcher's.
            match &r {
                Err(LaunchError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => return (r, started),
            }
        }
    }
}

#[test]
fn the_monitor_gets_its_fds_and_cgroup_and_its_report_is_read() {
    let f = Fake::new(
        "echo \"$@\" > \"$(dirname \"$0\")/args\"\n\
         readlink /proc/$$/fd/4 > \"$(dirname \"$0\")/fd4\"\n\
         echo '{\"ok\":true,\"pid\":7}' >&3\n",
    );
    let (r, started) = f.launch(Duration::from_secs(30));
    let launched = r.unwrap();
    assert_eq!(launched.reported_pid, Some(7));
    assert_eq!(started, Some(launched.pid));
    let args = std::fs::read_to_string(f.path("args")).unwrap();
    assert_eq!(
        args.trim(),
        format!("--config {} --ready-fd 3", f.path("vmm.json").display())
    );
    // The tap is the monitor's fd 4, and it joined the cgroup before it ran.
    let fd4 = std::fs::read_to_string(f.path("fd4")).unwrap();
    assert_eq!(fd4.trim(), f.path("tap").display().to_string());
    assert_eq!(
        std::fs::read_to_string(f.path("cg/cgroup.procs")).unwrap(),
        "0"
    );
}

#[test]
fn a_failure_report_a_bad_line_and_silence_are_errors_naming_the_monitor() {
    let f = Fake::new("echo '{\"error\":\"no agent\",\"ok\":false}' >&3");
    let (r, started) = f.launch(Duration::from_secs(30));
    let e = r.unwrap_err();
    assert!(
        matches!(&e, LaunchError::Failed { error, .. } if error == "no agent"),
        "{e:?}"
    );
    assert_eq!(e.pid(), started);
    assert_eq!(e.to_string(), "no agent");

    let f = Fake::new("echo 'ready' >&3");
    let e = f.launch(Duration::from_secs(30)).0.unwrap_err();
    assert!(
        matches!(&e, LaunchError::BadReport { line, .. } if line == "ready\n"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), r#"bad readiness report "ready\n""#);

    let f = Fake::new("exit 1");
    let e = f.launch(Duration::from_secs(30)).0.unwrap_err();
    assert!(
        matches!(
            &e,
            LaunchError::NoReport {
                why: NoReport::Exited,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "no readiness report (monitor exited)");

    let f = Fake::new("exec sleep 30");
    let (r, started) = f.launch(Duration::from_millis(200));
    let e = r.unwrap_err();
    assert!(
        matches!(
            &e,
            LaunchError::NoReport {
                why: NoReport::TimedOut,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "no readiness report (timed out)");
    let pid = nix::unistd::Pid::from_raw(started.unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();
}

#[test]
fn a_monitor_that_cannot_start_is_a_spawn_error() {
    let f = Fake::new("");
    std::fs::remove_file(&f.binary).unwrap();
    let (r, started) = f.launch(Duration::from_secs(1));
    let e = r.unwrap_err();
    assert!(matches!(&e, LaunchError::Spawn { .. }), "{e:?}");
    assert_eq!(started, None);
    assert_eq!(e.pid(), None);
    assert!(e.to_string().contains("in the host cgroup /fake"), "{e}");
}
