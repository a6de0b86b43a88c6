//! The guest's virtio devices for a [`VmConfig`]: virtio-vsock and one
//! virtio-fs per share, each a vhost-user frontend on its daemon's socket,
//! and one in-process virtio-net per tap fd; each behind its own virtio-mmio transport in the next register window
//! with the next GSI. The builder registers the transports' kick eventfds as
//! ioeventfds and their interrupt eventfds as irqfds (see
//! [`crate::Machine::add_mmio_device`]).

use std::sync::{Arc, Mutex};

use husk_vmm_contract::config::VmConfig;
use vm_memory::GuestMemoryMmap;

use crate::builder::{MmioDevice, VmmError};
use crate::confine::ThreadHook;
use crate::memory::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::virtio::mmio::MmioTransport;
use crate::virtio::net::Net;
use crate::virtio::tap::Tap;
use crate::virtio::vhost_user::VhostUserDevice;
use crate::virtio::{DeviceError, VirtioDevice};

/// The IOAPIC's last input pin; virtio GSIs count up from
/// [`VIRTIO_IRQ_BASE`] to it.
const LAST_GSI: u32 = 23;

/// Puts `devices` behind transports, in order, at consecutive windows and
/// GSIs.
pub fn place(
    devices: Vec<Box<dyn VirtioDevice>>,
    mem: &GuestMemoryMmap,
) -> Result<Vec<MmioDevice>, VmmError> {
    let io = |what: &'static str| {
        move |source| {
            VmmError::Device(DeviceError::Io {
                what: what.into(),
                source,
            })
        }
    };
    let mut placed = Vec::with_capacity(devices.len());
    for (i, device) in devices.into_iter().enumerate() {
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let gsi = VIRTIO_IRQ_BASE.saturating_add(i);
        if gsi > LAST_GSI {
            return Err(VmmError::Invalid(format!(
                "too many virtio devices: at most {}",
                LAST_GSI - VIRTIO_IRQ_BASE + 1
            )));
        }
        let transport = MmioTransport::new(device, mem.clone())?;
        let mut ioevents = Vec::new();
        for (q, kick) in transport.kick_events().iter().enumerate() {
            let q = u32::try_from(q).unwrap_or(u32::MAX);
            ioevents.push((
                kick.try_clone().map_err(io("cannot dup a kick eventfd"))?,
                q,
            ));
        }
        let irq = transport
            .interrupt()
            .eventfd()
            .try_clone()
            .map_err(io("cannot dup an interrupt eventfd"))?;
        placed.push(MmioDevice {
            device: Arc::new(Mutex::new(transport)),
            base: VIRTIO_MMIO_BASE + u64::from(i) * VIRTIO_MMIO_SIZE,
            ioevents,
            irq,
            gsi,
        });
    }
    Ok(placed)
}

/// The devices `cfg` asks for, connected to the daemons `Vm::start`
/// started: vsock first, then the shares, then the taps, in order. Each
/// net worker is confined with `confine`.
pub fn from_config(
    cfg: &VmConfig,
    confine: &ThreadHook,
) -> Result<Vec<Box<dyn VirtioDevice>>, VmmError> {
    let mut v: Vec<Box<dyn VirtioDevice>> = vec![Box::new(VhostUserDevice::vsock(
        &cfg.vsock_backend_socket(),
        u64::from(cfg.vsock.guest_cid),
    )?)];
    for share in &cfg.shares {
        v.push(Box::new(VhostUserDevice::fs(
            &cfg.fs_backend_socket(&share.tag),
            &share.tag,
        )?));
    }
    for (i, n) in cfg.net.iter().enumerate() {
        let bad = |why: String| VmmError::Invalid(format!("net[{i}]: {why}"));
        // SAFETY: husk-vmm's `Vm::start` checked that the fd is open in this process
        // (`claim_net_fds`); it is only borrowed to be duplicated here.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n.tap_fd) }
            .try_clone_to_owned()
            .map_err(|e| bad(format!("cannot dup tap fd {}: {e}", n.tap_fd)))?;
        let tap = Tap::from_fd(fd).map_err(|e| bad(e.to_string()))?;
        let mac = n
            .mac_bytes()
            .ok_or_else(|| bad(format!("bad mac {:?}", n.mac)))?;
        let mtu = u16::try_from(n.mtu).map_err(|_| bad(format!("mtu {} too large", n.mtu)))?;
        v.push(Box::new(Net::new(tap, mac, mtu, confine.clone())));
    }
    Ok(v)
}
