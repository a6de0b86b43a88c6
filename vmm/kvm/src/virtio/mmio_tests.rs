//! Register-level tests of the virtio-mmio transport, with a fake device.

use std::sync::{Arc, Mutex};

use super::status::*;
use super::*;
/// Feature masks, from virtio-bindings' bit numbers.
const VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use crate::memory::create_guest_memory;
use crate::virtio::INT_VRING;

#[derive(Debug, Default)]
struct Seen {
    acked: Option<u64>,
    activated: Vec<(usize, u16, u64)>,
    kicks: Vec<EventFd>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    fail_activate: bool,
    reusable: bool,
}

const FAKE_FEATURES: u64 = VERSION_1 | 1 << 3 | EVENT_IDX;

impl VirtioDevice for Fake {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 16]
    }
    fn avail_features(&self) -> u64 {
        FAKE_FEATURES
    }
    fn set_acked_features(&mut self, acked: u64) {
        self.seen.lock().unwrap().acked = Some(acked);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = [1u8, 2, 3, 4, 5, 6, 7, 8];
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at.and_then(|a| cfg.get(a)).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        if self.fail_activate {
            return Err(DeviceError::Backend("no".into()));
        }
        let mut s = self.seen.lock().unwrap();
        for q in queues {
            s.activated
                .push((q.index, q.queue.size(), q.queue.desc_table()));
            s.kicks.push(q.kick);
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.seen.lock().unwrap().resets += 1;
        self.reusable
    }
}

fn transport_with(fail_activate: bool, reusable: bool) -> (MmioTransport, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let dev = Fake {
        seen: seen.clone(),
        fail_activate,
        reusable,
    };
    let mem = create_guest_memory(1 << 20).unwrap();
    (MmioTransport::new(Box::new(dev), mem).unwrap(), seen)
}

fn transport() -> (MmioTransport, Arc<Mutex<Seen>>) {
    transport_with(false, true)
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut d = [0xffu8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport, features: u64) {
    w(t, reg::STATUS, ACKNOWLEDGE);
    w(t, reg::STATUS, ACKNOWLEDGE | DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
    w(t, reg::QUEUE_SEL, sel);
    w(t, reg::QUEUE_NUM, size);
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
    let avail = base.wrapping_add(0x1000);
    let used = base.wrapping_add(0x2000);
    w(t, reg::QUEUE_DRIVER_LOW, avail as u32);
    w(t, reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
    w(t, reg::QUEUE_DEVICE_LOW, used as u32);
    w(t, reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
    w(t, reg::QUEUE_READY, 1);
}

const OK: u32 = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = transport();
    assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
    assert_eq!(r(&mut t, reg::VENDOR_ID), MMIO_VENDOR);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 0);
    assert_eq!(r(&mut t, reg::SHM_LEN_LOW), u32::MAX, "no shared memory");
    assert_eq!(t.kick_events().len(), 2);
}

#[test]
fn feature_negotiation() {
    let (mut t, seen) = transport();
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), FAKE_FEATURES as u32);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    negotiate(&mut t, VERSION_1 | 1 << 3);
    assert_eq!(r(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(seen.lock().unwrap().acked, Some(VERSION_1 | 1 << 3));
    // Features are frozen after FEATURES_OK.
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, 0);
    assert_eq!(t.acked_features, VERSION_1 | 1 << 3);
}

#[test]
fn features_not_offered_or_legacy_are_refused() {
    for bad in [VERSION_1 | 1 << 5, 1 << 3, VERSION_1 | 1 << 63] {
        let (mut t, seen) = transport();
        negotiate(&mut t, bad);
        assert_eq!(r(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER, "{bad:#x}");
        assert_eq!(seen.lock().unwrap().acked, None);
        // DRIVER_OK without FEATURES_OK goes nowhere.
        w(
            &mut t,
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        assert!(!t.is_activated());
    }
}

#[test]
fn queue_setup_activate_and_notify() {
    let (mut t, seen) = transport();
    negotiate(&mut t, VERSION_1);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 16);
    w(&mut t, reg::QUEUE_SEL, 2);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0, "no third queue");
    setup_queue(&mut t, 1, 8, 0x10000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    w(&mut t, reg::STATUS, OK);
    assert_eq!(r(&mut t, reg::STATUS), OK);
    assert!(t.is_activated());
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.activated, vec![(1, 8, 0x10000)], "only the ready queue");
    }
    // Queue registers are frozen once live.
    w(&mut t, reg::QUEUE_NUM, 4);
    assert_eq!(t.queues[1].queue.size(), 8);
    // A notify through the bus reaches the device's clone of the eventfd.
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    assert_eq!(seen.lock().unwrap().kicks[0].read().unwrap(), 1);
    w(&mut t, reg::QUEUE_NOTIFY, 7);
    // Interrupt status and ack.
    t.interrupt().trigger(INT_VRING).unwrap();
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_VRING);
    w(&mut t, reg::INTERRUPT_ACK, INT_VRING);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn config_space_is_forwarded() {
    let (mut t, seen) = transport();
    let mut b = [0u8; 1];
    t.read(reg::CONFIG + 2, &mut b);
    assert_eq!(b, [3]);
    let mut q = [0u8; 8];
    t.read(reg::CONFIG, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0807_0605_0403_0201);
    t.write(reg::CONFIG + 4, &[9, 9]);
    assert_eq!(seen.lock().unwrap().config_writes, vec![(4, vec![9, 9])]);
}

#[test]
fn status_machine_order() {
    let (mut t, _) = transport();
    w(&mut t, reg::STATUS, DRIVER);
    assert_eq!(r(&mut t, reg::STATUS), 0, "DRIVER before ACKNOWLEDGE");
    w(&mut t, reg::STATUS, ACKNOWLEDGE);
    w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(r(&mut t, reg::STATUS), ACKNOWLEDGE, "two steps at once");
    w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER);
    w(&mut t, reg::STATUS, ACKNOWLEDGE);
    assert_eq!(
        r(&mut t, reg::STATUS),
        ACKNOWLEDGE | DRIVER,
        "clearing a bit"
    );
    w(&mut t, reg::STATUS, ACKNOWLEDGE | DRIVER | FAILED);
    assert_eq!(r(&mut t, reg::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
}

#[test]
fn reset_clears_everything() {
    let (mut t, seen) = transport();
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x20000);
    w(&mut t, reg::STATUS, OK);
    assert!(t.is_activated());
    t.interrupt().set_status(INT_VRING);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(seen.lock().unwrap().resets, 1);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    w(&mut t, reg::QUEUE_SEL, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(t.acked_features, 0);
    // And it comes back up.
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x20000);
    w(&mut t, reg::STATUS, OK);
    assert!(t.is_activated());
    assert_eq!(seen.lock().unwrap().activated.len(), 2);
}

#[test]
fn device_that_cannot_restart_needs_reset() {
    let (mut t, _) = transport_with(false, false);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x20000);
    w(&mut t, reg::STATUS, OK);
    w(&mut t, reg::STATUS, 0);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x20000);
    w(&mut t, reg::STATUS, OK);
    assert!(!t.is_activated());
    assert_ne!(r(&mut t, reg::STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn failed_activation_needs_reset() {
    let (mut t, _) = transport_with(true, true);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, 0, 16, 0x20000);
    w(&mut t, reg::STATUS, OK);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, reg::STATUS), OK | DEVICE_NEEDS_RESET);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
}

/// Each hostile queue setup makes `DRIVER_OK` fail the device, never panic.
#[test]
fn hostile_queue_values() {
    type Setup = fn(&mut MmioTransport);
    let cases: &[(&str, Setup)] = &[
        ("size not a power of 2", |t| setup_queue(t, 0, 3, 0x10000)),
        ("size 0", |t| setup_queue(t, 0, 0, 0x10000)),
        ("size above max", |t| setup_queue(t, 1, 32, 0x10000)),
        ("size above u16", |t| setup_queue(t, 0, 0x1_0000, 0x10000)),
        ("rings beyond RAM", |t| setup_queue(t, 0, 16, 0xff000)),
        ("rings in the MMIO gap", |t| {
            setup_queue(t, 0, 16, 0xd000_0000)
        }),
        ("rings above 4 GiB", |t| {
            setup_queue(t, 0, 16, 0x1_0000_0000)
        }),
        ("rings at the top", |t| setup_queue(t, 0, 16, !0xfff)),
        ("misaligned descriptors", |t| {
            setup_queue(t, 0, 16, 0x10000);
            w(t, reg::QUEUE_DESC_LOW, 0x10008);
        }),
        ("ready = 2", |t| {
            setup_queue(t, 0, 16, 0x10000);
            w(t, reg::QUEUE_READY, 2);
            w(t, reg::QUEUE_READY, 1);
        }),
    ];
    for (what, setup) in cases {
        let (mut t, seen) = transport();
        negotiate(&mut t, VERSION_1);
        setup(&mut t);
        w(&mut t, reg::STATUS, OK);
        assert!(!t.is_activated(), "{what}");
        assert_ne!(r(&mut t, reg::STATUS) & DEVICE_NEEDS_RESET, 0, "{what}");
        assert!(seen.lock().unwrap().activated.is_empty(), "{what}");
        // A reset recovers.
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, VERSION_1);
        setup_queue(&mut t, 0, 16, 0x10000);
        w(&mut t, reg::STATUS, OK);
        assert!(t.is_activated(), "{what}: after reset");
    }
}

#[test]
fn no_ready_queue_needs_reset() {
    let (mut t, _) = transport();
    negotiate(&mut t, VERSION_1);
    w(&mut t, reg::STATUS, OK);
    assert_ne!(r(&mut t, reg::STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn hostile_accesses_are_ignored() {
    let (mut t, _) = transport();
    // Wrong widths: reads give zeros, writes do nothing.
    for len in [1usize, 2, 8] {
        let mut d = vec![0xaa; len];
        t.read(reg::MAGIC, &mut d);
        assert!(d.iter().all(|&b| b == 0), "width {len}");
        let v = vec![1u8; len];
        t.write(reg::STATUS, &v);
        assert_eq!(r(&mut t, reg::STATUS), 0, "width {len}");
    }
    // Unaligned, unknown, write-only, read-only.
    let mut d = [0u8; 4];
    t.read(reg::MAGIC + 1, &mut d);
    assert_eq!(d, [0; 4]);
    assert_eq!(r(&mut t, 0x0f0), 0);
    assert_eq!(r(&mut t, reg::QUEUE_NOTIFY), 0);
    w(&mut t, reg::MAGIC, 0);
    w(&mut t, reg::STATUS + 2, 1);
    assert_eq!(r(&mut t, reg::MAGIC), MMIO_MAGIC);
    // Queue registers before FEATURES_OK, and of queues that do not exist.
    setup_queue(&mut t, 0, 16, 0x10000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    negotiate(&mut t, VERSION_1);
    setup_queue(&mut t, u32::MAX, 16, 0x10000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
    w(&mut t, reg::QUEUE_NOTIFY, u32::MAX);
    // Feature selects far out.
    w(&mut t, reg::DEVICE_FEATURES_SEL, u32::MAX);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    // Config space at the very end of the window, and past it.
    let mut c = [0u8; 4];
    t.read(0xffc, &mut c);
    assert_eq!(c, [0; 4]);
    t.read(u64::MAX - 3, &mut c);
    t.write(u64::MAX - 3, &c);
}
