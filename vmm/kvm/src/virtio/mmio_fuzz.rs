//! Fuzzing the virtio-mmio transport with random register sequences.
//!
//! Each case drives a transport over a fake device with a sequence of
//! guest accesses: raw reads and writes (any offset, width and value) mixed
//! with the driver's usual steps (status bits, feature words, queue setup
//! with hostile sizes and ring addresses, notifies, resets), the device
//! refusing activation or a second one at random. After every access the
//! invariants hold: nothing panics; the status only gains bits, in the
//! order ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (or clears on reset);
//! the device is active only after that whole sequence and is activated at
//! most once between resets, with acknowledged features it offered
//! (including VERSION_1) and only ready queues whose rings lie in guest
//! memory; a reset clears the status, the interrupt and every queue and
//! resets an active device. Cases: 256 per property, `HUSK_FUZZ_CASES` for
//! more (README, "Fuzzing").

use std::sync::{Arc, Mutex};

use husk_protocol::fuzzing::config;
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

use super::status::*;
use super::*;
/// Feature masks, from virtio-bindings' bit numbers.
const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use crate::memory::create_guest_memory;

const MEM: u64 = 1 << 20;
const FEATURES: u64 = VERSION_1 | 1 << 3 | EVENT_IDX;
const MAX_SIZES: [u16; 3] = [256, 16, 1];

/// What the device saw, checked by the test.
#[derive(Debug, Default)]
struct Seen {
    active: bool,
    activations: usize,
    acked: Option<u64>,
    violations: Vec<String>,
}

#[derive(Debug)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    mem: GuestMemoryMmap,
    fail_activate: bool,
    reusable: bool,
}

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        7
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &MAX_SIZES
    }
    fn avail_features(&self) -> u64 {
        FEATURES
    }
    fn set_acked_features(&mut self, acked: u64) {
        let mut s = self.seen.lock().unwrap();
        if acked & !FEATURES != 0 || acked & VERSION_1 == 0 {
            s.violations.push(format!("acked features {acked:#x}"));
        }
        s.acked = Some(acked);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset.wrapping_add(i as u64) as u8;
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        let mut s = self.seen.lock().unwrap();
        if s.active {
            s.violations.push("activated twice".into());
        }
        if s.acked.is_none() {
            s.violations.push("activated before FEATURES_OK".into());
        }
        if queues.is_empty() {
            s.violations.push("activated with no queue".into());
        }
        for q in &queues {
            let max = MAX_SIZES.get(q.index).copied().unwrap_or(0);
            let size = q.queue.size();
            if !q.queue.ready() || !q.queue.is_valid(&mem) || !q.queue.is_valid(&self.mem) {
                s.violations
                    .push(format!("queue {} handed over invalid", q.index));
            }
            if size == 0 || size > max || !size.is_power_of_two() {
                s.violations
                    .push(format!("queue {} of size {size}", q.index));
            }
        }
        if self.fail_activate {
            return Err(DeviceError::Invalid("refused".into()));
        }
        s.active = true;
        s.activations += 1;
        Ok(())
    }
    fn reset(&mut self) -> bool {
        let mut s = self.seen.lock().unwrap();
        if !s.active {
            s.violations.push("reset while not active".into());
        }
        s.active = false;
        s.acked = None;
        self.reusable
    }
}

/// One guest access, or a driver step made of several.
#[derive(Debug, Clone)]
enum Access {
    Read {
        offset: u64,
        width: usize,
    },
    Write {
        offset: u64,
        width: usize,
        value: u64,
    },
    Status(u32),
    Features {
        sel: u32,
        value: u32,
    },
    Queue {
        sel: u32,
        size: u32,
        desc: u64,
        avail: u64,
        used: u64,
        ready: u32,
    },
    Notify(u32),
    Reset,
    /// A whole driver bring-up: negotiation (all offered features but
    /// `drop_features`), three queues of `sizes` at `bases`, DRIVER_OK.
    Bringup {
        drop_features: u64,
        sizes: [u32; 3],
        bases: [u64; 3],
    },
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0u64..0x40).prop_map(|r| r * 4),
        2 => 0u64..0x120,
        1 => 0x100u64..0x1000,
        1 => any::<u64>(),
    ]
}

fn width() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(4usize), 1 => Just(1usize), 1 => Just(2usize), 1 => Just(8usize), 1 => 0usize..16]
}

fn status_value() -> impl Strategy<Value = u32> {
    let steps = [
        ACKNOWLEDGE,
        ACKNOWLEDGE | DRIVER,
        ACKNOWLEDGE | DRIVER | FEATURES_OK,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
    ];
    prop_oneof![
        6 => prop::sample::select(steps.to_vec()),
        1 => Just(0u32),
        1 => Just(FAILED),
        1 => Just(DEVICE_NEEDS_RESET),
        1 => any::<u8>().prop_map(u32::from),
        1 => any::<u32>(),
    ]
}

/// A ring address: well placed, misaligned, across or past the end of RAM.
fn ring_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..(MEM >> 12)).prop_map(|p| p << 12),
        1 => 0u64..MEM,
        1 => (0u64..0x2000).prop_map(|o| MEM - o),
        1 => (0u64..64).prop_map(|o| u64::MAX - o),
        1 => any::<u64>(),
    ]
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        2 => (offset(), width()).prop_map(|(offset, width)| Access::Read { offset, width }),
        3 => (offset(), width(), any::<u64>())
            .prop_map(|(offset, width, value)| Access::Write { offset, width, value }),
        4 => status_value().prop_map(Access::Status),
        2 => (0u32..3, prop_oneof![Just(FEATURES as u32), Just((FEATURES >> 32) as u32), any::<u32>()])
            .prop_map(|(sel, value)| Access::Features { sel, value }),
        4 => (
            prop_oneof![8 => 0u32..3, 1 => any::<u32>()],
            prop_oneof![4 => prop::sample::select(vec![1u32, 2, 8, 16, 256]), 1 => any::<u32>()],
            ring_addr(),
            ring_addr(),
            ring_addr(),
            prop_oneof![4 => Just(1u32), 1 => Just(0u32), 1 => any::<u32>()],
        )
            .prop_map(|(sel, size, desc, avail, used, ready)| Access::Queue {
                sel, size, desc, avail, used, ready
            }),
        1 => any::<u32>().prop_map(Access::Notify),
        1 => Just(Access::Reset),
        2 => (
            prop_oneof![4 => Just(0u64), 1 => any::<u64>()],
            [queue_size(), queue_size(), queue_size()],
            [ring_addr(), ring_addr(), ring_addr()],
        )
            .prop_map(|(drop_features, sizes, bases)| Access::Bringup { drop_features, sizes, bases }),
    ]
}

fn queue_size() -> impl Strategy<Value = u32> {
    prop_oneof![6 => prop::sample::select(vec![1u32, 2, 16, 256]), 1 => any::<u32>()]
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0xffu8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn apply(t: &mut MmioTransport, a: &Access) {
    match *a {
        Access::Read { offset, width } => {
            let mut d = vec![0xa5u8; width];
            t.read(offset, &mut d);
        }
        Access::Write {
            offset,
            width,
            value,
        } => {
            let bytes = value.to_le_bytes();
            let mut d = bytes.to_vec();
            d.resize(width, 0x5a);
            t.write(offset, &d);
        }
        Access::Status(v) => w(t, reg::STATUS, v),
        Access::Features { sel, value } => {
            w(t, reg::DRIVER_FEATURES_SEL, sel);
            w(t, reg::DRIVER_FEATURES, value);
        }
        Access::Queue {
            sel,
            size,
            desc,
            avail,
            used,
            ready,
        } => {
            w(t, reg::QUEUE_SEL, sel);
            w(t, reg::QUEUE_NUM, size);
            for (lo, addr) in [
                (reg::QUEUE_DESC_LOW, desc),
                (reg::QUEUE_DRIVER_LOW, avail),
                (reg::QUEUE_DEVICE_LOW, used),
            ] {
                w(t, lo, addr as u32);
                w(t, lo + 4, (addr >> 32) as u32);
            }
            w(t, reg::QUEUE_READY, ready);
        }
        Access::Notify(q) => w(t, reg::QUEUE_NOTIFY, q),
        Access::Reset => w(t, reg::STATUS, 0),
        Access::Bringup {
            drop_features,
            sizes,
            bases,
        } => {
            w(t, reg::STATUS, ACKNOWLEDGE);
            w(t, reg::STATUS, ACKNOWLEDGE | DRIVER);
            for sel in 0..2 {
                w(t, reg::DEVICE_FEATURES_SEL, sel);
                let offered = r(t, reg::DEVICE_FEATURES);
                w(t, reg::DRIVER_FEATURES_SEL, sel);
                w(
                    t,
                    reg::DRIVER_FEATURES,
                    offered & !((drop_features >> (32 * sel)) as u32),
                );
            }
            w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
            for (q, (&size, &base)) in sizes.iter().zip(&bases).enumerate() {
                // Table, available and used ring a page apart (a 256-entry
                // table fills one).
                apply(
                    t,
                    &Access::Queue {
                        sel: q as u32,
                        size,
                        desc: base,
                        avail: base.wrapping_add(0x1000),
                        used: base.wrapping_add(0x2000),
                        ready: 1,
                    },
                );
            }
            w(t, reg::STATUS, OK);
        }
    }
}

/// The status bits in their required order.
fn ordered(s: u32) -> bool {
    let needs = [
        (DRIVER, ACKNOWLEDGE),
        (FEATURES_OK, DRIVER),
        (DRIVER_OK, FEATURES_OK),
    ];
    needs
        .iter()
        .all(|(bit, before)| s & bit == 0 || s & before != 0)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_mmio_register_sequences(
        accesses in prop::collection::vec(access(), 1..64),
        fail_activate in prop::bool::weighted(0.2),
        reusable in prop::bool::weighted(0.8),
    ) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mem = create_guest_memory(MEM).unwrap();
        let dev = Fake { seen: seen.clone(), mem: mem.clone(), fail_activate, reusable };
        let mut t = MmioTransport::new(Box::new(dev), mem).unwrap();
        let mut dead = false;
        for a in &accesses {
            let before = t.status();
            let was_active = t.is_activated();
            apply(&mut t, a);
            let after = t.status();
            prop_assert_eq!(r(&mut t, reg::STATUS), after);
            prop_assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
            prop_assert!(
                after == 0 || after & before == before,
                "status {before:#x} -> {after:#x} lost bits without a reset"
            );
            prop_assert!(ordered(after), "status {after:#x} out of order");
            let s = seen.lock().unwrap();
            prop_assert!(s.violations.is_empty(), "{:?} after {:?}", s.violations, a);
            prop_assert_eq!(t.is_activated(), s.active);
            if t.is_activated() {
                prop_assert_eq!(after & OK, OK, "active with status {:#x}", after);
                prop_assert!(!dead, "activated again after a reset it could not take");
            }
            if after == 0 && (before != 0 || was_active) {
                // A reset: everything cleared, an active device reset.
                drop(s);
                prop_assert!(!t.is_activated());
                prop_assert_eq!(t.interrupt().status(), 0);
                for q in 0..MAX_SIZES.len() as u32 {
                    w(&mut t, reg::QUEUE_SEL, q);
                    prop_assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
                }
                w(&mut t, reg::QUEUE_SEL, 0);
                if was_active && !reusable {
                    dead = true;
                }
            }
        }
    }
}

const OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn thread_count() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .unwrap()
        .to_owned()
}

/// Zero leaks: random register sequences (with whole bring-ups) against a
/// real virtio-net behind the transport (a datagram socket for its tap),
/// which starts its worker thread on DRIVER_OK and joins it on reset and
/// drop. Once every case is dropped the process has the fds and threads it
/// had. In a child process running only this test, so the counts are its
/// own.
#[test]
fn fuzz_mmio_net_leaves_no_fd_or_thread() {
    use std::os::unix::net::UnixDatagram;

    use proptest::test_runner::TestRunner;

    use crate::confine::ThreadHook;
    use crate::virtio::net::Net;
    use crate::virtio::tap::Tap;

    if !crate::testing::child::in_child_process(
        module_path!(),
        "fuzz_mmio_net_leaves_no_fd_or_thread",
    ) {
        return;
    }
    let before = (fd_count(), thread_count());
    let activated = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(config());
    runner
        .run(&prop::collection::vec(access(), 1..32), |accesses| {
            let (dev, _host) = UnixDatagram::pair().unwrap();
            dev.set_nonblocking(true).unwrap();
            let net = Net::new(
                Tap::fake(dev.into()),
                [0x52, 0x54, 0, 1, 2, 3],
                1500,
                ThreadHook::none(),
            );
            let mem = create_guest_memory(MEM).unwrap();
            let mut t = MmioTransport::new(Box::new(net), mem).unwrap();
            for a in &accesses {
                apply(&mut t, a);
                if t.is_activated() {
                    activated.set(activated.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(activated.get() > 0, "no case started the net worker");
    assert_eq!(
        (fd_count(), thread_count()),
        before,
        "leaked fds or threads"
    );
}
