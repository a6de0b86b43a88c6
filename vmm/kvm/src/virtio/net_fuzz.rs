//! Fuzzing virtio-net's queue processing with hostile descriptor chains.
//!
//! Each case writes a random descriptor table (direct and indirect
//! descriptors, loops, addresses in, across and beyond guest RAM, lengths
//! up to `u32::MAX`, the write flag on the wrong side), random available
//! rings (heads past the queue, an index running ahead) and, for receive,
//! random frames on a datagram socket standing in for the tap. The worker's
//! transmit and receive passes run on the test thread (no worker thread, no
//! timing). Properties: nothing panics; every used entry is a head the
//! driver made available, in order, with a sane length (0 on transmit; 0 or
//! a whole frame on receive, which fit the chain); the device writes guest
//! memory only inside device-writable buffers and the used ring; frames on
//! the tap are whole and carry the device's zero header. Cases: 256 per
//! property, `HUSK_FUZZ_CASES` for more (README, "Fuzzing").

use std::os::unix::net::UnixDatagram;

use husk_protocol::fuzzing::config;
use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::memory::create_guest_memory;

/// Guest RAM: rings at 0 (receive) and 0x1000 (transmit), indirect tables
/// at 0x2000 and 0x3000, buffers above 0x4000.
const MEM: u64 = 0x4_0000;
const QSIZE: u16 = 16;
const RING: [u64; 2] = [0, 0x1000];
const INDIRECT: [u64; 2] = [0x2000, 0x3000];
const DATA: u64 = 0x4000;
/// Entries of an indirect table.
const INDIRECT_LEN: usize = 32;
/// The available and used rings' offsets in a queue's area. Not
/// `MockSplitQueue::create`'s layout: in virtio-queue 0.18 it puts the used
/// ring inside the available ring (its end is counted in entries, not
/// bytes), which a queue of 16 fills.
const AVAIL_OFF: u64 = 0x100;
const USED_OFF: u64 = 0x200;

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (0..MEM - DATA).prop_map(|o| DATA + o),
        1 => (0..128u64).prop_map(|o| MEM - o),
        1 => (0..4096u64).prop_map(|o| MEM + o),
        1 => Just(0xdead_0000_0000),
        1 => (0..64u64).prop_map(|o| u64::MAX - o),
    ]
}

/// Where an indirect descriptor points: one of ours, the queue's own
/// table, or nowhere.
fn table_addr(q: usize) -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(INDIRECT[q]),
        1 => Just(RING[q]),
        1 => Just(INDIRECT[1 - q]),
        1 => (0..64u64).prop_map(|o| u64::MAX - o),
        1 => Just(MEM - 16),
    ]
}

fn len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..64,
        2 => 64u32..4096,
        1 => Just(12),
        1 => Just(1514),
        1 => (MAX_FRAME as u32 - 16)..(MAX_FRAME as u32 + 16),
        1 => (0u32..16).prop_map(|o| u32::MAX - o),
        1 => Just(0x1_0000),
    ]
}

/// Flags: mostly the queue's direction (device-writable on receive,
/// queue 0), sometimes the wrong one, indirect, or any bits.
fn flags(q: usize) -> impl Strategy<Value = u16> {
    let (n, w, i) = (
        VRING_DESC_F_NEXT as u16,
        VRING_DESC_F_WRITE as u16,
        VRING_DESC_F_INDIRECT as u16,
    );
    let right = if q == 0 { w } else { 0 };
    let wrong = w ^ right;
    prop_oneof![
        5 => Just(right),
        3 => Just(right | n),
        1 => prop_oneof![Just(wrong), Just(wrong | n)],
        1 => prop_oneof![Just(i), Just(i | n), Just(i | w)],
        1 => any::<u16>(),
    ]
}

/// A raw descriptor; indirect ones point at a table.
fn desc(q: usize) -> impl Strategy<Value = SplitDescriptor> {
    (
        flags(q),
        addr(),
        table_addr(q),
        len(),
        0u16..20,
        0..=INDIRECT_LEN as u32,
    )
        .prop_map(|(flags, addr, table, len, next, entries)| {
            if flags & VRING_DESC_F_INDIRECT as u16 != 0 {
                // Mostly a whole number of entries, sometimes not.
                let l = if len % 5 == 0 { len } else { entries * 16 };
                SplitDescriptor::new(table, l, flags, next)
            } else {
                SplitDescriptor::new(addr, len, flags, next)
            }
        })
}

/// What the driver put in one queue.
#[derive(Debug, Clone)]
struct QueueInput {
    table: Vec<SplitDescriptor>,
    indirect: Vec<SplitDescriptor>,
    heads: Vec<u16>,
    /// An available index ahead of `heads.len()` (virtio-queue refuses
    /// one more than a queue ahead).
    idx_jump: Option<u16>,
}

fn queue_input(q: usize) -> impl Strategy<Value = QueueInput> {
    (
        prop::collection::vec(desc(q), QSIZE as usize),
        prop::collection::vec(desc(q), INDIRECT_LEN),
        prop::collection::vec(
            prop_oneof![8 => 0..QSIZE, 1 => QSIZE..u16::MAX],
            0..=QSIZE as usize,
        ),
        prop::option::weighted(0.05, 1u16..u16::MAX),
    )
        .prop_map(|(table, indirect, heads, idx_jump)| QueueInput {
            table,
            indirect,
            heads,
            idx_jump,
        })
}

/// The driver side: guest memory with both rings, a datagram socket pair
/// for the tap, and the worker (not started).
struct Rig {
    mem: GuestMemoryMmap,
    host: UnixDatagram,
    worker: Worker,
}

impl Rig {
    fn new(inputs: [&QueueInput; 2]) -> Rig {
        let mem = create_guest_memory(MEM).unwrap();
        let queues = [0, 1].map(|q| {
            let base = RING[q];
            let table = DescriptorTable::new(&mem, GuestAddress(base), QSIZE);
            let avail = AvailRing::new(&mem, GuestAddress(base + AVAIL_OFF), QSIZE);
            UsedRing::new(&mem, GuestAddress(base + USED_OFF), QSIZE);
            let inp = inputs[q];
            for (i, d) in inp.table.iter().enumerate() {
                table.store(i as u16, RawDescriptor::from(*d)).unwrap();
            }
            for (i, d) in inp.indirect.iter().enumerate() {
                let at = GuestAddress(INDIRECT[q] + 16 * i as u64);
                mem.write_obj(RawDescriptor::from(*d), at).unwrap();
            }
            for (i, h) in inp.heads.iter().enumerate() {
                avail.ring().ref_at(i).unwrap().store(*h);
            }
            let idx = inp.heads.len() as u16;
            avail
                .idx()
                .store(idx.wrapping_add(inp.idx_jump.unwrap_or(0)));
            let mut queue = Queue::new(QSIZE).unwrap();
            queue.set_size(QSIZE);
            for (off, set) in [
                (
                    0,
                    Queue::set_desc_table_address as fn(&mut Queue, Option<u32>, Option<u32>),
                ),
                (AVAIL_OFF, Queue::set_avail_ring_address),
                (USED_OFF, Queue::set_used_ring_address),
            ] {
                let a = base + off;
                set(&mut queue, Some(a as u32), Some((a >> 32) as u32));
            }
            queue.set_ready(true);
            assert!(queue.is_valid(&mem));
            queue
        });
        let (dev, host) = UnixDatagram::pair().unwrap();
        dev.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let [rx, tx] = queues;
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = Worker {
            mem: mem.clone(),
            interrupt: Arc::new(Interrupt::new().unwrap()),
            tap: Arc::new(Tap::fake(dev.into())),
            rx,
            tx,
            rx_kick: eventfd(),
            tx_kick: eventfd(),
            stop: eventfd(),
            epoll: Epoll::new().unwrap(),
            tap_polled: false,
            frame: vec![0; MAX_FRAME],
            confine: crate::confine::ThreadHook::none(),
        };
        Rig { mem, host, worker }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0; MEM as usize];
        self.mem.read_slice(&mut v, GuestAddress(0)).unwrap();
        v
    }

    /// Used ring of queue `q`: (id, len) entries.
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let base = RING[q] + USED_OFF;
        let idx: u16 = self.mem.read_obj(GuestAddress(base + 2)).unwrap();
        (0..u64::from(idx.min(QSIZE)))
            .map(|i| {
                let at = GuestAddress(base + 4 + 8 * i);
                let id: u32 = self.mem.read_obj(at).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at.0 + 4)).unwrap();
                (id, len)
            })
            .collect()
    }

    fn used_range(&self, q: usize) -> std::ops::Range<u64> {
        let start = RING[q] + USED_OFF;
        start..start + 6 + 8 * u64::from(QSIZE)
    }
}

/// Byte ranges any descriptor of `mem` (its tables) marks device-writable.
fn writable_ranges(mem: &[u8]) -> Vec<std::ops::Range<u64>> {
    let mut out = Vec::new();
    let tables = [
        (RING[0], QSIZE as usize),
        (RING[1], QSIZE as usize),
        (INDIRECT[0], INDIRECT_LEN),
        (INDIRECT[1], INDIRECT_LEN),
    ];
    for (base, n) in tables {
        for i in 0..n {
            let at = (base + 16 * i as u64) as usize;
            let d = &mem[at..at + 16];
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            if flags & VRING_DESC_F_WRITE as u16 != 0 {
                out.push(addr..addr.saturating_add(u64::from(len)));
            }
        }
    }
    out
}

/// The heads the device may return, in order: those inside the queue,
/// none at all when the available index ran too far ahead.
fn expected_heads(inp: &QueueInput) -> Vec<u32> {
    let ahead = (inp.heads.len() as u16).wrapping_add(inp.idx_jump.unwrap_or(0));
    if ahead > QSIZE {
        return Vec::new();
    }
    inp.heads
        .iter()
        .filter(|h| **h < QSIZE)
        .map(|h| u32::from(*h))
        .collect()
}

/// Every byte that changed is in the used ring or a writable buffer.
fn assert_writes_confined(
    before: &[u8],
    after: &[u8],
    used: std::ops::Range<u64>,
) -> Result<(), TestCaseError> {
    let mut allowed = writable_ranges(before);
    allowed.extend(writable_ranges(after));
    allowed.push(used);
    for (i, (a, b)) in before.iter().zip(after).enumerate() {
        if a != b {
            let i = i as u64;
            prop_assert!(
                allowed.iter().any(|r| r.contains(&i)),
                "byte {i:#x} written outside every writable buffer"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Transmit: hostile chains are returned with length 0, in order; only
    /// whole frames with a zero header reach the tap; nothing is written
    /// but the used ring.
    #[test]
    fn fuzz_net_transmit_chains(tx in queue_input(1), rx in queue_input(0), payload in any::<u8>()) {
        let mut rig = Rig::new([&rx, &tx]);
        // Fill the buffer area so frames have content.
        rig.mem.write_slice(&vec![payload; (MEM - DATA) as usize], GuestAddress(DATA)).unwrap();
        let before = rig.snapshot();
        rig.worker.process_tx();
        let after = rig.snapshot();
        assert_writes_confined(&before, &after, rig.used_range(1))?;
        let used = rig.used(1);
        let want = expected_heads(&tx);
        prop_assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), want.clone());
        prop_assert!(used.iter().all(|u| u.1 == 0), "{:?}", used);
        if !used.is_empty() {
            prop_assert_ne!(rig.worker.interrupt.status() & INT_VRING, 0);
        }
        let mut frames = 0;
        let mut buf = vec![0u8; 2 * MAX_FRAME];
        while let Ok(n) = rig.host.recv(&mut buf) {
            frames += 1;
            prop_assert!((VNET_HDR_LEN..=MAX_FRAME).contains(&n), "frame of {n} bytes");
            prop_assert_eq!(&buf[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN][..]);
            prop_assert!(buf[VNET_HDR_LEN..n].iter().all(|b| *b == payload));
        }
        prop_assert!(frames <= want.len());
    }

    /// Receive: frames go only into device-writable buffers of chains big
    /// enough, whole and in order; every other chain comes back with
    /// length 0; nothing else in guest memory changes.
    #[test]
    fn fuzz_net_receive_chains(
        rx in queue_input(0),
        tx in queue_input(1),
        frames in prop::collection::vec(
            prop_oneof![0usize..VNET_HDR_LEN + 2, 12usize..200, Just(1514), (MAX_FRAME - 8)..(MAX_FRAME + 8)],
            0..6,
        ),
    ) {
        let mut rig = Rig::new([&rx, &tx]);
        let mut sent = Vec::new();
        for (i, n) in frames.iter().enumerate() {
            if rig.host.send(&vec![0xf0 | i as u8; *n]).is_ok() {
                // A longer datagram reaches the device cut to MAX_FRAME.
                sent.push((*n).min(MAX_FRAME));
            }
        }
        let before = rig.snapshot();
        rig.worker.process_rx();
        let after = rig.snapshot();
        assert_writes_confined(&before, &after, rig.used_range(0))?;
        let used = rig.used(0);
        let want = expected_heads(&rx);
        let ids: Vec<u32> = used.iter().map(|u| u.0).collect();
        prop_assert!(want.starts_with(&ids), "used {ids:?}, available {want:?}");
        // Delivered lengths: whole frames, in the order they came.
        let mut rest = sent.iter();
        for &(_, len) in &used {
            if len == 0 {
                continue;
            }
            let len = len as usize;
            prop_assert!((VNET_HDR_LEN..=MAX_FRAME).contains(&len));
            prop_assert!(rest.any(|s| *s == len), "length {len} is no frame sent, in order: {sent:?}");
        }
    }
}
