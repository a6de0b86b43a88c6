//! The virtio-mmio transport (virtio 1.x, register layout "version 2").
//!
//! [`MmioTransport`] is a [`BusDevice`] the builder puts in the MMIO window.
//! It owns the guest-facing registers, the queues' configuration (one
//! [`virtio_queue::Queue`] per queue) and one kick [`EventFd`] per queue,
//! and hands the device its queues on `DRIVER_OK`.
//!
//! Everything written here comes from the guest: a bad value (a queue size
//! that is not a power of two, rings outside RAM, features the device never
//! offered, an access of the wrong width) is logged at debug level and either
//! ignored or answered with `DEVICE_NEEDS_RESET`. Nothing here panics or
//! reaches beyond this device.

use std::sync::Arc;

use tracing::debug;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, DeviceError, Interrupt, VirtioDevice, INT_CONFIG};
use crate::bus::BusDevice;

/// `MagicValue`: "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version`: the virtio 1.x register layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` we report ("HUSK" would do as well; QEMU's is "QEMU").
pub const MMIO_VENDOR: u32 = 0x4b53_5548;

/// Register offsets in the window (virtio 1.2, 4.2.2), from virtio-bindings'
/// `virtio_mmio` (as bus offsets).
pub mod reg {
    use virtio_bindings::virtio_mmio as m;

    /// R: magic value.
    pub const MAGIC: u64 = m::VIRTIO_MMIO_MAGIC_VALUE as u64;
    /// R: version (2).
    pub const VERSION: u64 = m::VIRTIO_MMIO_VERSION as u64;
    /// R: device id.
    pub const DEVICE_ID: u64 = m::VIRTIO_MMIO_DEVICE_ID as u64;
    /// R: vendor id.
    pub const VENDOR_ID: u64 = m::VIRTIO_MMIO_VENDOR_ID as u64;
    /// R: 32 bits of the device features, selected by `DEVICE_FEATURES_SEL`.
    pub const DEVICE_FEATURES: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    /// W: which 32 bits `DEVICE_FEATURES` shows.
    pub const DEVICE_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    /// W: 32 bits of the driver's features, selected by `DRIVER_FEATURES_SEL`.
    pub const DRIVER_FEATURES: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    /// W: which 32 bits `DRIVER_FEATURES` sets.
    pub const DRIVER_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    /// W: the queue the queue registers refer to.
    pub const QUEUE_SEL: u64 = m::VIRTIO_MMIO_QUEUE_SEL as u64;
    /// R: the selected queue's largest size (0: no such queue).
    pub const QUEUE_NUM_MAX: u64 = m::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    /// W: the selected queue's size.
    pub const QUEUE_NUM: u64 = m::VIRTIO_MMIO_QUEUE_NUM as u64;
    /// RW: the selected queue is ready.
    pub const QUEUE_READY: u64 = m::VIRTIO_MMIO_QUEUE_READY as u64;
    /// W: notify a queue (value = queue index).
    pub const QUEUE_NOTIFY: u64 = m::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    /// R: interrupt status bits.
    pub const INTERRUPT_STATUS: u64 = m::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    /// W: acknowledge interrupt status bits.
    pub const INTERRUPT_ACK: u64 = m::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    /// RW: device status.
    pub const STATUS: u64 = m::VIRTIO_MMIO_STATUS as u64;
    /// W: descriptor table address, low 32 bits.
    pub const QUEUE_DESC_LOW: u64 = m::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    /// W: descriptor table address, high 32 bits.
    pub const QUEUE_DESC_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    /// W: available ring address, low 32 bits.
    pub const QUEUE_DRIVER_LOW: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    /// W: available ring address, high 32 bits.
    pub const QUEUE_DRIVER_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    /// W: used ring address, low 32 bits.
    pub const QUEUE_DEVICE_LOW: u64 = m::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    /// W: used ring address, high 32 bits.
    pub const QUEUE_DEVICE_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    /// W: shared memory region select (we have none).
    pub const SHM_SEL: u64 = m::VIRTIO_MMIO_SHM_SEL as u64;
    /// R: shared memory region length, low (all ones: no such region).
    pub const SHM_LEN_LOW: u64 = m::VIRTIO_MMIO_SHM_LEN_LOW as u64;
    /// R: shared memory region base, high.
    pub const SHM_BASE_HIGH: u64 = m::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
    /// R: configuration generation.
    pub const CONFIG_GENERATION: u64 = m::VIRTIO_MMIO_CONFIG_GENERATION as u64;
    /// RW: device configuration space starts here.
    pub const CONFIG: u64 = m::VIRTIO_MMIO_CONFIG as u64;
}

/// Device status bits (virtio 1.2, 2.1), from virtio-bindings'
/// `virtio_config`.
pub mod status {
    use virtio_bindings::virtio_config as c;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = c::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready: queues live.
    pub const DRIVER_OK: u32 = c::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = c::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error the driver must reset it for.
    pub const DEVICE_NEEDS_RESET: u32 = c::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = c::VIRTIO_CONFIG_S_FAILED;
}

/// One queue's driver-side configuration.
#[derive(Debug)]
struct QueueSlot {
    queue: Queue,
    /// A bad value was written to one of its registers since the last reset;
    /// `DRIVER_OK` with this queue ready fails the device.
    bad: bool,
}

/// The virtio-mmio register window of one device.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<QueueSlot>,
    kicks: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
    /// The device said after a reset that it cannot be activated again.
    dead: bool,
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`: one queue and one
    /// kick eventfd per entry of the device's `queue_max_sizes`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap) -> Result<Self, DeviceError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| DeviceError::Io { what, source }
        };
        let mut queues = Vec::new();
        let mut kicks = Vec::new();
        for &max in device.queue_max_sizes() {
            let queue = Queue::new(max).map_err(|e| {
                DeviceError::Invalid(format!("queue max size {max} is not usable: {e}"))
            })?;
            queues.push(QueueSlot { queue, bad: false });
            kicks.push(EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating a kick eventfd"))?);
        }
        let interrupt = Arc::new(Interrupt::new().map_err(io("creating the interrupt eventfd"))?);
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            kicks,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
            dead: false,
        })
    }

    /// One kick eventfd per queue, in queue order: the builder registers
    /// each as an ioeventfd on `window base + 0x50` with datamatch = index.
    pub fn kick_events(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device's interrupt line: the builder registers its eventfd as an
    /// irqfd on the device's GSI.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    fn selected(&mut self) -> Option<&mut QueueSlot> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.queue.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.queue.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(
                    offset,
                    "virtio-mmio: read of a write-only or unknown register"
                );
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
                    debug!(
                        status = self.status,
                        "virtio-mmio: feature write outside negotiation"
                    );
                    return;
                }
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    s => {
                        debug!(sel = s, "virtio-mmio: driver feature select out of range");
                        return;
                    }
                };
                self.acked_features =
                    (self.acked_features & !(0xffff_ffff_u64 << shift)) | (u64::from(v) << shift);
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_NOTIFY => match self.kicks.get(v as usize) {
                Some(k) => {
                    if let Err(e) = k.write(1) {
                        debug!(queue = v, error = %e, "virtio-mmio: cannot signal kick eventfd");
                    }
                }
                None => debug!(
                    queue = v,
                    "virtio-mmio: notify of a queue that does not exist"
                ),
            },
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            _ => debug!(
                offset,
                v, "virtio-mmio: write to a read-only or unknown register"
            ),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) {
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            debug!(
                status = self.status,
                offset, "virtio-mmio: queue setup outside FEATURES_OK"
            );
            return;
        }
        let sel = self.queue_sel;
        let Some(slot) = self.selected() else {
            debug!(
                queue = sel,
                "virtio-mmio: queue register of a queue that does not exist"
            );
            return;
        };
        let q = &mut slot.queue;
        let lo = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let hi = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let ok = match offset {
            reg::QUEUE_NUM => u16::try_from(v)
                .map_err(|_| ())
                .and_then(|n| q.try_set_size(n).map_err(|_| ()))
                .is_ok(),
            reg::QUEUE_READY => {
                q.set_ready(v == 1);
                v <= 1
            }
            reg::QUEUE_DESC_LOW => q
                .try_set_desc_table_address(GuestAddress(lo(q.desc_table())))
                .is_ok(),
            reg::QUEUE_DESC_HIGH => q
                .try_set_desc_table_address(GuestAddress(hi(q.desc_table())))
                .is_ok(),
            reg::QUEUE_DRIVER_LOW => q
                .try_set_avail_ring_address(GuestAddress(lo(q.avail_ring())))
                .is_ok(),
            reg::QUEUE_DRIVER_HIGH => q
                .try_set_avail_ring_address(GuestAddress(hi(q.avail_ring())))
                .is_ok(),
            reg::QUEUE_DEVICE_LOW => q
                .try_set_used_ring_address(GuestAddress(lo(q.used_ring())))
                .is_ok(),
            reg::QUEUE_DEVICE_HIGH => q
                .try_set_used_ring_address(GuestAddress(hi(q.used_ring())))
                .is_ok(),
            _ => true,
        };
        if !ok {
            debug!(
                queue = sel,
                offset, v, "virtio-mmio: bad queue register value"
            );
            slot.bad = true;
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        if v & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        let old = self.status;
        // The driver only ever adds bits, one step at a time.
        let added = v & !old;
        if v & old != old {
            debug!(old, new = v, "virtio-mmio: status write clears bits");
            return;
        }
        let next = match (old & !DEVICE_NEEDS_RESET, added) {
            (_, 0) => return,
            (0, ACKNOWLEDGE) => v,
            (ACKNOWLEDGE, DRIVER) => v,
            (x, FEATURES_OK) if x == ACKNOWLEDGE | DRIVER => {
                if let Err(why) = self.check_features() {
                    // Not setting FEATURES_OK is how the device refuses
                    // (the driver reads the status back).
                    debug!(
                        acked = self.acked_features,
                        why, "virtio-mmio: features refused"
                    );
                    return;
                }
                self.device.set_acked_features(self.acked_features);
                v
            }
            (x, DRIVER_OK) if x == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                if old & DEVICE_NEEDS_RESET != 0 {
                    debug!("virtio-mmio: DRIVER_OK on a device that needs a reset");
                    return;
                }
                self.status = v;
                self.activate();
                return;
            }
            _ => {
                debug!(old, new = v, "virtio-mmio: status transition out of order");
                return;
            }
        };
        self.status = next;
    }

    fn check_features(&self) -> Result<(), &'static str> {
        if self.acked_features & !self.device.avail_features() != 0 {
            return Err("features the device did not offer");
        }
        if self.acked_features & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err("VIRTIO_F_VERSION_1 not acknowledged");
        }
        Ok(())
    }

    fn activate(&mut self) {
        match self.prepare_queues() {
            Ok(queues) => {
                let r = self
                    .device
                    .activate(self.mem.clone(), self.interrupt.clone(), queues);
                match r {
                    Ok(()) => self.activated = true,
                    Err(e) => self.needs_reset(&e),
                }
            }
            Err(e) => self.needs_reset(&e),
        }
    }

    fn prepare_queues(&self) -> Result<Vec<ActiveQueue>, DeviceError> {
        if self.dead {
            return Err(DeviceError::Invalid(
                "the device cannot be activated after its reset".into(),
            ));
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut active = Vec::new();
        for (index, (slot, kick)) in self.queues.iter().zip(&self.kicks).enumerate() {
            if !slot.queue.ready() {
                continue;
            }
            if slot.bad || !slot.queue.is_valid(&self.mem) {
                return Err(DeviceError::Invalid(format!(
                    "queue {index}: bad size or rings outside guest memory"
                )));
            }
            let mut queue = Queue::try_from(slot.queue.state())
                .map_err(|e| DeviceError::Invalid(format!("queue {index}: {e}")))?;
            queue.set_event_idx(event_idx);
            let kick = kick.try_clone().map_err(|source| DeviceError::Io {
                what: "cloning a kick eventfd".into(),
                source,
            })?;
            active.push(ActiveQueue { index, queue, kick });
        }
        if active.is_empty() {
            return Err(DeviceError::Invalid("DRIVER_OK with no queue ready".into()));
        }
        Ok(active)
    }

    fn needs_reset(&mut self, e: &DeviceError) {
        debug!(error = %e, "virtio-mmio: device needs reset");
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(INT_CONFIG) {
            debug!(error = %e, "virtio-mmio: cannot raise the config interrupt");
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            self.dead = true;
        }
        self.activated = false;
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        for slot in &mut self.queues {
            slot.queue.reset();
            slot.bad = false;
        }
        for k in &self.kicks {
            // Drain a stale kick; an empty nonblocking eventfd just says so.
            let _ = k.read();
        }
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: register read not 4 bytes wide"
            );
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(
                offset,
                len = data.len(),
                "virtio-mmio: register write not 4 bytes wide"
            );
            return;
        };
        if offset & 3 != 0 {
            debug!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "mmio_fuzz.rs"]
mod fuzz;
