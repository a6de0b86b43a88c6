//! stdin/stdout/stderr byte-exact (10 MiB), output kept until a stream
//! attaches, and the pty with a resize.

mod common;
use std::io::{Read, Write};

use common::*;
use husk_protocol::{Request, ResizeTty, StdioSpec, StreamKind};
use husk_test_support::require;

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn ten_mib_through_stdin_and_stdout_byte_exact() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, dir) = agent.bundle("b", &[], &["cat"]);
    let data = pseudo_random(10 << 20);
    let (status, out, err) = agent.run("c", spec, Some(&data));
    assert_eq!(status, 0, "{}", text(&err));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "stdout differs from stdin");
    assert!(err.is_empty());
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn stdout_and_stderr_are_separate() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle(
        "b",
        &[],
        &["sh", "-c", "echo out; echo err >&2; printf 'no newline'"],
    );
    let (status, out, err) = agent.run("c", spec, None);
    assert_eq!(status, 0);
    assert_eq!(text(&out), "out\nno newline");
    assert_eq!(text(&err), "err\n");
    agent.shutdown();
}

#[test]
fn output_before_attach_is_kept_after_exit() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle("b", &[], &["sh", "-c", "echo early; echo late >&2"]);
    let mut c = agent.client();
    create(
        &mut c,
        "c",
        spec,
        StdioSpec {
            stdin: false,
            stdout: true,
            stderr: true,
        },
    )
    .unwrap();
    c.start("c").unwrap();
    assert_eq!(c.wait("c", None).unwrap(), 0);
    let (o, e) = collect(
        agent.stream("c", None, StreamKind::Stdout),
        agent.stream("c", None, StreamKind::Stderr),
        None,
        None,
    );
    assert_eq!((text(&o), text(&e)), ("early\n".into(), "late\n".into()));
    // A stream attaches once.
    let again = agent
        .addr
        .open_stream("c", None, StreamKind::Stdout)
        .unwrap_err();
    assert_eq!(again.code(), Some(husk_protocol::ErrorCode::AlreadyExists));
    remove(&mut c, "c");
    agent.shutdown();
}

#[test]
fn a_stdin_half_close_is_eof_after_its_bytes() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle("b", &[], &["sh", "-c", "cat; echo done"]);
    let mut c = agent.client();
    create(
        &mut c,
        "c",
        spec,
        StdioSpec {
            stdin: true,
            stdout: true,
            stderr: false,
        },
    )
    .unwrap();
    let mut input = agent.stream("c", None, StreamKind::Stdin);
    let mut out = agent.stream("c", None, StreamKind::Stdout);
    c.start("c").unwrap();
    // The half-close right behind the bytes: EOF comes after them, on the
    // same stream (there is no separate close request to race them), and
    // the output stream stays open.
    input.write_all(b"abc\n").unwrap();
    input.shutdown(std::net::Shutdown::Write).unwrap();
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abc\ndone\n");
    assert_eq!(c.wait("c", None).unwrap(), 0);
    remove(&mut c, "c");
    agent.shutdown();
}

#[test]
fn tty_with_resize() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, dir) = agent.bundle(
        "b",
        &["--tty"],
        &[
            "sh",
            "-c",
            "read line; echo got:$line; stty size; tty; echo viaconsole > /dev/console",
        ],
    );
    let mut c = agent.client();
    create(&mut c, "c", spec, StdioSpec::default()).unwrap();
    let mut pty = agent.stream("c", None, StreamKind::Pty);
    c.start("c").unwrap();
    let r = ResizeTty {
        container_id: "c".into(),
        exec_id: None,
        rows: 40,
        cols: 100,
    };
    c.call(Request::ResizeTty(r)).unwrap();
    pty.write_all(b"hello\n").unwrap();
    let mut s = String::new();
    pty.read_to_string(&mut s).unwrap();
    assert_eq!(c.wait("c", None).unwrap(), 0, "{s:?}");
    assert!(s.contains("got:hello"), "{s:?}");
    assert!(s.contains("40 100"), "{s:?}");
    assert!(s.contains("/dev/pts/"), "{s:?}");
    assert!(
        s.contains("viaconsole"),
        "/dev/console is the terminal: {s:?}"
    );
    // A process without a terminal cannot be resized.
    remove(&mut c, "c");
    assert_no_mounts(&dir);
    assert_no_children(&agent);
    agent.shutdown();
}

#[test]
fn exec_with_a_terminal() {
    require!(can_run());
    let agent = Agent::start();
    let (spec, _) = agent.bundle("b", &[], &["sleep", "1000"]);
    let mut c = agent.client();
    create(&mut c, "c", spec.clone(), StdioSpec::default()).unwrap();
    c.start("c").unwrap();
    let mut p = spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(30u64)
            .width(90u64)
            .build()
            .unwrap(),
    ));
    p.set_args(Some(
        ["sh", "-c", "stty size; tty"].map(String::from).to_vec(),
    ));
    exec(&mut c, "c", "t", p, StdioSpec::default()).unwrap();
    let mut pty = agent.stream("c", Some("t"), StreamKind::Pty);
    let mut s = String::new();
    pty.read_to_string(&mut s).unwrap();
    assert_eq!(c.wait("c", Some("t")).unwrap(), 0, "{s:?}");
    assert!(s.contains("30 90"), "console size applied: {s:?}");
    assert!(s.contains("/dev/pts/"), "{s:?}");
    // No terminal, no resize.
    let r = ResizeTty {
        container_id: "c".into(),
        exec_id: None,
        rows: 1,
        cols: 1,
    };
    let e = c.call(Request::ResizeTty(r)).unwrap_err();
    assert_eq!(e.code(), Some(husk_protocol::ErrorCode::FailedPrecondition));
    remove(&mut c, "c");
    assert_no_children(&agent);
    agent.shutdown();
}
