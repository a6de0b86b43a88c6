//! One generic vhost-user frontend: a [`VirtioDevice`] whose queues are
//! served by a backend daemon (vhost-device-vsock, virtiofsd) over its
//! vhost-user socket.
//!
//! The monitor stays off the data path: the backend maps guest RAM from the
//! memfd ([`crate::memory::create_guest_memory`]), waits on the
//! queues' kick eventfds (which the builder also registers as ioeventfds)
//! and signals the [`Interrupt`]'s eventfd (the VM's irqfd) itself.
//! Because the backend cannot set `InterruptStatus`, activation keeps
//! [`INT_VRING`] set for good ([`Interrupt::set_status`]).
//!
//! The configuration space is kept here (vsock: the guest CID; fs: the tag
//! and the request queue count), so no `CONFIG` protocol feature is needed.

use std::path::Path;
use std::sync::Arc;

use tracing::debug;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_ids::{VIRTIO_ID_FS, VIRTIO_ID_VSOCK};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{ActiveQueue, DeviceError, Interrupt, VirtioDevice, INT_VRING};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit, never shown to the guest.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// `VHOST_F_LOG_ALL`: dirty logging for migration, never shown to the guest.
const VHOST_F_LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
/// Bytes in a virtio-fs tag (config space).
pub const FS_TAG_LEN: usize = 36;
/// Queue size we offer for the vhost-user devices (the daemons' default).
pub const VHOST_QUEUE_SIZE: u16 = 256;

/// What kind of device a backend serves: the guest-visible side.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// For logs ("vsock", "fs").
    pub name: &'static str,
    /// The virtio device id.
    pub device_type: u32,
    /// The largest size of each queue (the length is the queue count).
    pub queue_sizes: Vec<u16>,
    /// The device configuration space, read-only to the guest.
    pub config: Vec<u8>,
}

impl DeviceSpec {
    /// vsock: rx, tx and event queues; config = `guest_cid` (le64).
    pub fn vsock(guest_cid: u64) -> Self {
        DeviceSpec {
            name: "vsock",
            device_type: VIRTIO_ID_VSOCK,
            queue_sizes: vec![VHOST_QUEUE_SIZE; 3],
            config: guest_cid.to_le_bytes().to_vec(),
        }
    }

    /// virtio-fs with one hiprio queue and `request_queues` request queues;
    /// config = `tag` (NUL padded to 36 bytes) + `num_request_queues` (le32).
    pub fn fs(tag: &str, request_queues: u16) -> Result<Self, DeviceError> {
        if tag.is_empty() || tag.len() > FS_TAG_LEN || tag.contains('\0') {
            return Err(DeviceError::Invalid(format!(
                "virtio-fs tag {tag:?} must be 1 to {FS_TAG_LEN} bytes without NUL"
            )));
        }
        if request_queues == 0 {
            return Err(DeviceError::Invalid(
                "virtio-fs needs a request queue".into(),
            ));
        }
        let mut config = vec![0u8; FS_TAG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config.extend_from_slice(&u32::from(request_queues).to_le_bytes());
        Ok(DeviceSpec {
            name: "fs",
            device_type: VIRTIO_ID_FS,
            queue_sizes: vec![VHOST_QUEUE_SIZE; 1 + usize::from(request_queues)],
            config,
        })
    }
}

fn backend_err(what: &str) -> impl FnOnce(vhost::Error) -> DeviceError + '_ {
    move |e| DeviceError::Backend(format!("{what}: {e}"))
}

/// A virtio device served by a vhost-user backend.
pub struct VhostUserDevice {
    spec: DeviceSpec,
    frontend: Frontend,
    /// What the backend offers, `VHOST_USER_F_PROTOCOL_FEATURES` included.
    backend_features: u64,
    acked_features: u64,
    protocol: bool,
    /// The backend acknowledges every message.
    reply_ack: bool,
    /// Queue indices handed to the backend at activation.
    started: Vec<usize>,
    /// Kept alive while the backend uses them.
    active: Option<(Arc<Interrupt>, Vec<ActiveQueue>)>,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("spec", &self.spec)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Connects to the backend listening on `socket` and negotiates what
    /// can be negotiated before the guest comes: ownership, the backend's
    /// features and (when offered) the protocol features.
    pub fn connect(socket: &Path, spec: DeviceSpec) -> Result<Self, DeviceError> {
        let mut frontend =
            Frontend::connect(socket, spec.queue_sizes.len() as u64).map_err(|e| {
                DeviceError::Backend(format!("connecting to {}: {e}", socket.display()))
            })?;
        frontend.set_owner().map_err(backend_err("SET_OWNER"))?;
        let backend_features = frontend
            .get_features()
            .map_err(backend_err("GET_FEATURES"))?;
        let protocol = backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut reply_ack = false;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(backend_err("GET_PROTOCOL_FEATURES"))?;
            // Config space is ours and there is one memory table, so only
            // MQ (we know about several queues) and REPLY_ACK (each message
            // is acknowledged, so errors surface and activation is done
            // when `activate` returns) are asked for.
            let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            let acked = offered & wanted;
            frontend
                .set_protocol_features(acked)
                .map_err(backend_err("SET_PROTOCOL_FEATURES"))?;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                reply_ack = true;
            }
        }
        debug!(
            device = spec.name,
            backend_features, "vhost-user backend connected"
        );
        Ok(VhostUserDevice {
            spec,
            frontend,
            backend_features,
            acked_features: 0,
            protocol,
            reply_ack,
            started: Vec::new(),
            active: None,
        })
    }

    /// A vsock device on a vhost-device-vsock socket.
    pub fn vsock(socket: &Path, guest_cid: u64) -> Result<Self, DeviceError> {
        Self::connect(socket, DeviceSpec::vsock(guest_cid))
    }

    /// A virtio-fs device with one request queue on a virtiofsd socket.
    pub fn fs(socket: &Path, tag: &str) -> Result<Self, DeviceError> {
        Self::connect(socket, DeviceSpec::fs(tag, 1)?)
    }

    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        interrupt: &Interrupt,
        queues: &[ActiveQueue],
    ) -> Result<(), DeviceError> {
        let mut features = self.acked_features;
        if self.protocol {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(features)
            .map_err(backend_err("SET_FEATURES"))?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend_err("guest memory is not file backed"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(backend_err("SET_MEM_TABLE"))?;
        for aq in queues {
            let (i, q) = (aq.index, &aq.queue);
            // The rings were validated by the transport; the backend wants
            // them as addresses in our mapping of guest RAM.
            let hva = |gpa: u64| {
                mem.get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|e| DeviceError::Invalid(format!("queue {i}: ring at {gpa:#x}: {e}")))
            };
            let cfg = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: hva(q.desc_table())?,
                used_ring_addr: hva(q.used_ring())?,
                avail_ring_addr: hva(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(backend_err("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_base(i, q.next_avail())
                .map_err(backend_err("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_addr(i, &cfg)
                .map_err(backend_err("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_call(i, interrupt.eventfd())
                .map_err(backend_err("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &aq.kick)
                .map_err(backend_err("SET_VRING_KICK"))?;
            self.started.push(i);
        }
        if self.protocol {
            for aq in queues {
                self.frontend
                    .set_vring_enable(aq.index, true)
                    .map_err(backend_err("SET_VRING_ENABLE"))?;
            }
        }
        if !self.reply_ack {
            // Without acks the messages above may still be queued in the
            // backend: a driver kick that its worker sees before the ring is
            // enabled is consumed and lost. A request with a reply is a
            // barrier (the backend handles messages in order).
            self.frontend
                .get_features()
                .map_err(backend_err("GET_FEATURES"))?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), DeviceError> {
        let mut result = Ok(());
        for i in std::mem::take(&mut self.started) {
            if self.protocol {
                if let Err(e) = self.frontend.set_vring_enable(i, false) {
                    result = Err(backend_err("SET_VRING_ENABLE")(e));
                }
            }
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = self.frontend.get_vring_base(i) {
                result = Err(backend_err("GET_VRING_BASE")(e));
            }
        }
        self.active = None;
        result
    }
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.spec.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.spec.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.backend_features & !(VHOST_USER_F_PROTOCOL_FEATURES | VHOST_F_LOG_ALL)
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked_features = acked & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = at
                .and_then(|a| self.spec.config.get(a))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        debug!(
            device = self.spec.name,
            offset,
            len = data.len(),
            "vhost-user: config is read-only"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        if let Err(e) = self.start(&mem, &interrupt, &queues) {
            // Leave the backend with no half-started rings.
            let _ = self.stop();
            return Err(e);
        }
        interrupt.set_status(INT_VRING);
        self.active = Some((interrupt, queues));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        match self.stop() {
            Ok(()) => true,
            Err(e) => {
                debug!(device = self.spec.name, error = %e, "vhost-user: stopping the rings failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let v = DeviceSpec::vsock(3);
        assert_eq!(v.device_type, 19);
        assert_eq!(v.queue_sizes.len(), 3);
        assert_eq!(v.config, 3u64.to_le_bytes());
        let f = DeviceSpec::fs("share", 1).unwrap();
        assert_eq!(f.device_type, 26);
        assert_eq!(f.queue_sizes.len(), 2);
        assert_eq!(f.config.len(), 40);
        assert_eq!(&f.config[..6], b"share\0");
        assert_eq!(f.config[36..], 1u32.to_le_bytes());
        assert!(DeviceSpec::fs("", 1).is_err());
        assert!(DeviceSpec::fs(&"x".repeat(37), 1).is_err());
        assert!(DeviceSpec::fs("a", 0).is_err());
        assert!(DeviceSpec::fs(&"x".repeat(36), 1).is_ok());
    }

    #[test]
    fn connect_to_nothing_is_a_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = VhostUserDevice::vsock(&dir.path().join("none.sock"), 3).unwrap_err();
        assert!(matches!(e, DeviceError::Backend(_)), "{e}");
    }
}
