//! The builtin engine's vhost-user devices against the real daemons,
//! without a guest: the test plays the guest driver. It programs the
//! virtio-mmio transport through its registers (as a vCPU's MMIO exits
//! would), lays out the rings with virtio-queue's `MockSplitQueue` in the
//! memfd-backed guest RAM the daemon maps too, kicks through `QueueNotify`
//! and reads the used rings the daemon fills.
//!
//! Needs `husk-vsockd` and `virtiofsd` (skipped with a printed reason
//! when missing, or for virtiofsd when not root). vhost-device-vsock 0.3.0,
//! which husk ran before husk-vsockd, is no longer tested: husk does not
//! run it. Both run confined as the
//! monitor runs them (`husk_vmm::daemons::confine`), so this also shows the
//! daemons still serve their devices under their seccomp filters and
//! capability sets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_kvm::bus::BusDevice;
use husk_kvm::memory::create_guest_memory;
use husk_kvm::virtio::mmio::{reg, status, MmioTransport};
use husk_kvm::virtio::vhost_user::VhostUserDevice;
use husk_vmm::binaries;
use husk_vmm::daemons::confine::Confinement;
use husk_vmm::daemons::virtiofsd_args;
use husk_vmm_contract::config::{CachePolicy, ShareConfig, VirtiofsdSandbox};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const TIMEOUT: Duration = Duration::from_secs(10);

use husk_test_support::skip;

/// `name` via the monitor's own lookup, then the CI's cargo-install cache.
fn find_binary(name: &'static str) -> Option<PathBuf> {
    if let Ok(p) = binaries::locate(name, None) {
        return Some(p);
    }
    let cache: Vec<PathBuf> = std::fs::read_dir("/var/cache/husk/cargo-install")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    binaries::locate_in(name, &cache).ok()
}

/// A daemon that is killed and reaped on drop; its sockets live in `dir`,
/// removed with it.
struct Daemon {
    child: Child,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn spawn(mut cmd: Command, dir: tempfile::TempDir, socket: &Path) -> Daemon {
        let log = dir.path().join("daemon.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning the daemon");
        let mut d = Daemon { child, log, dir };
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("daemon exited with {st} before listening: {}", d.log_text());
            }
            assert!(start.elapsed() < TIMEOUT, "no socket: {}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// The guest side of one split queue: descriptors allocated round-robin,
/// used entries consumed in order.
struct Vq<'a> {
    mq: MockSplitQueue<'a, GuestMemoryMmap>,
    size: u16,
    next_desc: u16,
    used_seen: u16,
}

impl<'a> Vq<'a> {
    fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        Vq {
            mq: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            next_desc: 0,
            used_seen: 0,
        }
    }

    /// Programs the transport's queue registers for queue `index`.
    fn program(&self, t: &mut MmioTransport, index: u32) {
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        w(t, reg::QUEUE_SEL, index);
        assert!(r(t, reg::QUEUE_NUM_MAX) >= u32::from(self.size));
        w(t, reg::QUEUE_NUM, u32::from(self.size));
        for (lo_reg, a) in [
            (reg::QUEUE_DESC_LOW, self.mq.desc_table_addr()),
            (reg::QUEUE_DRIVER_LOW, self.mq.avail_addr()),
            (reg::QUEUE_DEVICE_LOW, self.mq.used_addr()),
        ] {
            let (lo, hi) = split(a);
            w(t, lo_reg, lo);
            w(t, lo_reg + 4, hi);
        }
        w(t, reg::QUEUE_READY, 1);
    }

    /// Makes one chain of `(addr, len, device_writes)` buffers available.
    fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let d = SplitDescriptor::new(addr, len, flags, self.next_desc);
            self.mq
                .desc_table()
                .store(idx, RawDescriptor::from(d))
                .unwrap();
        }
        let avail = self.mq.avail();
        let n = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(n % self.size))
            .unwrap()
            .store(head);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        avail.idx().store(n.wrapping_add(1));
        head
    }

    /// The next used entry `(head, len)`, or None after `timeout`.
    fn wait_used(&mut self, timeout: Duration) -> Option<(u32, u32)> {
        let start = Instant::now();
        loop {
            let used = self.mq.used();
            if used.idx().load() != self.used_seen {
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                let e = used
                    .ring()
                    .ref_at(usize::from(self.used_seen % self.size))
                    .unwrap()
                    .load();
                self.used_seen = self.used_seen.wrapping_add(1);
                return Some((e.id(), e.len()));
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, VERSION_1 only (no event index: this driver polls),
/// FEATURES_OK.
fn negotiate(t: &mut MmioTransport) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DEVICE_FEATURES_SEL, 1);
    assert_ne!(r(t, reg::DEVICE_FEATURES) & 1, 0, "VERSION_1 offered");
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, 0);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(
        t,
        reg::DRIVER_FEATURES,
        ((1u64 << VIRTIO_F_VERSION_1) >> 32) as u32,
    );
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    w(t, reg::STATUS, s);
    assert_eq!(r(t, reg::STATUS), s);
}

const DRIVER_OK: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

fn driver_ok(t: &mut MmioTransport) {
    w(t, reg::STATUS, DRIVER_OK);
    assert_eq!(r(t, reg::STATUS), DRIVER_OK, "device failed to activate");
    assert!(t.is_activated());
}

// ---------------------------------------------------------------- vsock

/// `struct virtio_vsock_hdr` (virtio 1.2, 5.10.6), little-endian, packed:
/// 44 bytes. Encoded by hand rather than with virtio-vsock's packet type,
/// so the test checks the wire format rather than trusting the same crate
/// the daemon parses it with.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct VsockHdr {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

const VSOCK_HDR_LEN: usize = 44;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const TYPE_STREAM: u16 = 1;

impl VsockHdr {
    fn encode(&self) -> [u8; VSOCK_HDR_LEN] {
        let mut b = [0u8; VSOCK_HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        VsockHdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 1234;
const RX_BUF: u64 = 0x20_0000;
const TX_BUF: u64 = 0x30_0000;
const BUF_LEN: u32 = 4096;

struct VsockGuest<'a> {
    mem: &'a GuestMemoryMmap,
    rx: Vq<'a>,
    tx: Vq<'a>,
    tx_slot: u64,
    fwd_cnt: u32,
}

impl<'a> VsockGuest<'a> {
    /// Lays out the rx, tx and event rings, programs them into the
    /// negotiated transport, posts 32 RX pages and sets DRIVER_OK.
    fn start(mem: &'a GuestMemoryMmap, t: &mut MmioTransport) -> Self {
        let mut g = VsockGuest {
            mem,
            rx: Vq::new(mem, 0x1_0000, 64),
            tx: Vq::new(mem, 0x2_0000, 64),
            tx_slot: 0,
            fwd_cnt: 0,
        };
        g.rx.program(t, 0);
        g.tx.program(t, 1);
        Vq::new(mem, 0x3_0000, 64).program(t, 2);
        // RX buffers: descriptor i is the page at RX_BUF + i * 4 KiB.
        for i in 0..32u64 {
            g.rx.add(&[(RX_BUF + i * u64::from(BUF_LEN), BUF_LEN, true)]);
        }
        driver_ok(t);
        g
    }

    fn hdr(&self, op: u16, len: u32) -> VsockHdr {
        VsockHdr {
            src_cid: GUEST_CID,
            dst_cid: 2,
            src_port: GUEST_PORT,
            dst_port: HOST_PORT,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 64 * 1024,
            fwd_cnt: self.fwd_cnt,
        }
    }

    fn next_tx_buf(&mut self) -> u64 {
        let a = TX_BUF + (self.tx_slot % 64) * u64::from(BUF_LEN);
        self.tx_slot += 1;
        a
    }

    /// Sends one packet on TX. `split`: header and payload in two
    /// descriptors; otherwise one descriptor holds both.
    fn send(&mut self, t: &mut MmioTransport, hdr: VsockHdr, payload: &[u8], split: bool) {
        let a = self.next_tx_buf();
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(a))
            .unwrap();
        if split && !payload.is_empty() {
            let b = self.next_tx_buf();
            self.mem.write_slice(payload, GuestAddress(b)).unwrap();
            self.tx.add(&[
                (a, VSOCK_HDR_LEN as u32, false),
                (b, payload.len() as u32, false),
            ]);
        } else {
            let p = GuestAddress(a + VSOCK_HDR_LEN as u64);
            self.mem.write_slice(payload, p).unwrap();
            self.tx
                .add(&[(a, (VSOCK_HDR_LEN + payload.len()) as u32, false)]);
        }
        w(t, reg::QUEUE_NOTIFY, 1);
        if self.tx.wait_used(TIMEOUT).is_none() {
            panic!("the daemon never used TX packet {hdr:?}");
        }
    }

    /// The next packet on RX; the buffer goes straight back to the device.
    fn recv(&mut self, t: &mut MmioTransport, timeout: Duration) -> Option<(VsockHdr, Vec<u8>)> {
        let (id, len) = self.rx.wait_used(timeout)?;
        let a = RX_BUF + u64::from(id) * u64::from(BUF_LEN);
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(a)).unwrap();
        let hdr = VsockHdr::decode(&buf);
        let data = buf[VSOCK_HDR_LEN..VSOCK_HDR_LEN + hdr.len as usize].to_vec();
        self.fwd_cnt += hdr.len;
        // Re-post the same single-descriptor buffer at the same index.
        let d = SplitDescriptor::new(a, BUF_LEN, VRING_DESC_F_WRITE, 0);
        self.rx
            .mq
            .desc_table()
            .store(id as u16, RawDescriptor::from(d))
            .unwrap();
        let avail = self.rx.mq.avail();
        let n = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(n % self.rx.size))
            .unwrap()
            .store(id as u16);
        avail.idx().store(n.wrapping_add(1));
        w(t, reg::QUEUE_NOTIFY, 0);
        Some((hdr, data))
    }

    /// Skips credit updates and requests until a packet with `op`.
    fn recv_op(&mut self, t: &mut MmioTransport, op: u16) -> (VsockHdr, Vec<u8>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (h, d) = self
                .recv(t, left)
                .unwrap_or_else(|| panic!("no packet with op {op} on RX"));
            if h.op == op {
                return (h, d);
            }
            assert!(h.op >= 6, "unexpected packet {h:?}");
        }
    }
}

fn accept_with_timeout(l: &UnixListener) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(start.elapsed() < TIMEOUT, "the daemon never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// `husk-vsockd`: `$HUSK_VSOCKD`, the one this test build sits next to
/// (`target/<profile>/`), or the monitor's lookup.
fn find_vsockd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_VSOCKD") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.parent()?.join("husk-vsockd");
    if beside.is_file() {
        return Some(beside);
    }
    find_binary("husk-vsockd")
}

impl VsockGuest<'_> {
    /// Sends one packet on TX with the header in one descriptor and the
    /// payload spread over `parts` descriptors (as Linux 6.12 does for a
    /// large skb), uneven sizes.
    fn send_parts(&mut self, t: &mut MmioTransport, hdr: VsockHdr, payload: &[u8], parts: usize) {
        let a = self.next_tx_buf();
        self.mem
            .write_slice(&hdr.encode(), GuestAddress(a))
            .unwrap();
        let mut bufs = vec![(a, VSOCK_HDR_LEN as u32, false)];
        let mut rest = payload;
        for i in 0..parts {
            let n = if i + 1 == parts {
                rest.len()
            } else {
                (rest.len() / (parts - i)).saturating_sub(i * 7)
            };
            let b = self.next_tx_buf();
            self.mem.write_slice(&rest[..n], GuestAddress(b)).unwrap();
            bufs.push((b, n as u32, false));
            rest = &rest[n..];
        }
        self.tx.add(&bufs);
        w(t, reg::QUEUE_NOTIFY, 1);
        if self.tx.wait_used(TIMEOUT).is_none() {
            panic!("the daemon never used TX packet {hdr:?}");
        }
    }
}

#[test]
fn husk_vsockd_serves_the_builtin_frontend() {
    let Some(bin) = find_vsockd() else {
        return skip("husk-vsockd not built (cargo build -p husk-vsockd)");
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost-vsock.sock");
    let uds = dir.path().join("vsock.uds");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("--guest-cid")
        .arg(GUEST_CID.to_string())
        .arg("--socket")
        .arg(&sock)
        .arg("--uds-path")
        .arg(&uds)
        .env("RUST_LOG", "debug");
    Confinement::vsock().unwrap().install(&mut cmd);
    let daemon = Daemon::spawn(cmd, dir, &sock);

    let mem = create_guest_memory(16 << 20).unwrap();
    let dev = VhostUserDevice::vsock(&sock, GUEST_CID).unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    assert_eq!(r(&mut t, reg::DEVICE_ID), 19);
    let mut cid = [0u8; 8];
    t.read(reg::CONFIG, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);

    // A host client before the driver is up: its CONNECT waits for it.
    let mut early = UnixStream::connect(&uds).unwrap();
    early.write_all(b"CONNECT 6000\n").unwrap();

    negotiate(&mut t);
    let mut g = VsockGuest::start(&mem, &mut t);
    let (req, _) = g.recv_op(&mut t, OP_REQUEST);
    assert_eq!(
        (req.src_cid, req.dst_cid, req.dst_port),
        (2, GUEST_CID, 6000)
    );
    let mut resp = g.hdr(OP_RESPONSE, 0);
    (resp.src_port, resp.dst_port) = (6000, req.src_port);
    g.send(&mut t, resp, &[], false);
    let mut ok = [0u8; 32];
    early.set_read_timeout(Some(TIMEOUT)).unwrap();
    let n = early.read(&mut ok).unwrap();
    assert_eq!(
        std::str::from_utf8(&ok[..n]).unwrap(),
        format!("OK {}\n", req.src_port)
    );
    // The client goes away: the guest hears SHUTDOWN(SEND), resets.
    drop(early);
    let (sh, _) = g.recv_op(&mut t, OP_SHUTDOWN);
    assert_eq!((sh.dst_port, sh.flags), (6000, 2));
    let mut rst = g.hdr(OP_RST, 0);
    (rst.src_port, rst.dst_port) = (6000, sh.src_port);
    g.send(&mut t, rst, &[], false);

    // Guest connect: REQUEST on TX, the daemon connects to U_1234, RESPONSE on RX.
    let req = g.hdr(OP_REQUEST, 0);
    g.send(&mut t, req, &[], false);
    let mut host = accept_with_timeout(&listener);
    let (resp, _) = g.recv_op(&mut t, OP_RESPONSE);
    assert_eq!(
        (resp.src_cid, resp.dst_cid, resp.src_port, resp.dst_port),
        (2, GUEST_CID, HOST_PORT, GUEST_PORT)
    );

    // Guest -> host: one descriptor, two, and a payload over three and
    // over eight descriptors.
    let mut want = Vec::new();
    let one = b"hello from the guest, one descriptor";
    g.send(&mut t, g.hdr(OP_RW, one.len() as u32), one, false);
    want.extend_from_slice(one);
    let two = vec![0x5au8; 3000];
    g.send(&mut t, g.hdr(OP_RW, two.len() as u32), &two, true);
    want.extend_from_slice(&two);
    for parts in [3, 8] {
        let data: Vec<u8> = (0..3500u32)
            .map(|i| (i * parts as u32 % 251) as u8)
            .collect();
        g.send_parts(&mut t, g.hdr(OP_RW, data.len() as u32), &data, parts);
        want.extend_from_slice(&data);
    }
    let mut got = vec![0u8; want.len()];
    host.read_exact(&mut got).unwrap();
    assert_eq!(got, want);

    // Host -> guest.
    let back = b"hello from the host";
    host.write_all(back).unwrap();
    let mut received = Vec::new();
    while received.len() < back.len() {
        let (h, d) = g.recv_op(&mut t, OP_RW);
        assert_eq!((h.src_port, h.dst_port), (HOST_PORT, GUEST_PORT));
        received.extend_from_slice(&d);
    }
    assert_eq!(received, back);

    // The host half-closes: the guest gets SHUTDOWN(SEND) and can still send.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (sh, _) = g.recv_op(&mut t, OP_SHUTDOWN);
    assert_eq!(sh.flags, 2);
    g.send(&mut t, g.hdr(OP_RW, 4), b"more", false);
    let mut more = [0u8; 4];
    host.read_exact(&mut more).unwrap();
    assert_eq!(&more, b"more");

    // The guest closes: the host sees EOF and the guest its RST.
    let mut h = g.hdr(OP_SHUTDOWN, 0);
    h.flags = 3;
    g.send(&mut t, h, &[], false);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    g.recv_op(&mut t, OP_RST);

    // Reset, then the driver again on fresh rings: connect once more.
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    drop(g);
    mem.write_slice(&[0u8; 0x3_0000], GuestAddress(0x1_0000))
        .unwrap();
    negotiate(&mut t);
    let mut g = VsockGuest::start(&mem, &mut t);
    let mut req = g.hdr(OP_REQUEST, 0);
    req.src_port = GUEST_PORT + 1;
    g.send(&mut t, req, &[], false);
    let _host2 = accept_with_timeout(&listener);
    let (resp, _) = g.recv_op(&mut t, OP_RESPONSE);
    assert_eq!(resp.dst_port, GUEST_PORT + 1);
    w(&mut t, reg::STATUS, 0);

    drop(t);
    let log = daemon.log_text();
    assert!(!log.contains("dropping a TX chain"), "{log}");
}

// ---------------------------------------------------------------- virtio-fs

/// FUSE wire structs (`include/uapi/linux/fuse.h`, protocol 7.31), written
/// by hand: no FUSE crate is a dependency of the monitor, and a client-side
/// test wants the raw layout rather than a server library's types.
mod fuse {
    pub const LOOKUP: u32 = 1;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const INIT: u32 = 26;

    /// `fuse_in_header`: 40 bytes.
    #[derive(Clone, Copy, Default)]
    #[repr(C)]
    pub struct InHeader {
        pub len: u32,
        pub opcode: u32,
        pub unique: u64,
        pub nodeid: u64,
        pub uid: u32,
        pub gid: u32,
        pub pid: u32,
        pub total_extlen: u16,
        pub padding: u16,
    }

    /// `fuse_out_header`: 16 bytes.
    #[derive(Clone, Copy, Default, Debug)]
    #[repr(C)]
    pub struct OutHeader {
        pub len: u32,
        pub error: i32,
        pub unique: u64,
    }

    /// `fuse_init_in` as before 7.36 (no flags2): 16 bytes.
    #[derive(Clone, Copy, Default)]
    #[repr(C)]
    pub struct InitIn {
        pub major: u32,
        pub minor: u32,
        pub max_readahead: u32,
        pub flags: u32,
    }

    /// `fuse_open_in`: 8 bytes.
    #[derive(Clone, Copy, Default)]
    #[repr(C)]
    pub struct OpenIn {
        pub flags: u32,
        pub open_flags: u32,
    }

    /// `fuse_read_in`: 40 bytes.
    #[derive(Clone, Copy, Default)]
    #[repr(C)]
    pub struct ReadIn {
        pub fh: u64,
        pub offset: u64,
        pub size: u32,
        pub read_flags: u32,
        pub lock_owner: u64,
        pub flags: u32,
        pub padding: u32,
    }

    // SAFETY: plain integers, no padding (the sizes are checked below).
    unsafe impl vm_memory::ByteValued for InHeader {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for OutHeader {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for InitIn {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for OpenIn {}
    // SAFETY: as above.
    unsafe impl vm_memory::ByteValued for ReadIn {}

    const _: () = assert!(size_of::<InHeader>() == 40);
    const _: () = assert!(size_of::<OutHeader>() == 16);
    const _: () = assert!(size_of::<InitIn>() == 16);
    const _: () = assert!(size_of::<OpenIn>() == 8);
    const _: () = assert!(size_of::<ReadIn>() == 40);
}

const FS_IN: u64 = 0x40_0000;
const FS_OUT: u64 = 0x50_0000;

struct FsGuest<'a> {
    mem: &'a GuestMemoryMmap,
    req: Vq<'a>,
    unique: u64,
}

impl FsGuest<'_> {
    /// One FUSE request on the request queue: `(error, reply body)`.
    fn call(
        &mut self,
        t: &mut MmioTransport,
        opcode: u32,
        nodeid: u64,
        args: &[u8],
    ) -> (i32, Vec<u8>) {
        use vm_memory::ByteValued;
        self.unique += 1;
        let hdr = fuse::InHeader {
            len: (40 + args.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            ..Default::default()
        };
        let mut inb = hdr.as_slice().to_vec();
        inb.extend_from_slice(args);
        self.mem.write_slice(&inb, GuestAddress(FS_IN)).unwrap();
        self.mem
            .write_slice(&[0u8; 8192], GuestAddress(FS_OUT))
            .unwrap();
        self.req
            .add(&[(FS_IN, inb.len() as u32, false), (FS_OUT, 8192, true)]);
        w(t, reg::QUEUE_NOTIFY, 1);
        let (_, len) = self.req.wait_used(TIMEOUT).expect("FUSE reply");
        let out: fuse::OutHeader = self.mem.read_obj(GuestAddress(FS_OUT)).unwrap();
        assert_eq!(out.unique, self.unique);
        assert_eq!(out.len, len, "{out:?}");
        let mut body = vec![0u8; (len as usize).saturating_sub(16)];
        self.mem
            .read_slice(&mut body, GuestAddress(FS_OUT + 16))
            .unwrap();
        (out.error, body)
    }
}

#[test]
fn virtiofs_init_lookup_open_read() {
    use vm_memory::ByteValued;
    let Some(bin) = find_binary("virtiofsd") else {
        return skip("virtiofsd not installed");
    };
    if let Err(e) = husk_test_support::root() {
        return skip(format!("virtiofsd {e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let content = b"read through virtiofsd by a fake guest\n".repeat(10);
    std::fs::write(share.join("hello.txt"), &content).unwrap();
    let sock = dir.path().join("vhost-fs.sock");
    let share_cfg = ShareConfig {
        tag: "share".into(),
        host_dir: share.clone(),
        cache: CachePolicy::Auto,
        readonly: false,
        writeback: false,
        threads: None,
    };
    let mut cmd = Command::new(bin);
    cmd.args(virtiofsd_args(
        &share_cfg,
        &sock,
        VirtiofsdSandbox::Namespace,
    ));
    Confinement::virtiofsd(VirtiofsdSandbox::Namespace)
        .unwrap()
        .install(&mut cmd);
    let _daemon = Daemon::spawn(cmd, dir, &sock);

    let mem = create_guest_memory(16 << 20).unwrap();
    let dev = VhostUserDevice::fs(&sock, "share").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), mem.clone()).unwrap();
    assert_eq!(r(&mut t, reg::DEVICE_ID), 26);
    let mut tag = [0u8; 36];
    t.read(reg::CONFIG, &mut tag[..4]);
    assert_eq!(&tag[..4], b"shar");
    assert_eq!(r(&mut t, reg::CONFIG + 36), 1, "one request queue");

    negotiate(&mut t);
    let hiprio = Vq::new(&mem, 0x1_0000, 64);
    let mut g = FsGuest {
        mem: &mem,
        req: Vq::new(&mem, 0x2_0000, 64),
        unique: 0,
    };
    hiprio.program(&mut t, 0);
    g.req.program(&mut t, 1);
    driver_ok(&mut t);

    let init = fuse::InitIn {
        major: 7,
        minor: 31,
        max_readahead: 0x2_0000,
        flags: 0,
    };
    let (err, body) = g.call(&mut t, fuse::INIT, 0, init.as_slice());
    assert_eq!(err, 0);
    assert_eq!(u32::from_le_bytes(body[0..4].try_into().unwrap()), 7);

    let (err, body) = g.call(&mut t, fuse::LOOKUP, 1, b"hello.txt\0");
    assert_eq!(err, 0);
    // fuse_entry_out: nodeid at 0, fuse_attr at 40 (ino, then size).
    let nodeid = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let size = u64::from_le_bytes(body[48..56].try_into().unwrap());
    assert_ne!(nodeid, 0);
    assert_eq!(size, content.len() as u64);

    let (err, _) = g.call(&mut t, fuse::LOOKUP, 1, b"missing\0");
    assert_eq!(err, -libc::ENOENT);

    let (err, body) = g.call(
        &mut t,
        fuse::OPEN,
        nodeid,
        fuse::OpenIn::default().as_slice(),
    );
    assert_eq!(err, 0);
    let fh = u64::from_le_bytes(body[0..8].try_into().unwrap());

    let read = fuse::ReadIn {
        fh,
        offset: 0,
        size: 4096,
        ..Default::default()
    };
    let (err, body) = g.call(&mut t, fuse::READ, nodeid, read.as_slice());
    assert_eq!(err, 0);
    assert_eq!(body, content);

    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
}
