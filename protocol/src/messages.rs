//! The messages. Every struct denies unknown fields: a peer that sends a field
//! we do not know is speaking another protocol and gets a clear error.

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// The first frame on every connection: says what the connection is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Hello {
    /// A control connection: request/response frames follow.
    Control {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// A stdio stream of one process: raw bytes follow the acknowledgement.
    Stream {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
        /// The container the process belongs to.
        container_id: String,
        /// `None` for the container's init process, else the exec id.
        exec_id: Option<String>,
        /// Which stream this connection carries.
        stream: StreamKind,
    },
    /// A TCP connection to `port` on the guest's loopback, in the guest's
    /// network namespace (the pod's): raw bytes follow the acknowledgement,
    /// both ways. What `kubectl port-forward` reaches.
    Port {
        /// The sender's [`PROTOCOL_VERSION`].
        version: u32,
        /// The TCP port on 127.0.0.1 in the guest.
        port: u16,
    },
}

impl Hello {
    /// The protocol version the peer put in its hello.
    pub fn version(&self) -> u32 {
        match self {
            Hello::Control { version }
            | Hello::Stream { version, .. }
            | Hello::Port { version, .. } => *version,
        }
    }
}

/// One stdio stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Host -> process. A half-close (or close) of the connection is EOF,
    /// after every byte sent before it.
    Stdin,
    /// Process -> host; EOF when every writer in the guest has closed it.
    Stdout,
    /// Process -> host.
    Stderr,
    /// Both directions of the process's terminal (when `process.terminal`).
    Pty,
}

/// Which stdio streams the host will attach to a process. A stream the host
/// does not attach is `/dev/null` in the guest. With `process.terminal` the
/// process gets a pty and only [`StreamKind::Pty`] is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdioSpec {
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
}

/// A request frame on a control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Chosen by the client; echoed in the response.
    pub id: u64,
    /// What is asked.
    pub request: Request,
}

/// What the host can ask the agent. Requests on one control connection are
/// answered in order; `WaitProcess` blocks its connection until the process
/// exits (and `WaitOom` until an OOM kill or the init's exit), so a client
/// that must do other work meanwhile opens a second one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "args", deny_unknown_fields)]
pub enum Request {
    /// The agent's version; a cheap liveness check.
    Version,
    /// Build a container: namespaces, cgroup, rootfs and mounts, all of the
    /// spec but the final exec, which waits for `StartContainer`.
    CreateContainer(Box<CreateContainer>),
    /// Let a created container's init exec its process.
    StartContainer(ContainerRef),
    /// Start a further process in a running container's namespaces and cgroup.
    ExecProcess(Box<ExecProcess>),
    /// Send a signal to a process (or, with `all`, every process of the container).
    SignalProcess(SignalProcess),
    /// Wait until a process exits; answers [`Response::Exited`].
    WaitProcess(ProcessRef),
    /// Wait until the container's cgroup has counted more OOM kills than
    /// `after` (`oom_kill` of its `memory.events`, sub-cgroups included),
    /// or its init has exited; answers [`Response::OomKills`]. Like
    /// `WaitProcess` it blocks only its own connection. A container
    /// without a cgroup (or without the memory controller) counts none:
    /// only its init's exit answers.
    WaitOom(WaitOom),
    /// Set the window size of a process's pty.
    ResizeTty(ResizeTty),
    /// The container's state; answers [`Response::State`].
    State(ContainerRef),
    /// The container's processes; answers [`Response::Processes`].
    ListProcesses(ContainerRef),
    /// The container's cgroup v2 numbers; answers [`Response::Stats`].
    Stats(ContainerRef),
    /// Kill what is left of the container, unmount its rootfs and mounts,
    /// remove its cgroup and forget it.
    RemoveContainer(ContainerRef),
    /// Power the VM off once the response is sent.
    Shutdown,
    /// Configure the guest's network interfaces and routes (the pod's
    /// network); sent after boot, before the first `CreateContainer`.
    ConfigureNetwork(ConfigureNetwork),
    /// Freeze a created or running container's cgroup (cgroup v2
    /// `cgroup.freeze`); answered once the kernel reports it frozen
    /// (`cgroup.events`). [`Request::State`] says
    /// [`ContainerStatus::Paused`] until `ResumeContainer`.
    PauseContainer(ContainerRef),
    /// Thaw a container `PauseContainer` froze; answered once it is.
    ResumeContainer(ContainerRef),
    /// Write new `linux.resources` to a container's cgroup (`runc update`,
    /// the shim's `Update`), with the translation `CreateContainer` uses.
    UpdateContainer(Box<UpdateContainer>),
}

impl Request {
    /// The request's name, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Version => "Version",
            Request::CreateContainer(_) => "CreateContainer",
            Request::StartContainer(_) => "StartContainer",
            Request::ExecProcess(_) => "ExecProcess",
            Request::SignalProcess(_) => "SignalProcess",
            Request::WaitProcess(_) => "WaitProcess",
            Request::WaitOom(_) => "WaitOom",
            Request::ResizeTty(_) => "ResizeTty",
            Request::State(_) => "State",
            Request::ListProcesses(_) => "ListProcesses",
            Request::Stats(_) => "Stats",
            Request::RemoveContainer(_) => "RemoveContainer",
            Request::Shutdown => "Shutdown",
            Request::ConfigureNetwork(_) => "ConfigureNetwork",
            Request::PauseContainer(_) => "PauseContainer",
            Request::ResumeContainer(_) => "ResumeContainer",
            Request::UpdateContainer(_) => "UpdateContainer",
        }
    }
}

/// Names a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRef {
    /// The container id.
    pub container_id: String,
}

/// Names one process of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessRef {
    /// The container id.
    pub container_id: String,
    /// `None` for the container's init process, else the exec id.
    pub exec_id: Option<String>,
}

/// Arguments of [`Request::WaitOom`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitOom {
    /// The container id.
    pub container_id: String,
    /// The OOM kill count the caller has seen already: the answer comes
    /// once the count is above it (at once if it is already).
    pub after: u64,
}

/// Arguments of [`Request::CreateContainer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// The container id (unique within the VM).
    pub container_id: String,
    /// The OCI spec with every host path (root.path, bind-mount sources)
    /// already rewritten to its guest path.
    pub spec: Spec,
    /// virtio-fs tags to mount (at [`crate::share_mount_point`]) before the
    /// container is built; already-mounted tags are left as they are.
    pub shares: Vec<String>,
    /// The stdio streams of the init process the host will attach.
    pub stdio: StdioSpec,
}

/// Arguments of [`Request::UpdateContainer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateContainer {
    /// The container id.
    pub container_id: String,
    /// The container's resources as they are to be: the whole set, as
    /// `CreateContainer`'s spec has it (a field left out leaves its cgroup
    /// file as it is). Refused, with nothing changed, where a changed value
    /// asks for more than the guest has (its memory, its vCPUs): the VM was
    /// sized at create and cannot grow.
    pub resources: LinuxResources,
}

/// Arguments of [`Request::ConfigureNetwork`]. IPv4 only. The loopback
/// interface is brought up in any case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigureNetwork {
    /// The guest interfaces to bring up, found by MAC address.
    pub interfaces: Vec<NetInterface>,
    /// Routes to add once every interface is up.
    pub routes: Vec<NetRoute>,
}

/// One guest interface (a virtio-net device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// The device's MAC address (`aa:bb:cc:dd:ee:ff`): how the agent finds it.
    pub mac: String,
    /// IPv4 addresses; the first is the primary one.
    pub addresses: Vec<Ipv4Cidr>,
    /// The MTU.
    pub mtu: u32,
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4Cidr {
    /// The address.
    pub address: std::net::Ipv4Addr,
    /// The prefix length, 0..=32.
    pub prefix_len: u8,
}

/// An IPv4 route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRoute {
    /// The destination network (`0.0.0.0/0` for the default route).
    pub destination: Ipv4Cidr,
    /// The next hop, `None` for a directly connected destination.
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The MAC of the interface the route goes out of.
    pub interface_mac: String,
}

/// Arguments of [`Request::ExecProcess`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    /// The container to join.
    pub container_id: String,
    /// The new process's id, unique within the container.
    pub exec_id: String,
    /// The process to run (args, env, cwd, user, caps, rlimits, terminal...).
    /// Without `capabilities` it gets the container's (runc's rule).
    pub process: Process,
    /// The stdio streams the host will attach.
    pub stdio: StdioSpec,
    /// A sub-cgroup of the container's cgroup to run the process in
    /// (`runc exec --cgroup`): a path relative to it, which must exist and
    /// may not leave it (`/` is the container's cgroup itself). `None`:
    /// the container's cgroup. Refused when the container has no cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// Arguments of [`Request::SignalProcess`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalProcess {
    /// The container id.
    pub container_id: String,
    /// `None` for the container's init process, else the exec id.
    pub exec_id: Option<String>,
    /// The signal number.
    pub signal: i32,
    /// Signal every process in the container (runc `kill --all`).
    pub all: bool,
}

/// Arguments of [`Request::ResizeTty`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeTty {
    /// The container id.
    pub container_id: String,
    /// `None` for the container's init process, else the exec id.
    pub exec_id: Option<String>,
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// A response frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFrame {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The id of the request answered (0 for a hello acknowledgement).
    pub id: u64,
    /// The answer.
    pub result: Result<Response, ProtocolError>,
}

impl ResponseFrame {
    /// A response of this protocol version.
    pub fn new(id: u64, result: Result<Response, ProtocolError>) -> Self {
        ResponseFrame {
            version: PROTOCOL_VERSION,
            id,
            result,
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body", deny_unknown_fields)]
pub enum Response {
    /// Done; nothing to report.
    Empty,
    /// The agent's version.
    Version {
        /// [`PROTOCOL_VERSION`] of the agent.
        protocol: u32,
        /// The agent's crate version.
        agent: String,
    },
    /// A process was created (init) or started (exec); its guest pid.
    Process {
        /// The pid in the guest's root pid namespace.
        pid: i32,
    },
    /// A process exited.
    Exited {
        /// The exit code, or 128 + the signal number for a signal death.
        exit_status: i32,
    },
    /// What [`Request::WaitOom`] answers.
    OomKills {
        /// How many processes the kernel's OOM killer has killed in the
        /// container's cgroup so far (`memory.events` `oom_kill`).
        count: u64,
        /// The container's init has exited: the count is final as far as
        /// the container's life goes, and a further wait answers at once.
        exited: bool,
    },
    /// See [`ContainerState`].
    State(ContainerState),
    /// The processes of a container.
    Processes {
        /// One entry per process.
        processes: Vec<ProcessInfo>,
    },
    /// See [`CgroupStats`].
    Stats(CgroupStats),
}

/// The lifecycle state of a container, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Being built.
    Creating,
    /// Built; init waits for `StartContainer`.
    Created,
    /// Init has exec'd and not exited.
    Running,
    /// Init has exited.
    Stopped,
    /// Its cgroup is frozen (`PauseContainer`), whether it was created or
    /// running; `ResumeContainer` gives it its status back.
    Paused,
}

/// What [`Request::State`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerState {
    /// The container id.
    pub container_id: String,
    /// The lifecycle state.
    pub status: ContainerStatus,
    /// The guest pid of the init process (0 once it is reaped and gone).
    pub pid: i32,
    /// Set once init has exited.
    pub exit_status: Option<i32>,
}

/// One process of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// The guest pid.
    pub pid: i32,
    /// The exec id that started it, if it was started by `ExecProcess`;
    /// `None` for init and its descendants.
    pub exec_id: Option<String>,
}

/// cgroup v2 numbers of a container (missing controllers give `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupStats {
    /// memory.current, bytes.
    pub memory_usage: Option<u64>,
    /// memory.max, bytes (`None` for "max").
    pub memory_limit: Option<u64>,
    /// memory.stat anon + file, bytes, when available.
    pub memory_stat: Vec<(String, u64)>,
    /// cpu.stat usage_usec.
    pub cpu_usage_usec: Option<u64>,
    /// cpu.stat user_usec.
    pub cpu_user_usec: Option<u64>,
    /// cpu.stat system_usec.
    pub cpu_system_usec: Option<u64>,
    /// pids.current.
    pub pids_current: Option<u64>,
    /// pids.max (`None` for "max").
    pub pids_limit: Option<u64>,
    /// memory.events (`low`, `high`, `max`, `oom`, `oom_kill`...): how
    /// often each happened in the cgroup and its sub-cgroups. Empty
    /// without the memory controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_events: Vec<(String, u64)>,
}

impl CgroupStats {
    /// The `oom_kill` count of [`CgroupStats::memory_events`] (0 when
    /// the cgroup reported none).
    pub fn oom_kills(&self) -> u64 {
        self.memory_events
            .iter()
            .find(|(k, _)| k == "oom_kill")
            .map_or(0, |(_, v)| *v)
    }
}

/// A typed error: the code says what kind, the message says what exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
// The message comes from the guest: printed escaped, never raw.
#[error("{code}: {}", crate::sanitize(.message))]
pub struct ProtocolError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation, naming the thing that failed.
    pub message: String,
}

impl ProtocolError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// The kinds of failure a request can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such container or process.
    NotFound,
    /// A container or exec with that id exists already.
    AlreadyExists,
    /// The request or spec is malformed or asks for something impossible.
    InvalidArgument,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The object is not in a state that allows the request.
    FailedPrecondition,
    /// The process could not be executed (missing binary, permission...);
    /// the message carries the errno.
    ExecFailed,
    /// Anything else that went wrong in the agent.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::AlreadyExists => "already exists",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::FailedPrecondition => "failed precondition",
            ErrorCode::ExecFailed => "exec failed",
            ErrorCode::Internal => "internal error",
        };
        f.write_str(s)
    }
}

/// Checks a peer's version: anything but ours is refused.
pub fn check_version(version: u32) -> Result<(), ProtocolError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::UnsupportedVersion,
            format!("peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip_and_shape() {
        let f = RequestFrame {
            version: PROTOCOL_VERSION,
            id: 7,
            request: Request::SignalProcess(SignalProcess {
                container_id: "c".into(),
                exec_id: None,
                signal: 9,
                all: false,
            }),
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["request"]["type"], "SignalProcess");
        assert_eq!(v["request"]["args"]["signal"], 9);
        let back: RequestFrame = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let extra = r#"{"version":1,"id":1,"request":{"type":"Version"},"x":1}"#;
        assert!(serde_json::from_str::<RequestFrame>(extra).is_err());
        let unknown = r#"{"version":1,"id":1,"request":{"type":"Reformat"}}"#;
        let err = serde_json::from_str::<RequestFrame>(unknown).unwrap_err();
        assert!(err.to_string().contains("Reformat"), "{err}");
        let inner =
            r#"{"version":1,"id":1,"request":{"type":"State","args":{"container_id":"a","b":2}}}"#;
        assert!(serde_json::from_str::<RequestFrame>(inner).is_err());
    }

    /// `cgroup` (exec --cgroup) is left out when unset, so a request
    /// without it reads as before; when set it round-trips.
    #[test]
    fn exec_process_cgroup_is_optional() {
        let process: Process = serde_json::from_value(serde_json::json!({
            "args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        }))
        .unwrap();
        let mut r = ExecProcess {
            container_id: "c".into(),
            exec_id: "e".into(),
            process,
            stdio: StdioSpec::default(),
            cgroup: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("cgroup").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<ExecProcess>(v).unwrap(), r);
        r.cgroup = Some("sub".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cgroup"], "sub");
        assert_eq!(serde_json::from_value::<ExecProcess>(v).unwrap(), r);
    }

    /// `WaitOom` and its answer: their shape on the wire; stats without
    /// `memory_events` (an older agent's) still read.
    #[test]
    fn wait_oom_shape() {
        let r = Request::WaitOom(WaitOom {
            container_id: "c".into(),
            after: 2,
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "WaitOom", "args": {"container_id": "c", "after": 2}})
        );
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
        assert_eq!(r.name(), "WaitOom");
        let a = Response::OomKills {
            count: 3,
            exited: true,
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "OomKills", "body": {"count": 3, "exited": true}})
        );
        assert_eq!(serde_json::from_value::<Response>(v).unwrap(), a);
        let missing = r#"{"type":"WaitOom","args":{"container_id":"c"}}"#;
        assert!(serde_json::from_str::<Request>(missing).is_err());

        let old = r#"{"memory_usage":1,"memory_limit":null,"memory_stat":[],"cpu_usage_usec":null,
            "cpu_user_usec":null,"cpu_system_usec":null,"pids_current":null,"pids_limit":null}"#;
        let s: CgroupStats = serde_json::from_str(old).unwrap();
        assert_eq!((s.memory_events.len(), s.oom_kills()), (0, 0));
        let s = CgroupStats {
            memory_events: vec![("oom".into(), 4), ("oom_kill".into(), 2)],
            ..CgroupStats::default()
        };
        assert_eq!(s.oom_kills(), 2);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["memory_events"],
            serde_json::json!([["oom", 4], ["oom_kill", 2]])
        );
        assert_eq!(serde_json::from_value::<CgroupStats>(v).unwrap(), s);
    }

    /// The pause, resume and update requests keep their shape: a
    /// container ref, and the runtime spec's own `linux.resources` JSON.
    #[test]
    fn pause_resume_and_update_shape() {
        let c = || ContainerRef {
            container_id: "c".into(),
        };
        for (r, name) in [
            (Request::PauseContainer(c()), "PauseContainer"),
            (Request::ResumeContainer(c()), "ResumeContainer"),
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"type": name, "args": {"container_id": "c"}})
            );
            assert_eq!(r.name(), name);
            assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
        }
        let resources: LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 67108864}, "pids": {"limit": 20}, "cpu": {"cpus": "0"}
        }))
        .unwrap();
        let r = Request::UpdateContainer(Box::new(UpdateContainer {
            container_id: "c".into(),
            resources,
        }));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "UpdateContainer");
        assert_eq!(v["args"]["resources"]["memory"]["limit"], 67108864);
        assert_eq!(v["args"]["resources"]["pids"]["limit"], 20);
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
        let extra = serde_json::json!({"type": "UpdateContainer",
            "args": {"container_id": "c", "resources": {}, "x": 1}});
        assert!(serde_json::from_value::<Request>(extra).is_err());
        let s: ContainerStatus = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(s, ContainerStatus::Paused);
    }

    #[test]
    fn configure_network_shape() {
        let r = Request::ConfigureNetwork(ConfigureNetwork {
            interfaces: vec![NetInterface {
                mac: "02:00:00:00:00:01".into(),
                addresses: vec![Ipv4Cidr {
                    address: [10, 254, 1, 2].into(),
                    prefix_len: 24,
                }],
                mtu: 1400,
            }],
            routes: vec![NetRoute {
                destination: Ipv4Cidr {
                    address: [0, 0, 0, 0].into(),
                    prefix_len: 0,
                },
                gateway: Some([10, 254, 1, 1].into()),
                interface_mac: "02:00:00:00:00:01".into(),
            }],
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "ConfigureNetwork");
        assert_eq!(
            v["args"]["interfaces"][0]["addresses"][0]["address"],
            "10.254.1.2"
        );
        assert_eq!(serde_json::from_value::<Request>(v).unwrap(), r);
    }

    #[test]
    fn hello_and_errors() {
        let h: Hello = serde_json::from_str(
            r#"{"kind":"stream","version":1,"container_id":"c","exec_id":null,"stream":"stdout"}"#,
        )
        .unwrap();
        assert_eq!(h.version(), 1);
        assert!(check_version(2).is_err());
        let r = ResponseFrame::new(3, Err(ProtocolError::new(ErrorCode::NotFound, "no c")));
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("not_found"), "{s}");
        assert_eq!(serde_json::from_str::<ResponseFrame>(&s).unwrap(), r);
    }
}
