//! Fuzzing the agent's decoding of what the host sends (a hostile host).
//!
//! Each case is a byte stream in random chunks, fed the way the server
//! feeds a connection: buffered while [`Conn::wants_input`]'s limit allows,
//! cut into frames by [`next_frame`], the first decoded as a hello
//! ([`decode_hello`]), the rest as requests ([`decode_request`]). The
//! stream mixes almost-valid hellos and requests (other versions, unknown
//! kinds, types and fields, hostile strings, huge ids), lying length
//! prefixes and junk. Properties: nothing panics; frames come out exactly
//! as a reference parser cuts them; a prefix beyond the limit is refused
//! before its body is buffered; the buffer stays bounded; an error answers
//! the frame's own id when it has one; valid messages decode to what was
//! sent. Requests are only decoded, never dispatched (that would run
//! containers). Cases: 256 per property, `HUSK_FUZZ_CASES` for more
//! (README, "Fuzzing").

use husk_protocol::frame::write_frame;
use husk_protocol::fuzzing::{self, config};
use husk_protocol::{
    ContainerRef, ErrorCode, Request, ResizeTty, SignalProcess, StreamKind, UpdateContainer,
    WaitOom, PROTOCOL_VERSION,
};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn hostile_str() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "control",
            "stream",
            "Version",
            "StartContainer",
            "WaitProcess",
            "WaitOom",
            "Shutdown",
            "CreateContainer",
            "PauseContainer",
            "ResumeContainer",
            "UpdateContainer",
            "resources",
            "stdin",
            "pty",
            "type",
            "args",
            "kind",
        ])
        .prop_map(str::to_owned),
        Just("\u{1b}[2J\u{7}".to_owned()),
        "\\PC{0,10}",
        any::<String>(),
    ]
}

fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(json!(-1.5)),
        hostile_str().prop_map(Value::from),
    ];
    fuzzing::json_tree(leaf, hostile_str)
}

fn version() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => Just(json!(PROTOCOL_VERSION)),
        1 => Just(json!(PROTOCOL_VERSION + 1)),
        1 => Just(json!(u64::from(u32::MAX) + 1 + u64::from(PROTOCOL_VERSION))),
        1 => hostile_json(),
    ]
}

/// Almost a hello.
fn hello_json() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just(json!("control")),
            Just(json!("stream")),
            hostile_json()
        ],
        version(),
        prop::option::of(hostile_str()),
        prop_oneof![Just(json!("stdout")), Just(json!("pty")), hostile_json()],
        prop::option::weighted(0.1, (hostile_str(), hostile_json())),
    )
        .prop_map(|(kind, version, cid, stream, extra)| {
            let mut v = json!({"kind": kind, "version": version});
            if let Some(cid) = cid {
                v["container_id"] = json!(cid);
                v["exec_id"] = Value::Null;
                v["stream"] = stream;
            }
            if let Some((k, x)) = extra {
                v[k] = x;
            }
            v
        })
}

/// Almost a request frame.
fn request_json() -> impl Strategy<Value = Value> {
    let request = prop_oneof![
        Just(json!({"type": "Version"})),
        hostile_str().prop_map(|c| json!({"type": "StartContainer", "args": {"container_id": c}})),
        (hostile_str(), hostile_json()).prop_map(
            |(c, e)| json!({"type": "WaitProcess", "args": {"container_id": c, "exec_id": e}})
        ),
        (hostile_str(), hostile_json())
            .prop_map(|(c, a)| json!({"type": "WaitOom", "args": {"container_id": c, "after": a}})),
        (hostile_str(), hostile_json()).prop_map(|(c, r)| json!({"type": "UpdateContainer", "args": {"container_id": c, "resources": r}})),
        (hostile_str(), any::<i64>(), hostile_json()).prop_map(|(c, limit, cpus)| json!({
            "type": "UpdateContainer",
            "args": {"container_id": c, "resources": {"memory": {"limit": limit}, "cpu": {"cpus": cpus}}},
        })),
        hostile_str().prop_map(|c| json!({"type": "PauseContainer", "args": {"container_id": c}})),
        (hostile_str(), hostile_json()).prop_map(|(t, a)| json!({"type": t, "args": a})),
        hostile_json(),
    ];
    (
        version(),
        prop_oneof![any::<u64>().prop_map(Value::from), hostile_json()],
        request,
        prop::option::weighted(0.1, (hostile_str(), hostile_json())),
    )
        .prop_map(|(version, id, request, extra)| {
            let mut v = json!({"version": version, "id": id, "request": request});
            if let Some((k, x)) = extra {
                v[k] = x;
            }
            v
        })
}

/// What a hostile host sends: hellos, requests, junk frames, lying
/// prefixes, raw bytes.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        hello_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        request_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..32),
    ];
    fuzzing::stream(fuzzing::piece(body, 32), 6)
}

/// Resources of a valid `UpdateContainer`: a memory limit, a pids limit
/// and a cpuset of random values.
fn update_resources(memory: i64, n: u16) -> oci_spec::runtime::LinuxResources {
    serde_json::from_value(json!({
        "memory": {"limit": memory, "swap": -1},
        "pids": {"limit": i64::from(n) - 1},
        "cpu": {"cpus": format!("0-{n}"), "quota": memory / 3, "period": n},
    }))
    .unwrap()
}

/// The reference cut: the frames of `data`, then whether a prefix beyond
/// the limit ended it.
fn reference_frames(mut data: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut frames = Vec::new();
    while data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        if len > MAX_FRAME_LEN {
            return (frames, true);
        }
        let Some(body) = data.get(4..4 + len as usize) else {
            break;
        };
        frames.push(body);
        data = &data[4 + len as usize..];
    }
    (frames, false)
}

/// The id the agent must answer a bad request frame with.
fn frame_id(body: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_u64))
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(config())]

    /// A hostile host's stream through the agent's framing and decoding.
    #[test]
    fn fuzz_agent_decodes_hostile_host(
        data in stream(),
        chunks in prop::collection::vec(1usize..64, 1..6),
    ) {
        let (want, too_large) = reference_frames(&data);
        let mut inbuf = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut refused = false;
        let mut rest = &data[..];
        let mut i = 0;
        'feed: while !rest.is_empty() {
            let n = chunks[i % chunks.len()].min(rest.len());
            i += 1;
            prop_assert!(inbuf.len() < MAX_BUFFERED, "read past the limit");
            inbuf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            loop {
                match next_frame(&mut inbuf) {
                    NextFrame::Incomplete => break,
                    NextFrame::TooLarge(e) => {
                        prop_assert_eq!(e.code, ErrorCode::InvalidArgument);
                        refused = true;
                        break 'feed;
                    }
                    NextFrame::Body(body) => {
                        if got.is_empty() {
                            if let Err(e) = decode_hello(&body) {
                                prop_assert!(!e.to_string().chars().any(char::is_control));
                            }
                        } else {
                            match decode_request(&body) {
                                Ok(f) => prop_assert_eq!(f.version, PROTOCOL_VERSION),
                                Err((id, e)) => {
                                    prop_assert_eq!(id, frame_id(&body));
                                    prop_assert!(!e.to_string().chars().any(char::is_control));
                                }
                            }
                        }
                        got.push(body);
                    }
                }
            }
        }
        prop_assert_eq!(refused, too_large);
        prop_assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            prop_assert_eq!(&g[..], *w);
        }
    }

    /// Valid hellos and requests decode to what the host sent; a valid
    /// request of another version is refused with its own id.
    #[test]
    fn fuzz_agent_decodes_valid_frames(
        id in any::<u64>(),
        cid in "\\PC{0,16}",
        exec in prop::option::of("\\PC{0,8}"),
        signal in any::<i32>(),
        rows in any::<u16>(),
        other_version in any::<u32>().prop_filter("not ours", |v| *v != PROTOCOL_VERSION),
    ) {
        let hellos = [
            Hello::Control { version: PROTOCOL_VERSION },
            Hello::Stream { version: PROTOCOL_VERSION, container_id: cid.clone(), exec_id: exec.clone(), stream: StreamKind::Stdin },
            Hello::Port { version: PROTOCOL_VERSION, port: rows },
        ];
        for h in hellos {
            let mut buf = Vec::new();
            write_frame(&mut buf, &h).unwrap();
            let NextFrame::Body(body) = next_frame(&mut buf) else {
                return Err(TestCaseError::fail("no frame"));
            };
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decode_hello(&body).unwrap(), h);
        }
        let requests = [
            Request::Version,
            Request::StartContainer(ContainerRef { container_id: cid.clone() }),
            Request::SignalProcess(SignalProcess { container_id: cid.clone(), exec_id: exec.clone(), signal, all: rows % 2 == 0 }),
            Request::ResizeTty(ResizeTty { container_id: cid.clone(), exec_id: exec.clone(), rows, cols: rows }),
            Request::WaitOom(WaitOom { container_id: cid.clone(), after: id }),
            Request::PauseContainer(ContainerRef { container_id: cid.clone() }),
            Request::ResumeContainer(ContainerRef { container_id: cid.clone() }),
            Request::UpdateContainer(Box::new(UpdateContainer { container_id: cid.clone(), resources: update_resources(i64::from(signal), rows) })),
        ];
        for request in requests {
            for version in [PROTOCOL_VERSION, other_version] {
                let frame = RequestFrame { version, id, request: request.clone() };
                let mut buf = Vec::new();
                write_frame(&mut buf, &frame).unwrap();
                let NextFrame::Body(body) = next_frame(&mut buf) else {
                    return Err(TestCaseError::fail("no frame"));
                };
                match decode_request(&body) {
                    Ok(f) => prop_assert_eq!(f, frame),
                    Err((got_id, e)) => {
                        prop_assert_ne!(version, PROTOCOL_VERSION);
                        prop_assert_eq!(got_id, id);
                        prop_assert_eq!(e.code, ErrorCode::UnsupportedVersion);
                    }
                }
            }
        }
    }
}

/// A prefix at the limit waits for its whole body; one past it is refused
/// at once, before any of its body is buffered.
#[test]
fn frame_length_limit_is_exact() {
    let mut at = MAX_FRAME_LEN.to_be_bytes().to_vec();
    at.extend_from_slice(b"{}");
    assert_eq!(next_frame(&mut at), NextFrame::Incomplete);
    let mut past = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    assert!(matches!(next_frame(&mut past), NextFrame::TooLarge(_)));
}
