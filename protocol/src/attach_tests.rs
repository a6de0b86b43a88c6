use std::os::unix::net::UnixListener;
use std::sync::mpsc::Sender;

use super::*;
use crate::frame::{read_frame, write_frame};
use crate::{Hello, Response, ResponseFrame};

/// What the fake agent does with one stream connection, by its kind.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Writes `n` bytes of output, then ends the stream.
    Emit(usize),
    /// Writes `n` bytes and keeps the stream open until the host cuts it.
    EmitAndHold(usize),
}

/// A fake agent on a Unix socket: acknowledges every stream hello; an
/// output stream behaves as `out` says; what a stdin (or pty) stream
/// receives up to its EOF is sent on `got` with its kind.
fn fake_agent(
    dir: &std::path::Path,
    out: Behaviour,
    got: Sender<(StreamKind, Vec<u8>)>,
) -> AgentAddr {
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let hello: Hello = read_frame(&mut s).unwrap();
            let Hello::Stream { stream, .. } = hello else {
                panic!("not a stream hello: {hello:?}")
            };
            write_frame(&mut s, &ResponseFrame::new(0, Ok(Response::Empty))).unwrap();
            let got = got.clone();
            thread::spawn(move || {
                if matches!(
                    stream,
                    StreamKind::Stdout | StreamKind::Stderr | StreamKind::Pty
                ) {
                    let (n, hold) = match out {
                        Behaviour::Emit(n) => (n, false),
                        Behaviour::EmitAndHold(n) => (n, true),
                    };
                    s.write_all(&vec![b'x'; n]).unwrap();
                    if !hold && stream != StreamKind::Pty {
                        return;
                    }
                }
                let mut input = Vec::new();
                let _ = s.read_to_end(&mut input);
                let _ = got.send((stream, input));
            });
        }
    });
    AgentAddr::Unix(path)
}

const INIT: Target<'static> = Target {
    container_id: "c",
    exec_id: None,
};

/// A process with only stdin attached, to a pipe whose write end is
/// returned; what the fake agent receives comes on the receiver.
fn stdin_only(
    dir: &std::path::Path,
    init: Option<ThreadInit>,
) -> (
    Attached,
    File,
    std::sync::mpsc::Receiver<(StreamKind, Vec<u8>)>,
) {
    let (tx, rx) = channel();
    let addr = fake_agent(dir, Behaviour::Emit(0), tx);
    let (r, w) = pipe();
    let ends = HostEnds {
        stdin: Some(Source::File(r)),
        ..HostEnds::default()
    };
    (attach(&addr, INIT, ends, init).unwrap(), w, rx)
}

fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe().unwrap();
    (File::from(r), File::from(w))
}

/// Output reaches the host end whole, and the drain returns once it has.
#[test]
fn output_reaches_the_host_end_and_drains() {
    let t = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    let addr = fake_agent(t.path(), Behaviour::Emit(300_000), tx);
    let out = t.path().join("out");
    let ends = HostEnds {
        stdout: Some(Sink::File(File::create(&out).unwrap())),
        stderr: Some(Sink::File(File::create(t.path().join("err")).unwrap())),
        ..HostEnds::default()
    };
    assert_eq!(
        ends.spec(),
        StdioSpec {
            stdin: false,
            stdout: true,
            stderr: true
        }
    );
    let mut a = attach(&addr, INIT, ends, None).unwrap();
    a.drain(Duration::from_secs(30));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 300_000);
    assert_eq!(
        std::fs::metadata(t.path().join("err")).unwrap().len(),
        300_000
    );
}

/// A host end that stops taking bytes does not stop the pump: the rest
/// is read and dropped, so the guest's writer is never blocked.
#[test]
fn output_keeps_draining_after_the_host_reader_left() {
    let t = tempfile::tempdir().unwrap();
    let (tx, _rx) = channel();
    // Far more than a pipe and the socket buffers hold.
    let addr = fake_agent(t.path(), Behaviour::Emit(8 << 20), tx);
    let (r, w) = pipe();
    drop(r);
    let ends = HostEnds {
        stdout: Some(Sink::File(w)),
        ..HostEnds::default()
    };
    let mut a = attach(&addr, INIT, ends, None).unwrap();
    let started = Instant::now();
    a.drain(Duration::from_secs(30));
    // Drained, not cut off at the deadline.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A stream the agent never ends is cut off at the drain's deadline
/// (a pty's at PTY_DRAIN), and the drain returns.
#[test]
fn a_stream_that_never_ends_is_cut_off_at_the_deadline() {
    let t = tempfile::tempdir().unwrap();
    let (tx, rx) = channel();
    let addr = fake_agent(t.path(), Behaviour::EmitAndHold(10), tx);
    let out = t.path().join("out");
    let ends = HostEnds {
        stdout: Some(Sink::File(File::create(&out).unwrap())),
        ..HostEnds::default()
    };
    let mut a = attach(&addr, INIT, ends, None).unwrap();
    a.drain(Duration::from_millis(300));
    // The fake agent sees the host's end of the stream go away.
    let (kind, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(kind, StreamKind::Stdout);
    assert_eq!(std::fs::read(&out).unwrap(), b"xxxxxxxxxx");

    let (tx, rx) = channel();
    let t2 = tempfile::tempdir().unwrap();
    let addr = fake_agent(t2.path(), Behaviour::EmitAndHold(3), tx);
    let ends = HostEnds {
        stdout: Some(Sink::File(File::create(t2.path().join("o")).unwrap())),
        terminal: true,
        ..HostEnds::default()
    };
    assert_eq!(ends.spec(), StdioSpec::default());
    let mut a = attach(&addr, INIT, ends, None).unwrap();
    a.drain(Duration::from_secs(600));
    let (kind, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(kind, StreamKind::Pty);
}

/// Input reaches the process whole and its EOF follows the last byte on
/// the same stream; `StdinHandle::close` returns once the pump is done.
#[test]
fn input_arrives_whole_then_eof() {
    let t = tempfile::tempdir().unwrap();
    let (mut a, mut w, rx) = stdin_only(t.path(), None);
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    w.write_all(&data).unwrap();
    drop(w);
    let (kind, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(kind, StreamKind::Stdin);
    assert_eq!(got, data);
    a.take_stdin().expect("stdin attached").close();
    assert!(a.take_stdin().is_none());
}

/// A host end kept open past `close` gets its stream half-closed after
/// STDIN_DRAIN: the process sees EOF after what was sent.
#[test]
fn close_ends_input_whose_host_end_stays_open() {
    let t = tempfile::tempdir().unwrap();
    let (mut a, mut w, rx) = stdin_only(t.path(), None);
    w.write_all(b"kept").unwrap();
    a.take_stdin().unwrap().close();
    let (_, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got, b"kept");
    drop(w);
}

/// FIFOs are opened by the pump threads, so attaching does not wait for
/// the client to open its side.
#[test]
fn fifos_are_opened_in_the_pump_threads() {
    let t = tempfile::tempdir().unwrap();
    let (tx, rx) = channel();
    let addr = fake_agent(t.path(), Behaviour::Emit(5), tx);
    let (fin, fout) = (t.path().join("in"), t.path().join("out"));
    for f in [&fin, &fout] {
        nix::unistd::mkfifo(f, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    let ends = HostEnds {
        stdin: Some(Source::Fifo(fin.clone())),
        stdout: Some(Sink::Fifo(fout.clone())),
        ..HostEnds::default()
    };
    let mut a = attach(&addr, INIT, ends, None).unwrap();
    let reader = thread::spawn(move || std::fs::read(fout).unwrap());
    std::fs::write(&fin, b"in").unwrap();
    a.drain(Duration::from_secs(30));
    assert_eq!(reader.join().unwrap(), b"xxxxx");
    let (_, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(got, b"in");
}

/// A thread whose init fails moves nothing and closes its stream.
#[test]
fn a_failed_thread_init_closes_the_stream() {
    let t = tempfile::tempdir().unwrap();
    let init: ThreadInit = Arc::new(|| Err("refused".to_owned()));
    let (_a, mut w, rx) = stdin_only(t.path(), Some(init));
    // The failed thread may have closed the pipe already (EPIPE): either
    // way nothing may reach the agent.
    let _ = w.write_all(b"never");
    let (_, got) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn a_file_has_no_window_size() {
    let f = tempfile::tempfile().unwrap();
    assert_eq!(window_size(&f), None);
    assert_eq!(resize_request(INIT, &f), None);
}

/// A pty's window size becomes the ResizeTty for the target process.
#[test]
fn a_terminals_size_becomes_a_resize_request() {
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 17,
            ws_col: 91,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .unwrap();
    let target = Target {
        container_id: "c",
        exec_id: Some("e"),
    };
    assert_eq!(
        resize_request(target, &pty.slave),
        Some(Request::ResizeTty(ResizeTty {
            container_id: "c".into(),
            exec_id: Some("e".into()),
            rows: 17,
            cols: 91,
        }))
    );
}
