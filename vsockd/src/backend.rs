//! The vhost-user side: the three virtio-vsock queues (RX 0, TX 1,
//! event 2), the device config (the guest CID), and the glue between the
//! queues and the [`Muxer`].
//!
//! Everything runs on `vhost-user-backend`'s one vring worker thread: the
//! queue kicks and the muxer's epoll fd (registered as [`HOST_EVENT`]) all
//! arrive as `handle_event` calls.

use std::io;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::muxer::Muxer;
use crate::packet::{read_tx, rx_capacity, write_rx, HEADER_SIZE};

/// RX queue index (device to driver).
pub const RX: u16 = 0;
/// TX queue index (driver to device).
pub const TX: u16 = 1;
/// Event queue index (unused: no transport resets without migration).
pub const EVT: u16 = 2;
/// `handle_event` id of the muxer's epoll fd (above the queues and the
/// library's exit event).
pub const HOST_EVENT: u16 = 4;
/// The largest queue the frontend may set up.
const QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// The vsock device of one guest.
#[derive(Debug)]
pub struct VsockBackend {
    guest_cid: u64,
    /// The connections.
    pub muxer: Muxer,
    mem: Option<Mem>,
    exit: (EventConsumer, EventNotifier),
}

impl VsockBackend {
    /// A device for guest `guest_cid` serving `muxer`'s connections.
    pub fn new(guest_cid: u64, muxer: Muxer) -> io::Result<Self> {
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        Ok(VsockBackend {
            guest_cid,
            muxer,
            mem: None,
            exit,
        })
    }

    /// Moves TX packets to the muxer.
    fn process_tx(&mut self, vring: &VringRwLock, mem: &Mem) -> io::Result<()> {
        let mut used = false;
        loop {
            let chain = {
                let mut state = vring.get_mut();
                state.get_queue_mut().pop_descriptor_chain(mem.memory())
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            match read_tx(chain) {
                Ok((hdr, payload)) => {
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    self.muxer.guest_packet(&hdr, &payload);
                }
                Err(e) => {
                    tracing::debug!("dropping a TX chain: {e}");
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                }
            }
            used = true;
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Fills RX buffers with the muxer's packets while both last.
    fn process_rx(&mut self, vring: &VringRwLock, mem: &Mem) -> io::Result<()> {
        let mut used = false;
        while self.muxer.has_packet() {
            let chain = {
                let mut state = vring.get_mut();
                state.get_queue_mut().pop_descriptor_chain(mem.memory())
            };
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let written = match rx_capacity(&chain) {
                Ok(cap) if cap >= HEADER_SIZE => match self.muxer.next_packet(cap - HEADER_SIZE) {
                    Some((hdr, payload)) => write_rx(&chain, &hdr, &payload).unwrap_or_else(|e| {
                        tracing::warn!("writing an RX packet: {e}");
                        0
                    }),
                    None => {
                        // Nothing due after all: give the buffer back.
                        vring.get_mut().get_queue_mut().go_to_previous_position();
                        break;
                    }
                },
                Ok(cap) => {
                    tracing::debug!(cap, "RX buffer too small");
                    0
                }
                Err(e) => {
                    tracing::debug!("dropping an RX chain: {e}");
                    0
                }
            };
            vring.add_used(head, written).map_err(io::Error::other)?;
            used = true;
        }
        if used {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackendMut for VsockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // VIRTIO_RING_F_EVENT_IDX is not offered.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.guest_cid.to_le_bytes();
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        config[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn reset_device(&mut self) {
        self.muxer.reset();
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx, _evt] = vrings else {
            return Err(io::Error::other(format!("{} vrings, want 3", vrings.len())));
        };
        if device_event == HOST_EVENT {
            // Served even before the frontend sent a memory table: the
            // epoll fd is level-triggered and would wake this thread again
            // and again. What it makes due waits for the RX queue.
            self.muxer.host_events();
        }
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        match device_event {
            RX | HOST_EVENT => {}
            TX => self.process_tx(tx, &mem)?,
            EVT => return Ok(()),
            other => return Err(io::Error::other(format!("unknown event {other}"))),
        }
        self.process_rx(rx, &mem)
    }
}
