//! Fuzzing the host's side of the protocol against a hostile agent, and
//! the framing both ways.
//!
//! A hostile agent (or a daemon in front of it) answers the host with
//! arbitrary bytes: torn and oversized length prefixes, JSON that is
//! almost a response (other versions and ids, unknown fields and variants,
//! control characters in every string, impossible pids), or junk. Fed to
//! the frame reader (in random read sizes, with `EINTR`s), to the vsock
//! `CONNECT` reply, to the hello acknowledgement and to a call. Properties:
//! nothing panics; no frame body is longer than [`MAX_FRAME_LEN`]; the
//! reader takes exactly what a frame holds; a call succeeds only on a
//! well-formed response to its own id whose pids are possible; every error
//! prints on one line without a control character (it reaches a terminal).
//! Valid messages round-trip. The agent's side (a hostile host) is fuzzed
//! in `agent/src/server/fuzz.rs`. Cases: 256 per property,
//! `HUSK_FUZZ_CASES` for more (README, "Fuzzing").

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::client::{read_ack, read_connect_reply, AgentClient};
use crate::frame::{read_frame, read_frame_bytes, write_frame, FrameError, MAX_FRAME_LEN};
use crate::fuzzing::{self, config};
use crate::*;

/// A reader that hands out at most `sizes[i]` bytes per read and fails
/// with `Interrupted` where `sizes[i]` is 0 (never twice in a row).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    n: usize,
    interrupted: bool,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = if self.sizes.is_empty() {
            usize::MAX
        } else {
            self.sizes[self.n % self.sizes.len()]
        };
        self.n += 1;
        if size == 0 && !self.data.is_empty() && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.interrupted = false;
        let k = size.max(1).min(buf.len()).min(self.data.len());
        buf[..k].copy_from_slice(&self.data[..k]);
        self.data = &self.data[k..];
        Ok(k)
    }
}

/// Strings a hostile agent puts anywhere: names we know, control and
/// escape sequences, long and odd unicode.
fn hostile_str() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Empty",
            "Version",
            "Process",
            "Exited",
            "OomKills",
            "State",
            "Processes",
            "Stats",
            "not_found",
            "internal",
            "Ok",
            "Err",
            "type",
            "body",
        ])
        .prop_map(str::to_owned),
        Just("\u{1b}[2J\u{1b}]0;owned\u{7}".to_owned()),
        Just("a\r\nb\u{9b}31m\u{7f}".to_owned()),
        "\\PC{0,12}",
        any::<String>(),
        (0usize..5000).prop_map(|n| "\u{1b}".repeat(n)),
    ]
}

fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(i64::from(MAX_GUEST_PID) + 1), Just(-1), Just(0)].prop_map(Value::from),
        hostile_str().prop_map(Value::from),
    ];
    fuzzing::json_tree(leaf, hostile_str)
}

/// Almost a response frame: each part right or hostile.
fn response_json() -> impl Strategy<Value = Value> {
    let version = prop_oneof![8 => Just(json!(PROTOCOL_VERSION)), 1 => hostile_json()];
    let id = prop_oneof![4 => Just(json!(1)), 2 => Just(json!(0)), 1 => hostile_json()];
    let body = prop_oneof![
        Just(json!({"type": "Empty"})),
        any::<i32>().prop_map(|pid| json!({"type": "Process", "body": {"pid": pid}})),
        any::<i32>().prop_map(|s| json!({"type": "Exited", "body": {"exit_status": s}})),
        (any::<u64>(), any::<bool>()).prop_map(|(count, exited)| json!({"type": "OomKills", "body": {"count": count, "exited": exited}})),
        prop::collection::vec(any::<i32>(), 0..4).prop_map(|pids| json!({
            "type": "Processes",
            "body": {"processes": pids.iter().map(|p| json!({"pid": p, "exec_id": null})).collect::<Vec<_>>()}
        })),
        (prop::sample::select(vec!["created", "running", "paused", "stopped", "frozen"]), any::<i32>())
            .prop_map(|(status, pid)| json!({"type": "State", "body": {
                "container_id": "c", "status": status, "pid": pid, "exit_status": null}})),
        (hostile_str(), hostile_json()).prop_map(|(t, b)| json!({"type": t, "body": b})),
        hostile_json(),
    ];
    let result = prop_oneof![
        4 => body.prop_map(|b| json!({"Ok": b})),
        2 => (prop_oneof![Just(json!("not_found")), hostile_json()], hostile_str())
            .prop_map(|(code, message)| json!({"Err": {"code": code, "message": message}})),
        1 => hostile_json(),
    ];
    let extra = prop::option::weighted(0.1, (hostile_str(), hostile_json()));
    (version, id, result, extra).prop_map(|(version, id, result, extra)| {
        let mut v = json!({"version": version, "id": id, "result": result});
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        v
    })
}

/// What a hostile agent sends: responses, lying prefixes, junk.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let body = response_json().prop_map(|v| serde_json::to_vec(&v).unwrap());
    fuzzing::stream(fuzzing::piece(body, 64), 4)
}

/// An error as a caller prints it: one line, no control character.
fn printable(e: &dyn std::error::Error) -> Result<(), TestCaseError> {
    let shown = error_chain(e);
    prop_assert!(!shown.is_empty());
    prop_assert!(
        !shown.chars().any(char::is_control),
        "control character in {shown:?}"
    );
    Ok(())
}

/// What the frame reader must make of `data` (its first frame).
fn expected_frame(data: &[u8]) -> Option<Result<&[u8], ()>> {
    if data.is_empty() {
        return None; // Closed
    }
    if data.len() < 4 {
        return Some(Err(()));
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    if len > MAX_FRAME_LEN {
        return Some(Err(()));
    }
    Some(data.get(4..4 + len as usize).ok_or(()))
}

/// A connected pair: the client's end, and the agent's with `data`
/// already sent and its writing side shut (so reads end, never hang).
fn agent_said(data: &[u8]) -> UnixStream {
    let (client, mut agent) = UnixStream::pair().unwrap();
    agent.write_all(data).unwrap();
    agent.shutdown(std::net::Shutdown::Write).unwrap();
    // The agent end stays open (the client's request lands there) until
    // the client is done: leaked into a thread that drops it with the
    // client's end's EOF.
    std::thread::spawn(move || {
        let _ = io::copy(&mut agent, &mut io::sink());
    });
    client
}

proptest! {
    #![proptest_config(config())]

    /// The frame reader, in random read sizes: exactly the first frame,
    /// or the right error; never more than the limit.
    #[test]
    fn fuzz_frame_reader(data in stream(), sizes in prop::collection::vec(0usize..9, 0..5)) {
        let mut r = Chunked { data: &data, sizes, n: 0, interrupted: false };
        let got = read_frame_bytes(&mut r);
        match (expected_frame(&data), got) {
            (None, Err(FrameError::Closed)) => {}
            (Some(Ok(want)), Ok(body)) => {
                prop_assert!(body.len() <= MAX_FRAME_LEN as usize);
                prop_assert_eq!(&body[..], want);
                // Nothing of the next frame was consumed.
                prop_assert_eq!(r.data, &data[4 + want.len()..]);
            }
            (Some(Err(())), Err(FrameError::TooLarge(n))) => prop_assert!(n > MAX_FRAME_LEN),
            (Some(Err(())), Err(FrameError::Io(e))) => {
                prop_assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof)
            }
            (want, got) => prop_assert!(false, "wanted {:?}, got {:?}", want, got),
        }
    }

    /// The hello's acknowledgement from a hostile agent.
    #[test]
    fn fuzz_hello_ack_from_hostile_agent(data in stream()) {
        let r = read_ack(&mut &data[..]);
        if let Err(e) = &r {
            printable(e)?;
        }
        if r.is_ok() {
            let ack: ResponseFrame = read_frame(&mut &data[..]).unwrap();
            prop_assert_eq!(ack.version, PROTOCOL_VERSION);
            prop_assert!(ack.result.is_ok());
        }
    }

    /// A call answered by a hostile agent.
    #[test]
    fn fuzz_call_answered_by_hostile_agent(data in stream(), which in 0u8..3) {
        let mut c = AgentClient::from_stream(agent_said(&data));
        let req = match which {
            0 => Request::ListProcesses(ContainerRef { container_id: "c".into() }),
            1 => Request::StartContainer(ContainerRef { container_id: "c".into() }),
            _ => {
                // An OOM wait succeeds only on an OomKills answer.
                match c.wait_oom("c", 0) {
                    Ok((count, exited)) => {
                        let frame: ResponseFrame = read_frame(&mut &data[..]).unwrap();
                        prop_assert_eq!((frame.version, frame.id), (PROTOCOL_VERSION, 1));
                        prop_assert_eq!(frame.result, Ok(Response::OomKills { count, exited }));
                    }
                    Err(e) => printable(&e)?,
                }
                return Ok(());
            }
        };
        match c.call(req) {
            Ok(resp) => {
                let frame: ResponseFrame = read_frame(&mut &data[..]).unwrap();
                prop_assert_eq!((frame.version, frame.id), (PROTOCOL_VERSION, 1));
                prop_assert_eq!(&frame.result, &Ok(resp.clone()));
                match resp {
                    Response::Process { pid } => prop_assert!(check_guest_pid(pid.into()).is_ok()),
                    Response::Processes { processes } => {
                        for p in processes {
                            prop_assert!(check_guest_pid(p.pid.into()).is_ok());
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => printable(&e)?,
        }
    }

    /// The vsock daemon's answer to `CONNECT`: accepted only as `OK ...`,
    /// read no further than its newline, refusals printable.
    #[test]
    fn fuzz_vsock_connect_reply(
        line in prop_oneof![
            Just(b"OK 1024".to_vec()),
            prop::collection::vec(any::<u8>(), 0..80),
            hostile_str().prop_map(String::into_bytes),
        ],
        newline in any::<bool>(),
        rest in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut data = line.clone();
        if newline {
            data.push(b'\n');
        }
        data.extend_from_slice(&rest);
        let mut r = &data[..];
        let got = read_connect_reply(&mut r, 1024);
        let first_line = data.split(|b| *b == b'\n').next().unwrap_or_default();
        let complete = data.contains(&b'\n') && first_line.len() <= 64;
        match got {
            Ok(()) => {
                prop_assert!(complete && first_line.starts_with(b"OK "));
                prop_assert_eq!(r.len(), data.len() - first_line.len() - 1, "read past the newline");
            }
            Err(e) => printable(&e)?,
        }
    }

    /// Valid messages survive a frame both ways, read in random sizes.
    #[test]
    fn fuzz_valid_messages_roundtrip(
        id in any::<u64>(),
        name in "\\PC{0,16}",
        exec in prop::option::of("\\PC{0,8}"),
        signal in any::<i32>(),
        rows in any::<u16>(),
        pids in prop::collection::vec((1..=MAX_GUEST_PID, prop::option::of("[a-z]{0,6}")), 0..5),
        code in prop::sample::select(vec![ErrorCode::NotFound, ErrorCode::Internal, ErrorCode::ExecFailed]),
        sizes in prop::collection::vec(1usize..7, 0..4),
        limits in (any::<i64>(), any::<i64>(), prop::option::of("[0-9,-]{0,8}")),
    ) {
        let (memory, pids_limit, cpus) = limits;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(json!({
            "memory": {"limit": memory}, "pids": {"limit": pids_limit}, "cpu": {"cpus": cpus},
        })).unwrap();
        let requests = vec![
            Request::Version,
            Request::PauseContainer(ContainerRef { container_id: name.clone() }),
            Request::ResumeContainer(ContainerRef { container_id: name.clone() }),
            Request::UpdateContainer(Box::new(UpdateContainer { container_id: name.clone(), resources })),
            Request::StartContainer(ContainerRef { container_id: name.clone() }),
            Request::SignalProcess(SignalProcess { container_id: name.clone(), exec_id: exec.clone(), signal, all: signal % 2 == 0 }),
            Request::ResizeTty(ResizeTty { container_id: name.clone(), exec_id: exec.clone(), rows, cols: rows / 2 }),
            Request::WaitProcess(ProcessRef { container_id: name.clone(), exec_id: exec.clone() }),
            Request::WaitOom(WaitOom { container_id: name.clone(), after: id }),
        ];
        let mut out = Vec::new();
        for request in &requests {
            write_frame(&mut out, &RequestFrame { version: PROTOCOL_VERSION, id, request: request.clone() }).unwrap();
        }
        let responses = vec![
            ResponseFrame::new(id, Ok(Response::Processes {
                processes: pids.iter().map(|(pid, e)| ProcessInfo { pid: *pid, exec_id: e.clone() }).collect(),
            })),
            ResponseFrame::new(id, Err(ProtocolError::new(code, name.clone()))),
            ResponseFrame::new(id, Ok(Response::OomKills { count: id, exited: signal % 2 == 0 })),
            ResponseFrame::new(id, Ok(Response::Stats(CgroupStats {
                memory_usage: Some(id),
                memory_events: vec![("oom_kill".into(), id), (name.clone(), u64::from(rows))],
                ..CgroupStats::default()
            }))),
        ];
        for r in &responses {
            write_frame(&mut out, r).unwrap();
        }
        let hellos = vec![
            Hello::Control { version: PROTOCOL_VERSION },
            Hello::Stream { version: PROTOCOL_VERSION, container_id: name.clone(), exec_id: exec.clone(), stream: StreamKind::Pty },
            Hello::Port { version: PROTOCOL_VERSION, port: id as u16 },
        ];
        for h in &hellos {
            write_frame(&mut out, h).unwrap();
        }
        let mut r = Chunked { data: &out, sizes, n: 0, interrupted: false };
        for request in requests {
            let f: RequestFrame = read_frame(&mut r).unwrap();
            prop_assert_eq!((f.version, f.id), (PROTOCOL_VERSION, id));
            prop_assert_eq!(f.request, request);
        }
        for resp in responses {
            let f: ResponseFrame = read_frame(&mut r).unwrap();
            prop_assert_eq!(f, resp);
        }
        for h in hellos {
            let f: Hello = read_frame(&mut r).unwrap();
            prop_assert_eq!(f, h);
        }
        prop_assert!(matches!(read_frame_bytes(&mut r), Err(FrameError::Closed)));
    }
}
