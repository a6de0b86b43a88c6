//! virtio-net on a host tap, in-process.
//!
//! [`Net`] is a [`VirtioDevice`] with one queue pair (0 = receive, 1 =
//! transmit) backed by a [`Tap`]. It offers `VIRTIO_F_VERSION_1`,
//! `VIRTIO_NET_F_MAC`, `VIRTIO_NET_F_MTU` and `VIRTIO_NET_F_STATUS` and no
//! offloads, so every frame both ways is complete and fully checksummed and
//! the 12-byte `virtio_net_hdr_v1` in front of it is all zeros (on receive,
//! `num_buffers` = 1).
//!
//! # Threads
//! [`VirtioDevice::activate`] starts one worker thread (`husk-net`) that
//! owns the queues and epolls four fds: the two kick eventfds, the tap and a
//! stop eventfd. A transmit kick drains the transmit queue into the tap, one
//! `writev` per chain straight from guest memory. A readable tap fills
//! receive chains; when the guest has none left the worker stops polling the
//! tap until the next receive kick, so frames wait in the tap's queue
//! instead of spinning the thread. Each batch raises [`INT_VRING`] unless
//! the driver suppressed interrupts (`EVENT_IDX` is not offered).
//! [`VirtioDevice::reset`] and drop stop and join the worker.
//!
//! # Validation
//! The worker trusts nothing in guest memory. Each chain is walked once: a
//! descriptor with the wrong direction (a writable one on transmit, a
//! read-only one on receive), a buffer outside guest RAM, a transmit chain
//! shorter than the header or longer than [`MAX_FRAME`], or a receive chain
//! too small for the frame at hand is returned to the guest as used with
//! length 0 and logged at debug; the frame, if any, is dropped. The guest's
//! transmit header is never passed on: the device sends its own zero header.
//! Head indices past the queue are skipped; loops and over-long chains end
//! at the queue size (virtio-queue's chain walk). An available index that
//! runs more than a queue ahead stops that queue (virtio-queue refuses it)
//! until the driver resets the device; the monitor is never affected.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{debug, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap::{Tap, VNET_HDR_LEN};
use super::{ActiveQueue, DeviceError, Interrupt, VirtioDevice, INT_VRING};
use crate::confine::{ThreadHook, ThreadRole};

/// Each queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// The largest frame with its header the device moves: 64 KiB of IP packet,
/// an Ethernet header with a VLAN tag, and the virtio-net header.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 18 + 65_535;

const RX: usize = 0;
const TX: usize = 1;
const CONFIG_LEN: usize = 12;

const TOKEN_STOP: u64 = 0;
const TOKEN_RX_KICK: u64 = 1;
const TOKEN_TX_KICK: u64 = 2;
const TOKEN_TAP: u64 = 3;

/// A virtio-net device on a tap.
#[derive(Debug)]
pub struct Net {
    tap: Arc<Tap>,
    mac: [u8; 6],
    mtu: u16,
    acked: u64,
    worker: Option<WorkerHandle>,
    confine: ThreadHook,
}

#[derive(Debug)]
struct WorkerHandle {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl Net {
    /// A device on `tap`, showing the guest `mac` and `mtu` (the tap's own
    /// MTU on the host side is the runtime's to set to match). Its worker
    /// thread is confined with `confine` first thing.
    pub fn new(tap: Tap, mac: [u8; 6], mtu: u16, confine: ThreadHook) -> Net {
        Net {
            tap: Arc::new(tap),
            mac,
            mtu,
            acked: 0,
            worker: None,
            confine,
        }
    }

    /// The features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn stop_worker(&mut self) -> bool {
        let Some(w) = self.worker.take() else {
            return true;
        };
        if let Err(e) = w.stop.write(1) {
            warn!(error = %e, "cannot signal the net worker to stop");
            return false;
        }
        w.thread.join().is_ok()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
    }

    fn set_acked_features(&mut self, acked: u64) {
        self.acked = acked & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Read-only for the driver in virtio 1.x (the MAC is writable only
        // in legacy devices).
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), DeviceError> {
        if self.worker.is_some() {
            return Err(DeviceError::Invalid("net device activated twice".into()));
        }
        let mut rx = None;
        let mut tx = None;
        for q in queues {
            match q.index {
                RX => rx = Some(q),
                TX => tx = Some(q),
                i => return Err(DeviceError::Invalid(format!("net has no queue {i}"))),
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(DeviceError::Invalid(
                "net needs both its receive and transmit queues".into(),
            ));
        };
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| DeviceError::Io { what, source }
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(io("net stop eventfd"))?;
        let epoll = Epoll::new().map_err(io("net epoll"))?;
        let worker = Worker {
            mem,
            interrupt,
            tap: self.tap.clone(),
            rx: rx.queue,
            tx: tx.queue,
            rx_kick: rx.kick,
            tx_kick: tx.kick,
            stop: stop.try_clone().map_err(io("net stop eventfd"))?,
            epoll,
            tap_polled: false,
            frame: vec![0; MAX_FRAME],
            confine: self.confine.clone(),
        };
        for (fd, token) in [
            (worker.stop.as_raw_fd(), TOKEN_STOP),
            (worker.rx_kick.as_raw_fd(), TOKEN_RX_KICK),
            (worker.tx_kick.as_raw_fd(), TOKEN_TX_KICK),
        ] {
            epoll_add(&worker.epoll, fd, token).map_err(io("net epoll"))?;
        }
        let thread = std::thread::Builder::new()
            .name("husk-net".into())
            .spawn(move || worker.run())
            .map_err(io("net worker thread"))?;
        self.worker = Some(WorkerHandle { stop, thread });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked = 0;
        self.stop_worker()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

fn epoll_add(epoll: &Epoll, fd: RawFd, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

/// Why a chain was returned unused.
#[derive(Debug, thiserror::Error)]
enum ChainError {
    #[error("descriptor {0} has the wrong direction")]
    Direction(usize),
    #[error("descriptor {index} ({addr:#x}+{len}) is outside guest memory")]
    Memory { index: usize, addr: u64, len: u32 },
    #[error("chain is empty or broken")]
    Empty,
    #[error("chain holds {0} bytes, beyond the limit")]
    TooLong(usize),
    #[error("chain holds {have} bytes, {need} needed")]
    TooShort { have: usize, need: usize },
    #[error("tap write failed")]
    Tap(#[source] io::Error),
}

/// The buffers of a chain, all of one direction and inside guest memory.
fn chain_buffers<'m>(
    mem: &'m GuestMemoryMmap,
    chain: DescriptorChain<&'m GuestMemoryMmap>,
    writable: bool,
    limit: usize,
) -> Result<(Vec<VolatileSlice<'m>>, usize), ChainError> {
    let mut bufs = Vec::new();
    let mut total = 0usize;
    // The chain iterator already ends at the queue size and at loops.
    for (index, desc) in chain.enumerate() {
        if desc.is_write_only() != writable {
            return Err(ChainError::Direction(index));
        }
        let len = desc.len() as usize;
        total = total.saturating_add(len);
        if total > limit {
            return Err(ChainError::TooLong(total));
        }
        if len == 0 {
            continue;
        }
        let slice = mem
            .get_slice(desc.addr(), len)
            .map_err(|_| ChainError::Memory {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            })?;
        bufs.push(slice);
    }
    if bufs.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok((bufs, total))
}

/// The device's side of the queues, on its own thread.
struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    tap: Arc<Tap>,
    rx: Queue,
    tx: Queue,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stop: EventFd,
    epoll: Epoll,
    tap_polled: bool,
    frame: Vec<u8>,
    confine: ThreadHook,
}

impl Worker {
    fn run(mut self) {
        // Confined before it reads a single descriptor.
        if let Err(e) = self.confine.enter(ThreadRole::NetWorker) {
            warn!("net worker: {e}; the device stops");
            return;
        }
        self.set_tap_polling(true);
        let mut events = [EpollEvent::default(); 4];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "net worker: epoll failed, device stops");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return,
                    TOKEN_RX_KICK => {
                        let _ = self.rx_kick.read();
                        self.set_tap_polling(true);
                        self.process_rx();
                    }
                    TOKEN_TX_KICK => {
                        let _ = self.tx_kick.read();
                        self.process_tx();
                    }
                    _ => self.process_rx(),
                }
            }
        }
    }

    fn set_tap_polling(&mut self, on: bool) {
        if self.tap_polled == on {
            return;
        }
        let fd = self.tap.as_fd().as_raw_fd();
        let res = if on {
            epoll_add(&self.epoll, fd, TOKEN_TAP)
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match res {
            Ok(()) => self.tap_polled = on,
            Err(e) => warn!(error = %e, on, "net worker: cannot change tap polling"),
        }
    }

    fn process_tx(&mut self) {
        let mut used = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            if let Err(e) = send_frame(&self.tap, &self.mem, chain) {
                debug!(error = %e, head, "net: transmit chain dropped");
            }
            used |= add_used(&mut self.tx, &self.mem, head, 0);
        }
        if used {
            notify(&mut self.tx, &self.mem, &self.interrupt);
        }
    }

    fn process_rx(&mut self) {
        let mut used = false;
        loop {
            let Some(chain) = self.rx.pop_descriptor_chain(&self.mem) else {
                // No buffers: leave frames in the tap until the next kick.
                self.set_tap_polling(false);
                break;
            };
            let head = chain.head_index();
            let (bufs, capacity) = match chain_buffers(&self.mem, chain, true, usize::MAX) {
                Ok(b) => b,
                Err(e) => {
                    debug!(error = %e, head, "net: receive chain returned unused");
                    used |= add_used(&mut self.rx, &self.mem, head, 0);
                    continue;
                }
            };
            let n = match self.tap.read(&mut self.frame) {
                Ok(n) => n,
                Err(e) => {
                    // Give the chain back for the next frame.
                    self.rx.set_next_avail(self.rx.next_avail().wrapping_sub(1));
                    if e.kind() != io::ErrorKind::WouldBlock {
                        warn!(error = %e, "net: tap read failed, waiting for a kick");
                        self.set_tap_polling(false);
                    }
                    break;
                }
            };
            let len = if n < VNET_HDR_LEN || n > capacity {
                let e = ChainError::TooShort {
                    have: capacity,
                    need: n,
                };
                debug!(error = %e, head, "net: received frame dropped");
                0
            } else {
                let frame = &mut self.frame[..n];
                frame[..10].fill(0);
                frame[10..12].copy_from_slice(&1u16.to_le_bytes());
                let mut off = 0;
                for b in &bufs {
                    let m = b.len().min(n - off);
                    b.subslice(0, m)
                        .map(|s| s.copy_from(&frame[off..off + m]))
                        .ok();
                    off += m;
                    if off == n {
                        break;
                    }
                }
                n as u32
            };
            used |= add_used(&mut self.rx, &self.mem, head, len);
        }
        if used {
            notify(&mut self.rx, &self.mem, &self.interrupt);
        }
    }
}

/// Writes one transmit chain to the tap: a zero header, then the frame
/// gathered from guest memory after the guest's header.
fn send_frame(
    tap: &Tap,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(), ChainError> {
    let (bufs, total) = chain_buffers(mem, chain, false, MAX_FRAME)?;
    if total < VNET_HDR_LEN {
        return Err(ChainError::TooShort {
            have: total,
            need: VNET_HDR_LEN,
        });
    }
    let hdr = [0u8; VNET_HDR_LEN];
    let mut parts = Vec::with_capacity(bufs.len());
    let mut skip = VNET_HDR_LEN;
    for b in &bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        parts.push(b.offset(skip).map_err(|_| ChainError::Empty)?);
        skip = 0;
    }
    let guards: Vec<_> = parts.iter().map(|p| (p.ptr_guard(), p.len())).collect();
    let mut iov = Vec::with_capacity(guards.len() + 1);
    iov.push(libc::iovec {
        iov_base: hdr.as_ptr() as *mut libc::c_void,
        iov_len: hdr.len(),
    });
    for (g, len) in &guards {
        iov.push(libc::iovec {
            iov_base: g.as_ptr() as *mut libc::c_void,
            iov_len: *len,
        });
    }
    // SAFETY: each iovec points into `hdr` or a guest-memory slice checked
    // by `get_slice`; both (and the mapping, held by `mem`) outlive the call.
    unsafe { tap.writev(&iov) }.map_err(ChainError::Tap)?;
    Ok(())
}

/// Returns `head` as used; false (logged) when the used ring is unusable.
fn add_used(q: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32) -> bool {
    match q.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, head, "net: cannot return a chain");
            false
        }
    }
}

fn notify(q: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
    if q.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(INT_VRING) {
            warn!(error = %e, "net: cannot raise the interrupt");
        }
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "net_fuzz.rs"]
mod fuzz;
