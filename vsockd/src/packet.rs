//! The virtio-vsock packet header and the descriptor chains that carry it.
//!
//! A TX chain (driver to device) holds the 44-byte header followed by the
//! payload, split over any number of device-readable descriptors in any
//! way: Linux 6.12 puts the header and payload in one descriptor or spreads
//! a large payload over several (one per page fragment of its skb). An RX
//! chain (device to driver) is a set of device-writable descriptors the
//! header and payload are scattered over in order.
//!
//! Everything here comes from the guest and is checked: descriptor
//! direction, the header's presence, the payload length against
//! [`MAX_PAYLOAD`] and against what the chain holds. Guest memory is only
//! read or written through `vm-memory`'s bounds-checked accessors.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// The largest payload accepted in one TX packet (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `VIRTIO_VSOCK_OP_*`.
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset.
    pub const RST: u16 = 3;
    /// Half or full close (`flags` say which).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// Unsolicited credit information.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `struct virtio_vsock_hdr`, decoded (all fields little-endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (shutdown flags for `SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever.
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes a header from its wire form.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the header in its wire form.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A descriptor chain that is not a valid vsock packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// A TX descriptor the device may only write, or an RX one it may only read.
    #[error("descriptor {index} of the chain has the wrong direction")]
    WrongDirection {
        /// Position of the descriptor in the chain.
        index: usize,
    },
    /// The chain ends before the 44-byte header does.
    #[error("the chain holds {got} bytes, shorter than the {HEADER_SIZE}-byte header")]
    ShortHeader {
        /// Bytes the chain held.
        got: usize,
    },
    /// The header's `len` is over [`MAX_PAYLOAD`].
    #[error("header len {0} is over the {MAX_PAYLOAD}-byte limit")]
    TooLong(u32),
    /// The chain ends before the payload the header announces does.
    #[error("header len {want} but the chain holds only {got} payload bytes")]
    ShortPayload {
        /// The header's `len`.
        want: u32,
        /// Payload bytes in the chain.
        got: usize,
    },
    /// A descriptor's address range is not in guest memory.
    #[error("descriptor at {addr:#x} (+{len}) is outside guest memory")]
    BadAddress {
        /// Guest physical address.
        addr: u64,
        /// Length accessed.
        len: usize,
    },
    /// The packet does not fit in the RX chain.
    #[error("the RX chain holds {capacity} bytes, the packet needs {need}")]
    NoRoom {
        /// Bytes the chain can take.
        capacity: usize,
        /// Bytes the packet needs.
        need: usize,
    },
}

fn read_at<M: GuestMemory + ?Sized>(
    mem: &M,
    buf: &mut [u8],
    addr: GuestAddress,
) -> Result<(), PacketError> {
    mem.read_slice(buf, addr)
        .map_err(|_| PacketError::BadAddress {
            addr: addr.raw_value(),
            len: buf.len(),
        })
}

/// Reads the header and payload of a TX chain. Descriptors past the
/// payload are ignored; the payload of any op but `RW` is still read (and
/// bounded) but means nothing.
pub fn read_tx<M>(chain: DescriptorChain<M>) -> Result<(Header, Vec<u8>), PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut hdr_buf = [0u8; HEADER_SIZE];
    let mut got = 0usize;
    let mut header: Option<Header> = None;
    let mut payload = Vec::new();
    for (index, desc) in chain.clone().enumerate() {
        if desc.is_write_only() {
            return Err(PacketError::WrongDirection { index });
        }
        let mut addr = desc.addr();
        let mut len = desc.len() as usize;
        if header.is_none() {
            let n = len.min(HEADER_SIZE - got);
            read_at(mem, &mut hdr_buf[got..got + n], addr)?;
            got += n;
            len -= n;
            addr = addr.checked_add(n as u64).ok_or(PacketError::BadAddress {
                addr: addr.raw_value(),
                len: n,
            })?;
            if got < HEADER_SIZE {
                continue;
            }
            let h = Header::decode(&hdr_buf);
            if h.len > MAX_PAYLOAD {
                return Err(PacketError::TooLong(h.len));
            }
            payload.reserve_exact(h.len as usize);
            header = Some(h);
        }
        let Some(h) = header else { continue };
        let want = h.len as usize - payload.len();
        let n = len.min(want);
        if n > 0 {
            let start = payload.len();
            payload.resize(start + n, 0);
            read_at(mem, &mut payload[start..], addr)?;
        }
        if payload.len() == h.len as usize {
            break;
        }
    }
    let Some(h) = header else {
        return Err(PacketError::ShortHeader { got });
    };
    if payload.len() < h.len as usize {
        return Err(PacketError::ShortPayload {
            want: h.len,
            got: payload.len(),
        });
    }
    Ok((h, payload))
}

/// The bytes an RX chain can take (capped at header + [`MAX_PAYLOAD`]),
/// checking that every descriptor is device-writable.
pub fn rx_capacity<M>(chain: &DescriptorChain<M>) -> Result<usize, PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let cap = HEADER_SIZE + MAX_PAYLOAD as usize;
    let mut total = 0usize;
    for (index, desc) in chain.clone().enumerate() {
        if !desc.is_write_only() {
            return Err(PacketError::WrongDirection { index });
        }
        total = total.saturating_add(desc.len() as usize);
        if total >= cap {
            return Ok(cap);
        }
    }
    Ok(total)
}

/// Writes `hdr` (with `len` set to the payload's) and `payload` over an RX
/// chain; returns the bytes written, for the used ring.
pub fn write_rx<M>(
    chain: &DescriptorChain<M>,
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mem = chain.memory();
    let mut h = *hdr;
    h.len = payload.len() as u32;
    let head = h.encode();
    let need = HEADER_SIZE + payload.len();
    let mut sources: [&[u8]; 2] = [&head, payload];
    let mut done = 0usize;
    for (index, desc) in chain.clone().enumerate() {
        if done == need {
            break;
        }
        if !desc.is_write_only() {
            return Err(PacketError::WrongDirection { index });
        }
        let mut addr = desc.addr();
        let mut room = desc.len() as usize;
        for src in sources.iter_mut() {
            if room == 0 || src.is_empty() {
                continue;
            }
            let n = room.min(src.len());
            mem.write_slice(&src[..n], addr)
                .map_err(|_| PacketError::BadAddress {
                    addr: addr.raw_value(),
                    len: n,
                })?;
            *src = &src[n..];
            room -= n;
            done += n;
            addr = addr.checked_add(n as u64).ok_or(PacketError::BadAddress {
                addr: addr.raw_value(),
                len: n,
            })?;
        }
    }
    if done < need {
        return Err(PacketError::NoRoom {
            capacity: done,
            need,
        });
    }
    Ok(need as u32)
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
