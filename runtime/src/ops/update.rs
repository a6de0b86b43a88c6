//! `update`: new `linux.resources` for a created or running container,
//! with runc's flags. What is asked is laid over the resources recorded in
//! the state ([`crate::resources::merge`], runc's rules), checked against
//! the VM's size from its create ([`crate::resources::check`]: a VM cannot
//! grow), written by the agent into the container's guest cgroup
//! (`UpdateContainer`, the create's translation), and recorded in the
//! state. A refused update changes nothing.

use std::io::Read;
use std::path::Path;

use husk_protocol::{Request, UpdateContainer};
use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::lifecycle::live_status;
use super::{OpError, Runtime};
use crate::cli::UpdateArgs;
use crate::resources::{self, parse_bytes, VmBounds};
use crate::state::Status;

/// The resources `husk update`'s flags ask for (`-r FILE`, `-r -` for
/// `stdin`, or the single flags), as a patch for
/// [`crate::resources::merge`]. What the guest cannot have is refused
/// here, naming the flag: Intel RDT schemas, kernel memory, real-time CPU
/// time.
pub fn patch_from_flags(a: &UpdateArgs, stdin: impl Read) -> Result<LinuxResources, OpError> {
    let refuse = |flag: &str, why: &str| Err(OpError::Invalid(format!("--{flag}: {why}")));
    const NO_RDT: &str = "Intel RDT (cache and memory bandwidth allocation) is not available \
                          in the guest: a VM's vCPUs have no resctrl";
    if a.l3_cache_schema.is_some() {
        return refuse("l3-cache-schema", NO_RDT);
    }
    if a.mem_bw_schema.is_some() {
        return refuse("mem-bw-schema", NO_RDT);
    }
    for (flag, v) in [
        ("kernel-memory", &a.kernel_memory),
        ("kernel-memory-tcp", &a.kernel_memory_tcp),
    ] {
        if v.is_some() {
            return refuse(
                flag,
                "cgroup v2, the guest's only cgroup version, has no kernel memory limit \
                 (runc refuses it on cgroup v2 too)",
            );
        }
    }
    let no_rt = "cgroup v2, the guest's only cgroup version, has no real-time CPU time";
    if a.cpu_rt_period.is_some_and(|v| v != 0) {
        return refuse("cpu-rt-period", no_rt);
    }
    if a.cpu_rt_runtime.is_some_and(|v| v != 0) {
        return refuse("cpu-rt-runtime", no_rt);
    }
    if let Some(path) = &a.resources {
        let mut text = Vec::new();
        let read = if path == Path::new("-") {
            let mut stdin = stdin;
            stdin.read_to_end(&mut text)
        } else {
            std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut text))
        };
        read.map_err(OpError::io(format!(
            "--resources: reading {}",
            path.display()
        )))?;
        return crate::bundle::parse_json(&text).map_err(|e| {
            OpError::Invalid(format!(
                "--resources {}: linux.resources: {e}",
                path.display()
            ))
        });
    }
    let bytes = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(parse_bytes)
            .transpose()
            .map_err(|e| OpError::Invalid(format!("--{flag}: {e}")))
    };
    let v = json!({
        "memory": {
            "limit": bytes("memory", &a.memory)?,
            "reservation": bytes("memory-reservation", &a.memory_reservation)?,
            "swap": bytes("memory-swap", &a.memory_swap)?,
        },
        "cpu": {
            "shares": a.cpu_share,
            "quota": a.cpu_quota,
            "period": a.cpu_period,
            "cpus": a.cpuset_cpus,
            "mems": a.cpuset_mems,
        },
        "pids": a.pids_limit.map(|l| json!({"limit": l})),
        "blockIO": {"weight": a.blkio_weight},
    });
    // Nulls are unset: what no flag names stays as it is.
    let v = strip_nulls(v);
    serde_json::from_value(v).map_err(|e| OpError::Invalid(format!("update flags: {e}")))
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The size of container `id`'s VM, from the monitor configuration its
/// create wrote (`vmm.json` in its state directory).
fn vm_bounds(rt: &Runtime, id: &str) -> Result<VmBounds, OpError> {
    let path = rt.root.dir(id)?.join("vmm.json");
    let text = std::fs::read(&path).map_err(OpError::io(format!(
        "container {id}: reading its VM's size from {}",
        path.display()
    )))?;
    let v: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        OpError::Invalid(format!(
            "container {id}: {} is not a VM configuration: {e}",
            path.display()
        ))
    })?;
    let num = |k: &str| {
        v[k].as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                OpError::Invalid(format!("container {id}: {} has no {k}", path.display()))
            })
    };
    Ok(VmBounds {
        memory_mib: num("memory_mib")?,
        vcpus: num("vcpus")?,
    })
}

/// `update`: lays `patch` over container `id`'s recorded resources,
/// checks the result against its VM, has the agent apply it and records
/// it. A paused container (its vCPUs parked) is refused: its agent cannot
/// answer until `resume`.
pub fn update(rt: &Runtime, id: &str, patch: &LinuxResources) -> Result<(), OpError> {
    let _lock = rt.root.lock(id)?;
    let mut st = rt.root.load(id)?;
    match live_status(rt, &st) {
        Status::Created | Status::Running => {}
        Status::Paused => {
            return Err(OpError::BadState {
                id: id.into(),
                status: Status::Paused,
                what: "its VM's vCPUs are parked: resume it first",
            })
        }
        status => {
            return Err(OpError::BadState {
                id: id.into(),
                status,
                what: "only a created or running container can be updated",
            })
        }
    }
    let current = st.resources.clone().unwrap_or_default();
    let new = resources::merge(&current, patch);
    resources::check(&current, &new, vm_bounds(rt, id)?)
        .map_err(|e| OpError::Invalid(format!("update {id}: {e}")))?;
    rt.agent(&st)?
        .call(Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: id.into(),
            resources: new.clone(),
        })))
        .map_err(|source| OpError::Agent {
            id: id.into(),
            source,
        })?;
    tracing::info!(id, "resources updated");
    st.resources = Some(new);
    rt.root.save(&st)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerState;
    use clap::Parser;
    use husk_protocol::frame::{read_frame, write_frame};
    use husk_protocol::{ContainerStatus, Hello, RequestFrame, Response, ResponseFrame};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    fn args(flags: &[&str]) -> Result<UpdateArgs, clap::Error> {
        let mut argv = vec!["husk", "update"];
        argv.extend_from_slice(flags);
        argv.push("c1");
        match crate::cli::Cli::try_parse_from(argv)?.command {
            crate::cli::Command::Update(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    fn patch(flags: &[&str]) -> Result<LinuxResources, String> {
        let a = args(flags).map_err(|e| e.to_string())?;
        patch_from_flags(&a, &b""[..]).map_err(|e| e.to_string())
    }

    /// runc's flags become the runtime spec's fields; what no flag names
    /// is left out.
    #[test]
    fn flags_become_resources() {
        let p = patch(&[
            "--memory",
            "64M",
            "--memory-reservation",
            "32m",
            "--memory-swap",
            "-1",
            "--pids-limit",
            "20",
            "--cpu-quota",
            "-1",
            "--cpu-period",
            "100000",
            "--cpu-shares",
            "512",
            "--cpuset-cpus",
            "0",
            "--blkio-weight",
            "300",
        ])
        .unwrap();
        let want: LinuxResources = serde_json::from_value(json!({
            "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": -1},
            "cpu": {"quota": -1, "period": 100000, "shares": 512, "cpus": "0"},
            "pids": {"limit": 20},
            "blockIO": {"weight": 300},
        }))
        .unwrap();
        assert_eq!(p, want);
        let only = patch(&["--pids-limit", "-1"]).unwrap();
        assert_eq!(
            serde_json::to_value(&only).unwrap(),
            json!({"memory": {}, "cpu": {}, "pids": {"limit": -1}, "blockIO": {}})
        );
    }

    /// What the guest cannot have is refused naming the flag; a bad value
    /// names the flag; -r and a flag together are refused.
    #[test]
    fn bad_flags_are_refused_naming_them() {
        for (flags, want) in [
            (
                &["--kernel-memory", "64M"][..],
                "--kernel-memory: cgroup v2",
            ),
            (
                &["--kernel-memory-tcp", "1M"][..],
                "--kernel-memory-tcp: cgroup v2",
            ),
            (
                &["--cpu-rt-period", "1000000"][..],
                "--cpu-rt-period: cgroup v2",
            ),
            (
                &["--cpu-rt-runtime", "950000"][..],
                "--cpu-rt-runtime: cgroup v2",
            ),
            (
                &["--l3-cache-schema", "L3:0=f"][..],
                "--l3-cache-schema: Intel RDT",
            ),
            (
                &["--mem-bw-schema", "MB:0=50"][..],
                "--mem-bw-schema: Intel RDT",
            ),
            (
                &["--memory", "lots"][..],
                "--memory: \"lots\" is not a size",
            ),
            (
                &["--memory-swap", "-2"][..],
                "--memory-swap: \"-2\" is not a size",
            ),
            (
                &["--pids-limit", "x"][..],
                "invalid value 'x' for '--pids-limit",
            ),
            (&["-r", "-", "--memory", "1M"][..], "cannot be used with"),
        ] {
            let e = patch(flags).unwrap_err();
            assert!(e.contains(want), "{flags:?}: {e}");
        }
    }

    #[test]
    fn resources_come_from_a_file_or_stdin() {
        let a = args(&["-r", "-"]).unwrap();
        let p = patch_from_flags(&a, &br#"{"pids": {"limit": 7}}"#[..]).unwrap();
        assert_eq!(p.pids().unwrap().limit(), 7);
        let e = patch_from_flags(&a, &br#"{"pids": {"limit": "seven"}}"#[..])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--resources -: linux.resources: pids.limit: "),
            "{e}"
        );
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("r.json");
        std::fs::write(&f, r#"{"memory": {"limit": 1048576}}"#).unwrap();
        let a = args(&["--resources", f.to_str().unwrap()]).unwrap();
        let p = patch_from_flags(&a, &b""[..]).unwrap();
        assert_eq!(p.memory().unwrap().limit(), Some(1 << 20));
    }

    /// A state root holding running container `id` in a VM of 256 MiB and
    /// 1 vCPU, recorded with `resources`, its agent a fake that records
    /// the `UpdateContainer`s it gets (and refuses a limit of 200 MiB, as
    /// the guest's MemTotal would).
    fn running(
        t: &tempfile::TempDir,
        id: &str,
        resources: serde_json::Value,
    ) -> (Runtime, Arc<Mutex<Vec<LinuxResources>>>) {
        let rt = Runtime::new(t.path().join("root"));
        let dir = rt.root.claim(id).unwrap();
        std::fs::write(
            dir.join("vmm.json"),
            json!({"memory_mib": 256, "vcpus": 1}).to_string(),
        )
        .unwrap();
        let st = ContainerState {
            status: Status::Running,
            resources: Some(serde_json::from_value(resources).unwrap()),
            ..ContainerState::sample(id, dir.join("vsock.sock"))
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = seen.clone();
        let listener = UnixListener::bind(&st.vsock_uds).unwrap();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut line = String::new();
                if BufReader::new(s.try_clone().unwrap())
                    .read_line(&mut line)
                    .is_err()
                {
                    continue;
                }
                let _ = s.write_all(b"OK 7\n");
                let Ok(_) = read_frame::<_, Hello>(&mut s) else {
                    continue;
                };
                let _ = write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty)));
                while let Ok(f) = read_frame::<_, RequestFrame>(&mut s) {
                    let r = match f.request {
                        Request::State(c) => Ok(Response::State(husk_protocol::ContainerState {
                            container_id: c.container_id,
                            status: ContainerStatus::Running,
                            pid: 1,
                            exit_status: None,
                        })),
                        Request::UpdateContainer(u) => {
                            let limit = u.resources.memory().and_then(|m| m.limit());
                            got.lock().unwrap().push(u.resources);
                            if limit == Some(200 << 20) {
                                Err(husk_protocol::ProtocolError::new(
                                    husk_protocol::ErrorCode::InvalidArgument,
                                    "linux.resources.memory.limit 209715200: more than the guest's memory",
                                ))
                            } else {
                                Ok(Response::Empty)
                            }
                        }
                        other => panic!("the fake agent got {other:?}"),
                    };
                    let _ = write_frame(&mut s, &ResponseFrame::new(f.id, r));
                }
            }
        });
        rt.root.save(&st).unwrap();
        (rt, seen)
    }

    fn recorded(rt: &Runtime, id: &str) -> serde_json::Value {
        serde_json::to_value(rt.root.load(id).unwrap().resources).unwrap()
    }

    /// An update is laid over the recorded resources, sent whole to the
    /// agent and recorded; one past the VM, or one the agent refuses,
    /// changes nothing.
    #[test]
    fn an_update_reaches_the_agent_and_the_state_and_a_refused_one_neither() {
        let t = tempfile::tempdir().unwrap();
        let before = json!({"memory": {"limit": 128 << 20}, "cpu": {"cpus": "0"}});
        let (rt, seen) = running(&t, "c1", before.clone());
        let p = patch(&["--memory", "64M", "--pids-limit", "20"]).unwrap();
        update(&rt, "c1", &p).unwrap();
        let want =
            json!({"memory": {"limit": 64 << 20}, "cpu": {"cpus": "0"}, "pids": {"limit": 20}});
        assert_eq!(
            serde_json::to_value(&seen.lock().unwrap()[0]).unwrap(),
            want
        );
        assert_eq!(recorded(&rt, "c1"), want);

        for (flags, msg) in [
            (&["--memory", "1G"][..], "linux.resources.memory.limit \"1073741824\": asks for 1024 MiB, and the VM has 256 MiB of RAM: the VM was sized at create and cannot grow"),
            (&["--cpuset-cpus", "0-1"][..], "linux.resources.cpu.cpus \"0-1\": names CPU 1, and the VM has vCPUs 0-0"),
            (&["--cpu-quota", "200000", "--cpu-period", "100000"][..], "linux.resources.cpu.quota \"200000\": 2 CPUs' worth"),
        ] {
            let e = update(&rt, "c1", &patch(flags).unwrap()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("update c1: {msg}")), "{flags:?}: {e}");
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "a refused update reached the agent"
        );
        let e = update(&rt, "c1", &patch(&["--memory", "200M"]).unwrap()).unwrap_err();
        let e = crate::error_chain(&e);
        assert!(e.contains("more than the guest's memory"), "{e}");
        assert_eq!(e.matches("more than the guest's memory").count(), 1, "{e}");
        assert_eq!(recorded(&rt, "c1"), want, "a refused update was recorded");
        let e = update(&rt, "nope", &p).unwrap_err().to_string();
        assert_eq!(e, "container \"nope\" does not exist");
    }

    #[test]
    fn a_paused_or_stopped_container_is_not_updated() {
        let t = tempfile::tempdir().unwrap();
        let (rt, seen) = running(&t, "c1", json!({}));
        let mut st = rt.root.load("c1").unwrap();
        st.status = Status::Paused;
        rt.root.save(&st).unwrap();
        let p = patch(&["--pids-limit", "20"]).unwrap();
        let e = update(&rt, "c1", &p).unwrap_err().to_string();
        assert_eq!(
            e,
            "container c1 is paused: its VM's vCPUs are parked: resume it first"
        );
        st.pid = 0;
        st.status = Status::Stopped;
        rt.root.save(&st).unwrap();
        let e = update(&rt, "c1", &p).unwrap_err().to_string();
        assert!(e.contains("is stopped: only a created or running"), "{e}");
        assert!(seen.lock().unwrap().is_empty());
    }
}
