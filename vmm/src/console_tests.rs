use super::*;
use std::time::Duration;

fn limits(max: u64, rate: u64, burst: u64) -> ConsoleConfig {
    ConsoleConfig {
        max_bytes: max,
        rate_bytes_per_s: rate,
        burst_bytes: burst,
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Numbered lines, so the tail can be told from the head.
fn lines(from: usize, to: usize) -> Vec<u8> {
    (from..to)
        .flat_map(|i| format!("line {i:06}\n").into_bytes())
        .collect()
}

#[test]
fn the_log_stays_under_the_cap_and_keeps_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let t0 = Instant::now();
    // No rate limit to speak of: only the cap is under test.
    let mut log = BoundedLog::create(&path, &limits(8192, u64::MAX, u64::MAX), t0).unwrap();
    let all = lines(0, 5000); // 60000 bytes
    for piece in all.chunks(700) {
        log.write(piece, t0).unwrap();
        let on_disk = read(&path);
        assert!(on_disk.len() <= 8192, "{} bytes", on_disk.len());
        assert_eq!(on_disk.len() as u64, log.len());
        // Whatever is on disk is the stream's tail, byte for byte.
        let seen = (piece.as_ptr() as usize - all.as_ptr() as usize) + piece.len();
        assert!(all[..seen].ends_with(&on_disk));
    }
    let on_disk = read(&path);
    assert!(
        on_disk.len() >= 4096 - 700,
        "the tail is kept: {}",
        on_disk.len()
    );
    assert!(on_disk.ends_with(b"line 004999\n"));
    assert_eq!(log.dropped_total(), 0);

    // One write larger than the cap: its last half-cap survives.
    let big = lines(10_000, 12_000);
    log.write(&big, t0).unwrap();
    let on_disk = read(&path);
    assert_eq!(on_disk.len(), 4096);
    assert!(big.ends_with(&on_disk));
}

#[test]
fn the_rate_limit_drops_and_says_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let t0 = Instant::now();
    // 1000 bytes at once, then 200 bytes per second; output resumes after
    // a drop once 200 tokens (a second's worth) are back.
    let mut log = BoundedLog::create(&path, &limits(1 << 20, 200, 1000), t0).unwrap();
    assert_eq!(log.resume_at(), 200);
    log.write(&[b'a'; 600], t0).unwrap();
    log.write(&[b'b'; 600], t0).unwrap(); // 400 fit, 200 dropped
    log.write(&[b'c'; 50], t0).unwrap(); // the bucket is empty: dropped
    assert_eq!(read(&path), [vec![b'a'; 600], vec![b'b'; 400]].concat());
    assert_eq!(log.dropped_total(), 250);

    // Half a second later: 100 tokens, under the resume mark: dropped.
    let t1 = t0 + Duration::from_millis(500);
    log.write(&[b'd'; 10], t1).unwrap();
    assert_eq!(log.dropped_total(), 260);
    assert_eq!(read(&path).len(), 1000);

    // One second later: 200 tokens; the marker takes its length of them.
    let t2 = t1 + Duration::from_millis(500);
    log.write(&[b'e'; 300], t2).unwrap();
    let marker = b"\n[husk-vmm: 260 bytes of console output dropped]\n".to_vec();
    let fit = 200 - marker.len();
    let want = [vec![b'a'; 600], vec![b'b'; 400], marker, vec![b'e'; fit]].concat();
    assert_eq!(
        String::from_utf8_lossy(&read(&path)),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(log.dropped_total(), 260 + 300 - fit as u64);

    // Tokens never pile up past the burst, however long the guest is quiet.
    let before = read(&path).len();
    let t3 = t2 + Duration::from_secs(3600);
    log.write(&vec![b'f'; 5000], t3).unwrap();
    let text = read(&path);
    let marker = format!(
        "\n[husk-vmm: {} bytes of console output dropped]\n",
        300 - fit
    );
    assert_eq!(text.len(), before + 1000);
    assert!(text[before..].starts_with(marker.as_bytes()));
    assert!(text.ends_with(&vec![b'f'; 1000 - marker.len()]));

    // A flood in small pieces: markers never outgrow the rate. Over 100
    // simulated seconds at 200 bytes/s, the log takes at most the burst
    // plus 100 seconds' worth.
    let before = read(&path).len() as u64;
    let t4 = t3 + Duration::from_secs(3600);
    for i in 0..100_000u64 {
        log.write(b"x", t4 + Duration::from_millis(i)).unwrap();
    }
    let grown = read(&path).len() as u64 - before;
    assert!(grown <= 1000 + 100 * 200, "{grown} bytes in 100 s");
    assert!(grown >= 100 * 200 / 2, "output resumes: {grown}");
}

#[test]
fn the_ready_line_is_found_across_pieces() {
    let line = crate::vm::AGENT_READY_LINE;
    let mut w = LineWatch::new(line);
    assert!(!w.feed(b"booting...\nhusk-ag"));
    assert!(!w.feed(b"ent liste"));
    assert!(w.feed(b"ning on vsock:1024\n"));
    assert!(w.feed(b"anything"), "stays found");
    let mut w = LineWatch::new(line);
    for b in format!("noise {line} more").bytes() {
        w.feed(&[b]);
    }
    assert!(w.feed(b""));
    let mut w = LineWatch::new(line);
    assert!(!w.feed(&vec![b'x'; 100_000]));
    assert!(!w.feed(b"husk-agent listenin"));
    assert!(w.carry.len() < line.len(), "only a needle's worth is kept");
}

/// Through the relay as an engine sees it: a pipe. Readiness comes from the
/// bytes going by even when the rate limit keeps them out of the log (at
/// 1 byte/s after a 4 KiB burst, the line comes after 1 MiB), and the log
/// stays bounded.
#[test]
fn the_relay_bounds_a_flood_and_reports_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let (mut relay, wr) = ConsoleRelay::start(&path, &limits(16384, 1, 4096)).unwrap();
    assert!(!relay.announced());
    let mut wr = File::from(wr);
    let flood = vec![b'z'; 1 << 20];
    wr.write_all(&flood).unwrap();
    wr.write_all(crate::vm::AGENT_READY_LINE.as_bytes())
        .unwrap();
    drop(wr);
    // The ready eventfd becomes readable once the line went by.
    let mut fds = [PollFd::new(relay.ready_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::NONE).unwrap();
    assert!(relay.announced());
    relay.stop();
    let log = read(&path);
    assert!(log.len() <= 16384, "{}", log.len());
    assert!(log.starts_with(&[b'z'; 4096]), "the burst went through");
}

#[test]
fn a_console_that_is_not_a_file_is_not_capped() {
    let mut log = BoundedLog::create(
        Path::new("/dev/null"),
        &limits(4096, u64::MAX, u64::MAX),
        Instant::now(),
    )
    .unwrap();
    log.write(&[0u8; 10_000], Instant::now()).unwrap();
    assert_eq!(log.dropped_total(), 0);
}

/// The relay thread under its own seccomp filter (`ThreadKind::Console`)
/// in a re-executed child (see `seccomp::testing`): a flood that fills
/// the burst, rotates the log past its cap and drops the rest, the ready
/// line, then stop (the pipe drained non-blocking). A syscall missing from
/// its list kills the child with SIGSYS.
#[test]
fn the_relay_runs_under_its_filter() {
    if !crate::seccomp::testing::in_child_process(module_path!(), "the_relay_runs_under_its_filter")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    let (mut relay, wr) = ConsoleRelay::start(&path, &limits(16384, 1, 65536)).unwrap();
    let mut wr = File::from(wr);
    wr.write_all(&lines(0, 20_000)).unwrap();
    wr.write_all(crate::vm::AGENT_READY_LINE.as_bytes())
        .unwrap();
    let mut fds = [PollFd::new(relay.ready_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::NONE).unwrap();
    // Stopped while the write end is still open: the stop eventfd.
    relay.stop();
    drop(wr);
    let log = read(&path);
    assert!(log.len() <= 16384, "{}", log.len());
    assert!(relay.announced());
    eprintln!("console relay under seccomp: {} bytes kept", log.len());
}
