use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const READ: u16 = 0;
const WRITE: u16 = 2; // VRING_DESC_F_WRITE

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn hdr(len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 1000,
        dst_port: 1234,
        len,
        type_: TYPE_STREAM,
        op: op::RW,
        flags: 0,
        buf_alloc: 4096,
        fwd_cnt: 7,
    }
}

#[test]
fn header_round_trips_little_endian() {
    let h = hdr(5);
    let b = h.encode();
    assert_eq!(&b[24..28], &5u32.to_le_bytes());
    assert_eq!(&b[30..32], &op::RW.to_le_bytes());
    assert_eq!(Header::decode(&b), h);
}

#[test]
fn tx_payload_split_over_several_descriptors() {
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let data: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
    m.write_slice(&hdr(9000).encode(), GuestAddress(0x10000))
        .unwrap();
    // Three payload descriptors of uneven sizes, plus one past the payload.
    m.write_slice(&data[..1000], GuestAddress(0x20000)).unwrap();
    m.write_slice(&data[1000..5096], GuestAddress(0x30000))
        .unwrap();
    m.write_slice(&data[5096..], GuestAddress(0x40000)).unwrap();
    let chain = q
        .build_desc_chain(&[
            desc(0x10000, HEADER_SIZE as u32, READ),
            desc(0x20000, 1000, READ),
            desc(0x30000, 4096, READ),
            desc(0x40000, 8000, READ),
            desc(0x50000, 100, WRITE),
        ])
        .unwrap();
    let (h, p) = read_tx(chain).unwrap();
    assert_eq!(h, hdr(9000));
    assert_eq!(p, data);
}

#[test]
fn tx_header_and_payload_in_one_descriptor_or_header_split() {
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let mut bytes = hdr(3).encode().to_vec();
    bytes.extend_from_slice(b"abc");
    m.write_slice(&bytes, GuestAddress(0x10000)).unwrap();
    let chain = q
        .build_desc_chain(&[desc(0x10000, bytes.len() as u32, READ)])
        .unwrap();
    assert_eq!(read_tx(chain).unwrap(), (hdr(3), b"abc".to_vec()));

    // The header itself over two descriptors, the payload after it in the second.
    m.write_slice(&bytes[..10], GuestAddress(0x20000)).unwrap();
    m.write_slice(&bytes[10..], GuestAddress(0x30000)).unwrap();
    let chain = q
        .build_desc_chain(&[
            desc(0x20000, 10, READ),
            desc(0x30000, bytes.len() as u32 - 10, READ),
        ])
        .unwrap();
    assert_eq!(read_tx(chain).unwrap(), (hdr(3), b"abc".to_vec()));
}

#[test]
fn tx_refuses_bad_chains() {
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    m.write_slice(&hdr(100).encode(), GuestAddress(0x10000))
        .unwrap();

    let chain = q.build_desc_chain(&[desc(0x10000, 20, READ)]).unwrap();
    assert_eq!(read_tx(chain), Err(PacketError::ShortHeader { got: 20 }));

    let chain = q
        .build_desc_chain(&[desc(0x10000, 44, READ), desc(0x20000, 60, READ)])
        .unwrap();
    assert_eq!(
        read_tx(chain),
        Err(PacketError::ShortPayload { want: 100, got: 60 })
    );

    let chain = q
        .build_desc_chain(&[desc(0x10000, 44, READ), desc(0x20000, 100, WRITE)])
        .unwrap();
    assert_eq!(
        read_tx(chain),
        Err(PacketError::WrongDirection { index: 1 })
    );

    m.write_slice(&hdr(MAX_PAYLOAD + 1).encode(), GuestAddress(0x10000))
        .unwrap();
    let chain = q
        .build_desc_chain(&[desc(0x10000, 44, READ), desc(0x20000, u32::MAX, READ)])
        .unwrap();
    assert_eq!(read_tx(chain), Err(PacketError::TooLong(MAX_PAYLOAD + 1)));

    // A payload descriptor outside guest memory.
    m.write_slice(&hdr(100).encode(), GuestAddress(0x10000))
        .unwrap();
    let chain = q
        .build_desc_chain(&[desc(0x10000, 44, READ), desc(0x1_0000_0000, 100, READ)])
        .unwrap();
    assert!(matches!(
        read_tx(chain),
        Err(PacketError::BadAddress {
            addr: 0x1_0000_0000,
            ..
        })
    ));
}

#[test]
fn rx_scatters_header_and_payload() {
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let chain = q
        .build_desc_chain(&[desc(0x10000, 30, WRITE), desc(0x20000, 4096, WRITE)])
        .unwrap();
    assert_eq!(rx_capacity(&chain), Ok(30 + 4096));
    let payload = vec![0xa5u8; 1000];
    let n = write_rx(&chain, &hdr(0), &payload).unwrap();
    assert_eq!(n as usize, HEADER_SIZE + 1000);
    let mut b = [0u8; HEADER_SIZE];
    m.read_slice(&mut b[..30], GuestAddress(0x10000)).unwrap();
    m.read_slice(&mut b[30..], GuestAddress(0x20000)).unwrap();
    assert_eq!(Header::decode(&b), hdr(1000));
    let mut p = vec![0u8; 1000];
    m.read_slice(&mut p, GuestAddress(0x20000 + 14)).unwrap();
    assert_eq!(p, payload);
}

#[test]
fn rx_refuses_bad_chains() {
    let m = mem();
    let q = MockSplitQueue::new(&m, 16);
    let chain = q
        .build_desc_chain(&[desc(0x10000, 44, WRITE), desc(0x20000, 10, READ)])
        .unwrap();
    assert_eq!(
        rx_capacity(&chain),
        Err(PacketError::WrongDirection { index: 1 })
    );
    let chain = q.build_desc_chain(&[desc(0x10000, 50, WRITE)]).unwrap();
    assert_eq!(rx_capacity(&chain), Ok(50));
    assert_eq!(
        write_rx(&chain, &hdr(0), &[0u8; 10]),
        Err(PacketError::NoRoom {
            capacity: 50,
            need: 54
        })
    );
    // A guest-sized descriptor does not make the capacity unbounded.
    let chain = q
        .build_desc_chain(&[
            desc(0x10000, u32::MAX, WRITE),
            desc(0x20000, u32::MAX, WRITE),
        ])
        .unwrap();
    assert_eq!(rx_capacity(&chain), Ok(HEADER_SIZE + MAX_PAYLOAD as usize));
}
