//! OOM kills end to end: a container over its memory limit is killed by
//! the guest kernel's OOM killer (exit 137), and `husk events` (runc's
//! command) reports it as `{"type":"oom","id":...}` among its stats lines,
//! then ends with the container; `husk events --stats` prints one stats
//! event in runc's shape. Skips (with its reason) where the host lacks
//! root, the built guest, QEMU or the daemons.

mod common;
use husk_test_support::require;

use std::fs;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Env;

/// The container's memory limit.
const LIMIT: u64 = 32 << 20;

/// Waits for `child` at most `secs` seconds; kills it if it takes longer.
fn wait_at_most(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON lines `husk events` wrote to `path` so far.
fn event_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn an_oom_killed_container_exits_137_and_events_report_the_oom() {
    require!(common::guest_ready());
    let env = Env::new();
    // Waits for /tmp/go, then makes the shell hold a 100 MB string.
    let b = env.bundle(
        "b",
        &[],
        &[
            "sh",
            "-c",
            "while [ ! -e /tmp/go ]; do sleep 0.1; done; \
             x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    env.edit_config(&b, |c| {
        c["linux"]["resources"]["memory"] = serde_json::json!({ "limit": LIMIT });
    });
    let run_out = env.dir.path().join("run.out");
    let mut run = env
        .husk()
        .args(["run", "--bundle", b.to_str().unwrap(), "o1"])
        .stdout(fs::File::create(&run_out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    env.wait_running("o1", Duration::from_secs(120));

    // --stats: one event, runc's shape, the container's limit in it.
    let out = env.ok(&["events", "--stats", "o1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (&v["type"], &v["id"]),
        (&"stats".into(), &"o1".into()),
        "{v}"
    );
    let data = &v["data"];
    assert_eq!(data["memory"]["usage"]["limit"], LIMIT, "{v}");
    assert!(data["memory"]["usage"]["usage"].as_u64() > Some(0), "{v}");
    assert!(data["pids"]["current"].as_u64() >= Some(1), "{v}");
    assert!(data["cpu"]["usage"]["total"].as_u64() > Some(0), "{v}");
    for key in ["cpuset", "blkio", "hugetlb", "intel_rdt"] {
        assert!(data[key].is_object(), "{key}: {v}");
    }

    // events, until the container stops.
    let events_out = env.dir.path().join("events.out");
    let mut events = env
        .husk()
        .args(["events", "--interval", "1s", "o1"])
        .stdout(fs::File::create(&events_out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // A stats line: it has taken its baseline, and watches.
    let deadline = Instant::now() + Duration::from_secs(60);
    while event_lines(&events_out).is_empty() {
        assert!(Instant::now() < deadline, "no stats from husk events");
        assert!(events.try_wait().unwrap().is_none(), "husk events ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ok(&["exec", "o1", "touch", "/tmp/go"]);
    let st = wait_at_most(&mut run, 180, "the OOM-killed container");
    assert_eq!(
        st.code(),
        Some(137),
        "run: {st}, output {:?}",
        fs::read_to_string(&run_out)
    );
    assert_eq!(
        fs::read_to_string(&run_out).unwrap(),
        "",
        "the hog survived"
    );
    let st = wait_at_most(&mut events, 60, "husk events after the container stopped");
    assert!(st.success(), "husk events: {st}");
    let evs = event_lines(&events_out);
    assert!(
        evs.iter().all(|e| e["id"] == "o1"
            && (e["type"] == "stats" && e["data"].is_object()
                || e["type"] == "oom" && e.get("data").is_none())),
        "{evs:?}"
    );
    let ooms = evs.iter().filter(|e| e["type"] == "oom").count();
    assert!(ooms >= 1, "no oom event: {evs:?}");
    env.assert_clean();
}

/// `events` of a container that does not exist: a clear error, exit 1,
/// nothing left; a bad interval is refused before anything runs.
#[test]
fn events_of_an_unknown_container_fail_clearly() {
    let env = Env::new();
    for args in [&["events", "nope"][..], &["events", "--stats", "nope"]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("container \"nope\" does not exist"), "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = env.run(&["events", "--interval", "0s", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the interval must be above zero"), "{err}");
    env.assert_clean();
}
