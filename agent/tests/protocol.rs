//! Bad input: malformed frames, unknown fields, other versions, unknown
//! ids, bad specs. Each gets a typed error, the agent keeps serving, and
//! nothing is left behind.

mod common;
use std::io::Write;
use std::os::unix::net::UnixStream;

use common::*;
use husk_protocol::frame::{read_frame, write_frame};
use husk_protocol::{
    ContainerRef, ErrorCode, Hello, ProcessRef, Request, ResizeTty, Response, ResponseFrame,
    SignalProcess, StdioSpec, StreamKind, PROTOCOL_VERSION,
};
use husk_test_support::require;

fn raw_control(agent: &Agent) -> UnixStream {
    let mut s = agent
        .addr
        .connect_retry(std::time::Duration::from_secs(10))
        .unwrap();
    write_frame(
        &mut s,
        &Hello::Control {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let ack: ResponseFrame = read_frame(&mut s).unwrap();
    assert_eq!(ack.result, Ok(Response::Empty));
    s
}

fn send_raw(s: &mut UnixStream, body: &[u8]) -> ResponseFrame {
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(body);
    s.write_all(&buf).unwrap();
    read_frame(s).unwrap()
}

fn code(r: &ResponseFrame) -> ErrorCode {
    r.result.as_ref().unwrap_err().code
}

#[test]
fn malformed_unknown_field_and_wrong_version_frames() {
    require!(can_run());
    let agent = Agent::start();
    let mut s = raw_control(&agent);
    let r = send_raw(&mut s, b"{{{ not json");
    assert_eq!((r.id, code(&r)), (0, ErrorCode::InvalidArgument), "{r:?}");
    let r = send_raw(
        &mut s,
        br#"{"version":1,"id":5,"request":{"type":"Version"},"extra":true}"#,
    );
    assert_eq!((r.id, code(&r)), (5, ErrorCode::InvalidArgument), "{r:?}");
    assert!(
        r.result.as_ref().unwrap_err().message.contains("extra"),
        "{r:?}"
    );
    let r = send_raw(
        &mut s,
        br#"{"version":1,"id":6,"request":{"type":"Reformat"}}"#,
    );
    assert_eq!((r.id, code(&r)), (6, ErrorCode::InvalidArgument), "{r:?}");
    let r = send_raw(
        &mut s,
        br#"{"version":2,"id":7,"request":{"type":"Version"}}"#,
    );
    assert_eq!(
        (r.id, code(&r)),
        (7, ErrorCode::UnsupportedVersion),
        "{r:?}"
    );
    let r = send_raw(
        &mut s,
        br#"{"version":9,"id":8,"request":{"type":"FromTheFuture","args":1}}"#,
    );
    assert_eq!(
        (r.id, code(&r)),
        (8, ErrorCode::UnsupportedVersion),
        "{r:?}"
    );
    // The connection still works.
    let r = send_raw(
        &mut s,
        br#"{"version":1,"id":9,"request":{"type":"Version"}}"#,
    );
    assert!(
        matches!(r.result, Ok(Response::Version { protocol: 1, .. })),
        "{r:?}"
    );

    // A hello of another version or shape is refused and the connection closed.
    let mut s2 = agent.addr.connect().unwrap();
    write_frame(&mut s2, &Hello::Control { version: 2 }).unwrap();
    let r: ResponseFrame = read_frame(&mut s2).unwrap();
    assert_eq!(code(&r), ErrorCode::UnsupportedVersion);
    let mut s3 = agent.addr.connect().unwrap();
    let r = send_raw(&mut s3, br#"{"kind":"control","version":1,"x":1}"#);
    assert_eq!(code(&r), ErrorCode::InvalidArgument);

    // An oversized length prefix is refused before allocating.
    let mut s4 = raw_control(&agent);
    s4.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let r: ResponseFrame = read_frame(&mut s4).unwrap();
    assert_eq!(code(&r), ErrorCode::InvalidArgument);
    // A peer that hangs up mid-frame just goes away.
    let mut s5 = raw_control(&agent);
    s5.write_all(&[0, 0, 0, 50, b'{']).unwrap();
    drop(s5);

    let mut c = agent.client();
    assert!(matches!(
        c.call(Request::Version).unwrap(),
        Response::Version { .. }
    ));
    agent.shutdown();
}

#[test]
fn unknown_container_ids_are_not_found() {
    require!(can_run());
    let agent = Agent::start();
    let mut c = agent.client();
    let cref = || ContainerRef {
        container_id: "ghost".into(),
    };
    let pref = || ProcessRef {
        container_id: "ghost".into(),
        exec_id: None,
    };
    let reqs = vec![
        Request::StartContainer(cref()),
        Request::State(cref()),
        Request::ListProcesses(cref()),
        Request::Stats(cref()),
        Request::RemoveContainer(cref()),
        Request::WaitProcess(pref()),
        Request::SignalProcess(SignalProcess {
            container_id: "ghost".into(),
            exec_id: None,
            signal: 9,
            all: true,
        }),
        Request::ResizeTty(ResizeTty {
            container_id: "ghost".into(),
            exec_id: None,
            rows: 1,
            cols: 1,
        }),
    ];
    for r in reqs {
        let e = c.call(r.clone()).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{r:?}: {e}");
    }
    let (spec, _) = agent.bundle("b", &[], &["true"]);
    let e = exec(
        &mut c,
        "ghost",
        "e",
        spec.process().clone().unwrap(),
        StdioSpec::default(),
    )
    .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = agent
        .addr
        .open_stream("ghost", None, StreamKind::Stdout)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    // A known container with an unknown exec id.
    create(&mut c, "real", spec, StdioSpec::default()).unwrap();
    let e = c.wait("real", Some("nope")).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    let e = agent
        .addr
        .open_stream("real", None, StreamKind::Stdout)
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(ErrorCode::FailedPrecondition),
        "stdout was not asked for"
    );
    remove(&mut c, "real");
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn bad_specs_are_refused_without_leftovers() {
    require!(can_run());
    let agent = Agent::start();
    let mut c = agent.client();
    let (spec, dir) = agent.bundle("b", &[], &["true"]);

    let missing = patch(spec.clone(), |v| {
        v["root"]["path"] = serde_json::json!(dir.join("nope"))
    });
    let e = create(&mut c, "c", missing, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(
        e.to_string().contains("nope") && e.to_string().contains("does not exist"),
        "{e}"
    );

    let relative = patch(spec.clone(), |v| {
        v["root"]["path"] = serde_json::json!("rootfs")
    });
    let e = create(&mut c, "c", relative, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("absolute"), "{e}");

    // A mount that fails in the child comes back naming the mount.
    let bad_mount = patch(spec.clone(), |v| {
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/weird", "type": "nosuchfs", "source": "x"}));
    });
    let e = create(&mut c, "c", bad_mount, StdioSpec::default()).unwrap_err();
    assert!(
        e.to_string().contains("mount nosuchfs on") && e.to_string().contains("/weird"),
        "{e}"
    );

    let bad_bind = patch(spec.clone(), |v| {
        v["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["bind"]}));
    });
    let e = create(&mut c, "c", bad_bind, StdioSpec::default()).unwrap_err();
    assert!(e.to_string().contains("/no/such/dir"), "{e}");

    // A hostname without a uts namespace would rename the VM: refused.
    let no_uts = patch(spec.clone(), |v| {
        v["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "uts");
    });
    let e = create(&mut c, "c", no_uts, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("uts"), "{e}");

    // The id is free again and a good spec works; a duplicate is refused.
    create(&mut c, "c", spec.clone(), StdioSpec::default()).unwrap();
    let e = create(&mut c, "c", spec, StdioSpec::default()).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists));
    remove(&mut c, "c");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn configure_network_errors_are_typed() {
    require!(can_run());
    use husk_protocol::{ConfigureNetwork, Ipv4Cidr, NetInterface, NetRoute};
    let agent = Agent::start();
    let mut c = agent.client();
    let iface = |mac: &str, mtu| NetInterface {
        mac: mac.into(),
        addresses: vec![Ipv4Cidr {
            address: [10, 254, 3, 2].into(),
            prefix_len: 24,
        }],
        mtu,
    };
    // A MAC no interface has (a locally administered one made up here).
    let e = c
        .call(Request::ConfigureNetwork(ConfigureNetwork {
            interfaces: vec![iface("02:68:75:73:6b:99", 1400)],
            routes: vec![],
        }))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    for bad in [
        ConfigureNetwork {
            interfaces: vec![iface("02:68:75:73:6b:99", 20)],
            routes: vec![],
        },
        ConfigureNetwork {
            interfaces: vec![],
            routes: vec![NetRoute {
                destination: Ipv4Cidr {
                    address: [0, 0, 0, 0].into(),
                    prefix_len: 40,
                },
                gateway: None,
                interface_mac: "02:68:75:73:6b:99".into(),
            }],
        },
    ] {
        let e = c.call(Request::ConfigureNetwork(bad)).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    }
    // The agent keeps serving.
    assert!(c.call(Request::Version).is_ok());
}

/// Found while fuzzing the agent's framing: a connection parked on a
/// `WaitProcess` kept reading what the host sent next, 64 KiB per poll
/// round, without limit. Now the agent buffers at most one frame's worth
/// (`MAX_FRAME_LEN`) behind the parked wait and reads no further until the
/// wait is answered.
#[test]
fn a_parked_wait_buffers_at_most_one_frame_behind_it() {
    require!(can_run());
    use husk_protocol::frame::MAX_FRAME_LEN;
    let agent = Agent::start();
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    common::create(&mut c, "p", spec, StdioSpec::default()).unwrap();
    c.start("p").unwrap();
    let mut s = raw_control(&agent);
    let wait = husk_protocol::RequestFrame {
        version: PROTOCOL_VERSION,
        id: 1,
        request: Request::WaitProcess(pref_of("p")),
    };
    write_frame(&mut s, &wait).unwrap();
    // Time for the agent to park the wait before what follows: no sign
    // outside the agent shows when it has, so there is nothing to poll.
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Behind the parked wait: a frame announcing the largest body, then
    // three times as much junk as it can hold.
    s.set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    s.write_all(&MAX_FRAME_LEN.to_be_bytes()).unwrap();
    let chunk = vec![b' '; 1 << 20];
    let mut sent = 0usize;
    while sent < 3 * MAX_FRAME_LEN as usize {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the agent stopped reading
        }
    }
    assert!(
        sent < 2 * MAX_FRAME_LEN as usize,
        "the agent read {sent} bytes behind a parked wait"
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 3 * u64::from(MAX_FRAME_LEN) / 1024,
        "agent RSS {rss_kib} KiB"
    );
    // The agent still serves: the container is killed, the wait answered.
    let mut c2 = agent.client();
    c2.call(Request::SignalProcess(SignalProcess {
        container_id: "p".into(),
        exec_id: None,
        signal: 9,
        all: false,
    }))
    .unwrap();
    let r: ResponseFrame = read_frame(&mut s).unwrap();
    assert_eq!(
        (r.id, r.result),
        (1, Ok(Response::Exited { exit_status: 137 }))
    );
    drop(s);
    common::remove(&mut c2, "p");
    agent.shutdown();
}

fn pref_of(id: &str) -> ProcessRef {
    ProcessRef {
        container_id: id.into(),
        exec_id: None,
    }
}

/// A `Port` connection reaches a TCP listener on the agent's loopback
/// (in the guest: the pod's network namespace) both ways, and the guest
/// side's close ends it (the host sees EOF after the last byte); a port
/// nothing listens on is refused naming it.
#[test]
fn port_connections_reach_the_loopback_both_ways() {
    use std::io::Read;
    require!(can_run());
    let agent = Agent::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let payload: Vec<u8> = b"port forward "
        .iter()
        .cycle()
        .take(200_000)
        .copied()
        .collect();
    let len = payload.len();
    // Reads the whole request, answers it in upper case, closes.
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = vec![0u8; len];
        s.read_exact(&mut got).unwrap();
        s.write_all(&got.to_ascii_uppercase()).unwrap();
    });
    let mut conn = agent.addr.open_port(port).unwrap();
    let payload: Vec<u8> = b"port forward "
        .iter()
        .cycle()
        .take(200_000)
        .copied()
        .collect();
    conn.write_all(&payload).unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    server.join().unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(
        back == payload.to_ascii_uppercase(),
        "the bytes came back changed"
    );

    // Nothing listens on a port just closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = agent.addr.open_port(closed).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{e}"
    );
    // The agent keeps serving.
    let mut c = agent.client();
    assert!(c.call(Request::Version).is_ok());
    agent.shutdown();
}
