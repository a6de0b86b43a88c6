//! Virtio devices for the KVM VMM.
//!
//! A device implements [`VirtioDevice`]; the virtio-mmio transport
//! (`mmio.rs`) owns the guest-facing registers, the queues' configuration
//! and one kick [`EventFd`] per queue, and hands the device its queues on
//! `DRIVER_OK` through [`VirtioDevice::activate`]. The builder registers each
//! kick eventfd as a KVM ioeventfd on the transport's `QueueNotify` address
//! (datamatch = queue index) and the [`Interrupt`]'s eventfd as a KVM irqfd
//! on the device's GSI, so a device (or a vhost-user daemon given those
//! eventfds) never needs the monitor on its data path.
//!
//! | file | device |
//! | --- | --- |
//! | `mmio.rs` | the virtio-mmio transport (virtio 1.x, "version 2" registers) |
//! | `vhost_user.rs` | one generic frontend forwarding a device's queues to a vhost-user backend (virtiofsd, vhost-device-vsock) |
//! | `net.rs` | virtio-net on a host tap fd, in-process |
//! | `tap.rs` | opening or adopting that tap (`/dev/net/tun` ioctls) |

pub mod mmio;
pub mod vhost_user;

use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub mod net;
pub mod tap;

/// `InterruptStatus` bit: a used buffer was added to a queue.
pub const INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit: the device configuration changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device's interrupt line: the `InterruptStatus` register's bits plus
/// the eventfd the builder registers as an irqfd on the device's GSI.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    /// Bits `InterruptACK` does not clear (see [`Interrupt::set_status`]).
    sticky: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// A new line with no bits set.
    pub fn new() -> std::io::Result<Self> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            sticky: AtomicU32::new(0),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Sets `bits` in `InterruptStatus` and raises the line.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Sets `bits` for good, without raising the line: `InterruptACK` does
    /// not clear them, only [`Interrupt::clear`] (device reset) does. A
    /// vhost-user backend signals the irqfd directly and cannot set the
    /// register, so its frontend keeps [`INT_VRING`] set this way (a driver
    /// that finds no used buffer on an interrupt ignores it).
    pub fn set_status(&self, bits: u32) {
        self.sticky.fetch_or(bits, Ordering::SeqCst);
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Device reset: no bits set, none sticky.
    pub fn clear(&self) {
        self.sticky.store(0, Ordering::SeqCst);
        self.status.store(0, Ordering::SeqCst);
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// A driver's `InterruptACK` write.
    pub fn ack(&self, bits: u32) {
        let keep = self.sticky.load(Ordering::SeqCst);
        self.status.fetch_and(!(bits & !keep), Ordering::SeqCst);
    }

    /// The eventfd behind the line (irqfd; a vhost-user backend's call fd).
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// One queue the driver set up, as handed to a device on activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue's index in the device.
    pub index: usize,
    /// Its configuration, validated against guest memory by the transport.
    pub queue: virtio_queue::Queue,
    /// Written when the driver notifies the queue (a clone of the
    /// transport's ioeventfd).
    pub kick: EventFd,
}

/// A device could not start or failed; the transport marks it
/// `DEVICE_NEEDS_RESET` and the monitor carries on.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver's configuration is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A host resource failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The vhost-user backend refused or went away.
    #[error("vhost-user backend: {0}")]
    Backend(String),
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// The virtio device id (1 net, 19 vsock, 26 fs, ...).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn avail_features(&self) -> u64;
    /// The features the driver acknowledged (a subset of `avail_features`,
    /// checked by the transport), at `FEATURES_OK`.
    fn set_acked_features(&mut self, acked: u64);
    /// Reads the device configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; out-of-range writes are
    /// ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// `DRIVER_OK`: start serving `queues` (those the driver made ready).
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError>;
    /// The driver reset the device: stop serving queues. True when the
    /// device can be activated again.
    fn reset(&mut self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_status_and_line() {
        let i = Interrupt::new().unwrap();
        assert!(i.eventfd().read().is_err(), "nothing raised yet");
        i.trigger(INT_VRING).unwrap();
        assert_eq!(i.status(), INT_VRING);
        assert_eq!(i.eventfd().read().unwrap(), 1);
        i.set_status(INT_CONFIG);
        assert!(i.eventfd().read().is_err());
        i.ack(INT_VRING | INT_CONFIG);
        assert_eq!(i.status(), INT_CONFIG, "set_status bits are sticky");
        i.clear();
        assert_eq!(i.status(), 0);
        i.set_status(INT_VRING);
        i.trigger(INT_CONFIG).unwrap();
        i.ack(INT_VRING | INT_CONFIG);
        assert_eq!(i.status(), INT_VRING, "sticky bits survive an ack");
        i.clear();
        assert_eq!(i.status(), 0);
    }
}
