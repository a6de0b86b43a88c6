use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

const CID: u64 = 3;

struct Setup {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    m: Muxer,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vsock.sock");
    let m = Muxer::new(CID, &uds).unwrap();
    Setup { _dir: dir, uds, m }
}

/// A packet from the guest's `gport` to host port `hport`.
fn g(op: u16, gport: u32, hport: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: gport,
        dst_port: hport,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    }
}

/// Host socket operations complete synchronously, so a few rounds of
/// epoll service see everything they did.
fn service(m: &mut Muxer) {
    for _ in 0..4 {
        m.host_events();
    }
}

fn packets(m: &mut Muxer) -> Vec<(Header, Vec<u8>)> {
    let mut v = Vec::new();
    while let Some(p) = m.next_packet(4096) {
        v.push(p);
    }
    v
}

fn one(m: &mut Muxer) -> (Header, Vec<u8>) {
    let mut v = packets(m);
    assert_eq!(v.len(), 1, "{v:?}");
    v.remove(0)
}

/// A host client through `CONNECT 1234`, accepted by the guest; returns it
/// and the host port.
fn host_connect(s: &mut Setup) -> (UnixStream, u32) {
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 1234\n").unwrap();
    service(&mut s.m);
    let (req, _) = one(&mut s.m);
    assert_eq!(req.op, op::REQUEST);
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (HOST_CID, CID, 1234)
    );
    assert!(req.src_port >= FIRST_LOCAL_PORT);
    s.m.guest_packet(&g(op::RESPONSE, 1234, req.src_port), &[]);
    let mut ok = [0u8; 32];
    let n = c.read(&mut ok).unwrap();
    assert_eq!(
        std::str::from_utf8(&ok[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    (c, req.src_port)
}

#[test]
fn host_connect_and_data_both_ways() {
    let mut s = setup();
    let (mut c, hport) = host_connect(&mut s);
    c.write_all(b"to the guest").unwrap();
    service(&mut s.m);
    let (h, d) = one(&mut s.m);
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RW, hport, 1234));
    assert_eq!(h.buf_alloc, BUF_ALLOC);
    assert_eq!(d, b"to the guest");

    let mut rw = g(op::RW, 1234, hport);
    rw.len = 5;
    s.m.guest_packet(&rw, b"hello");
    let mut got = [0u8; 5];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
}

#[test]
fn bytes_after_the_connect_line_reach_the_guest() {
    let mut s = setup();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 7\nearly").unwrap();
    service(&mut s.m);
    let (req, _) = one(&mut s.m);
    s.m.guest_packet(&g(op::RESPONSE, 7, req.src_port), &[]);
    let (h, d) = one(&mut s.m);
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"early"[..]));
}

#[test]
fn guest_rst_closes_the_host_client() {
    let mut s = setup();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 99\n").unwrap();
    service(&mut s.m);
    let (req, _) = one(&mut s.m);
    s.m.guest_packet(&g(op::RST, 99, req.src_port), &[]);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn a_connect_waits_for_the_guest_to_take_it() {
    // No RX buffers yet: the REQUEST stays due until the backend asks.
    let mut s = setup();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    service(&mut s.m);
    service(&mut s.m);
    assert!(s.m.has_packet());
    assert_eq!(one(&mut s.m).0.op, op::REQUEST);
}

#[test]
fn a_client_giving_up_resets_the_guest_side() {
    let mut s = setup();
    let mut c = UnixStream::connect(&s.uds).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    service(&mut s.m);
    let (req, _) = one(&mut s.m);
    drop(c);
    service(&mut s.m);
    let (h, _) = one(&mut s.m);
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RST, req.src_port, 5));
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut s = setup();
    for line in [
        &b"CONNECT x\n"[..],
        b"HELLO 1\n",
        b"CONNECT 99999999999\n",
        &[b'C'; 80],
    ] {
        let mut c = UnixStream::connect(&s.uds).unwrap();
        c.write_all(line).unwrap();
        service(&mut s.m);
        // Closed: EOF, or a reset when it held unread bytes.
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    assert!(!s.m.has_packet());
    assert_eq!(s.m.connections(), 0);
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT +1"), None);
}

#[test]
fn guest_connects_to_a_host_listener() {
    let mut s = setup();
    let l = UnixListener::bind(format!("{}_4321", s.uds.display())).unwrap();
    s.m.guest_packet(&g(op::REQUEST, 2000, 4321), &[]);
    let (mut host, _) = l.accept().unwrap();
    let (h, _) = one(&mut s.m);
    assert_eq!((h.op, h.src_port, h.dst_port), (op::RESPONSE, 4321, 2000));
    let mut rw = g(op::RW, 2000, 4321);
    rw.len = 2;
    s.m.guest_packet(&rw, b"hi");
    let mut got = [0u8; 2];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hi");

    // Nobody listens on another port: RST.
    s.m.guest_packet(&g(op::REQUEST, 2001, 4322), &[]);
    let (h, _) = one(&mut s.m);
    assert_eq!((h.op, h.dst_port), (op::RST, 2001));
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut s = setup();
    let (mut c, hport) = host_connect(&mut s);
    // The guest has room for 100 bytes only.
    let mut upd = g(op::CREDIT_UPDATE, 1234, hport);
    upd.buf_alloc = 100;
    s.m.guest_packet(&upd, &[]);
    c.write_all(&[1u8; 1000]).unwrap();
    service(&mut s.m);
    let got: usize = packets(&mut s.m).iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 100);
    // The guest consumed them: 100 more.
    upd.fwd_cnt = 100;
    s.m.guest_packet(&upd, &[]);
    service(&mut s.m);
    let got: usize = packets(&mut s.m).iter().map(|(_, d)| d.len()).sum();
    assert_eq!(got, 100);
}

#[test]
fn guest_past_its_credit_is_reset() {
    let mut s = setup();
    let (c, hport) = host_connect(&mut s);
    // The host never reads; the guest sends more than BUF_ALLOC.
    let chunk = vec![0u8; 64 * 1024];
    let mut rw = g(op::RW, 1234, hport);
    rw.len = chunk.len() as u32;
    let mut sent = 0usize;
    let mut reset = false;
    while sent <= 4 * BUF_ALLOC as usize {
        s.m.guest_packet(&rw, &chunk);
        sent += chunk.len();
        if packets(&mut s.m).iter().any(|(h, _)| h.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "never reset after {sent} bytes");
    // More than the socket buffers could take, but bounded by BUF_ALLOC.
    assert!(sent > BUF_ALLOC as usize);
    assert_eq!(s.m.connections(), 0);
    drop(c);
}

#[test]
fn credit_updates_follow_what_the_host_read() {
    let mut s = setup();
    let (mut c, hport) = host_connect(&mut s);
    let chunk = vec![7u8; CREDIT_UPDATE_THRESHOLD as usize];
    let mut rw = g(op::RW, 1234, hport);
    rw.len = chunk.len() as u32;
    s.m.guest_packet(&rw, &chunk);
    let mut got = vec![0u8; chunk.len()];
    c.read_exact(&mut got).unwrap();
    service(&mut s.m);
    let (h, _) = one(&mut s.m);
    assert_eq!(
        (h.op, h.fwd_cnt),
        (op::CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD)
    );

    // Asked for: answered at once.
    s.m.guest_packet(&g(op::CREDIT_REQUEST, 1234, hport), &[]);
    let (h, _) = one(&mut s.m);
    assert_eq!(
        (h.op, h.fwd_cnt),
        (op::CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD)
    );
}

#[test]
fn half_close_both_ways() {
    let mut s = setup();
    let (mut c, hport) = host_connect(&mut s);
    // The guest stops sending: the host reads EOF and can still write.
    let mut sh = g(op::SHUTDOWN, 1234, hport);
    sh.flags = SHUTDOWN_SEND;
    s.m.guest_packet(&sh, &[]);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    c.write_all(b"reply").unwrap();
    service(&mut s.m);
    let (h, d) = one(&mut s.m);
    assert_eq!((h.op, d.as_slice()), (op::RW, &b"reply"[..]));
    // Data after its SHUTDOWN(SEND) is a protocol error.
    let mut rw = g(op::RW, 1234, hport);
    rw.len = 1;
    s.m.guest_packet(&rw, b"x");
    assert_eq!(one(&mut s.m).0.op, op::RST);
}

#[test]
fn host_half_close_then_guest_close() {
    let mut s = setup();
    let (mut c, hport) = host_connect(&mut s);
    c.write_all(b"last").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    service(&mut s.m);
    let v = packets(&mut s.m);
    let ops: Vec<u16> = v.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN]);
    assert_eq!(v[1].0.flags, SHUTDOWN_SEND);
    // The guest still sends; the host still reads.
    let mut rw = g(op::RW, 1234, hport);
    rw.len = 3;
    s.m.guest_packet(&rw, b"abc");
    let mut got = [0u8; 3];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
    // The guest closes: the host sees EOF, the guest gets its RST.
    let mut sh = g(op::SHUTDOWN, 1234, hport);
    sh.flags = SHUTDOWN_BOTH;
    s.m.guest_packet(&sh, &[]);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(one(&mut s.m).0.op, op::RST);
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn hostile_packets_are_dropped_or_reset() {
    let mut s = setup();
    // Foreign CIDs: dropped.
    let mut h = g(op::REQUEST, 1, 2);
    h.src_cid = 4;
    s.m.guest_packet(&h, &[]);
    let mut h = g(op::REQUEST, 1, 2);
    h.dst_cid = 7;
    s.m.guest_packet(&h, &[]);
    assert!(!s.m.has_packet());
    // Not a stream, or a packet for no connection: RST.
    let mut h = g(op::REQUEST, 1, 2);
    h.type_ = 2;
    s.m.guest_packet(&h, &[]);
    s.m.guest_packet(&g(op::RW, 1, 2), &[]);
    s.m.guest_packet(&g(99, 1, 2), &[]);
    // An RST for no connection: nothing.
    s.m.guest_packet(&g(op::RST, 1, 2), &[]);
    let ops: Vec<u16> = packets(&mut s.m).iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, [op::RST, op::RST, op::RST]);
    // The RST queue is bounded.
    for p in 0..10 * MAX_RST_QUEUE as u32 {
        s.m.guest_packet(&g(op::RW, p, 2), &[]);
    }
    assert_eq!(packets(&mut s.m).len(), MAX_RST_QUEUE);
    // An unknown op on a live connection resets it.
    let (_c, hport) = host_connect(&mut s);
    s.m.guest_packet(&g(42, 1234, hport), &[]);
    assert_eq!(one(&mut s.m).0.op, op::RST);
    assert_eq!(s.m.connections(), 0);
}

#[test]
fn reset_forgets_everything() {
    let mut s = setup();
    let (mut c, _) = host_connect(&mut s);
    s.m.reset();
    assert_eq!(s.m.connections(), 0);
    assert!(!s.m.has_packet());
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn stage_takes_from_the_front_and_reads_at_the_back() {
    let mut st = Stage::from_vec(b"abcdef".to_vec());
    assert_eq!(st.take(2), b"ab");
    assert_eq!(st.len(), 4);
    let room = st.spare(3);
    room[..2].copy_from_slice(b"gh");
    st.commit(3, 2);
    assert_eq!(st.take(100), b"cdefgh");
    assert!(st.is_empty());
}
