//! The test plays the guest driver with `MockSplitQueue` rings in memfd
//! guest memory. Most tests stand a datagram socket pair in for the tap
//! (one datagram = one frame with its header); one uses a real tap in a
//! network namespace of its own.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::confine::ThreadHook;
use crate::memory::create_guest_memory;
use crate::testing::{recv, NetDriver as Driver};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const DATA: u64 = 0x10_0000;

fn fake_net() -> (Net, UnixDatagram) {
    crate::testing::fake_net(MAC, ThreadHook::none())
}

#[test]
fn identity_features_and_config_space() {
    let (mut net, _host) = fake_net();
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let f = net.avail_features();
    for bit in [32, 5, 3, 16] {
        assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
    }
    net.set_acked_features(u64::MAX);
    assert_eq!(net.acked_features(), f);

    let mut c = [0xffu8; 16];
    net.read_config(0, &mut c);
    assert_eq!(&c[..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "LINK_UP");
    assert_eq!(u16::from_le_bytes([c[8], c[9]]), 1, "one queue pair");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1500, "mtu");
    assert_eq!(&c[12..], &[0; 4], "past the end reads 0");
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    net.read_config(u64::MAX, &mut mtu);
    assert_eq!(mtu, [0, 0]);
    net.write_config(0, &[0; 6]);
    net.read_config(0, &mut c[..6]);
    assert_eq!(&c[..6], &MAC, "config is read-only");
}

#[test]
fn activate_needs_both_queues() {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (mut net, _host) = fake_net();
    let d = Driver::new(&mem);
    let one = vec![ActiveQueue {
        index: 0,
        queue: d.queues[0].create_queue::<Queue>().unwrap(),
        kick: d.kicks[0].try_clone().unwrap(),
    }];
    assert!(net.activate(mem.clone(), d.interrupt.clone(), one).is_err());
    d.activate(&mut net);
    assert!(net.reset());
}

#[test]
fn transmit_gathers_a_split_chain_into_one_frame() {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (mut net, host) = fake_net();
    let mut d = Driver::new(&mem);
    d.activate(&mut net);

    // The guest's header carries junk offload fields; the device must not
    // pass them on (no offloads were negotiated).
    let mut chain = vec![0xaa; VNET_HDR_LEN];
    let frame: Vec<u8> = (0..100u8).collect();
    chain.extend_from_slice(&frame);
    mem.write_slice(&chain, GuestAddress(DATA)).unwrap();
    d.add(
        TX,
        &[
            (DATA, 5, false),
            (DATA + 5, 20, false),
            (DATA + 25, 87, false),
        ],
    );

    let got = recv(&host);
    assert_eq!(&got[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
    assert_eq!(d.wait_used(TX, 1), vec![(0, 0)]);
    assert_eq!(d.interrupt.status() & INT_VRING, INT_VRING);
    assert_eq!(d.interrupt.eventfd().read().unwrap(), 1);
}

#[test]
fn receive_waits_for_buffers_then_delivers() {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (mut net, host) = fake_net();
    let mut d = Driver::new(&mem);
    d.activate(&mut net);

    let mut sent = vec![0x77; VNET_HDR_LEN];
    let frame: Vec<u8> = (0..200u8).rev().collect();
    sent.extend_from_slice(&frame);
    host.send(&sent).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.used_idx(RX), 0, "no buffer, nothing delivered");

    d.add(RX, &[(DATA, 7, true), (DATA + 0x1000, 2048, true)]);
    let used = d.wait_used(RX, 1);
    let len = sent.len() as u32;
    assert_eq!(used, vec![(0, len)]);
    let mut got = d.read(DATA, 7);
    got.extend(d.read(DATA + 0x1000, sent.len() - 7));
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[10] = 1; // num_buffers
    assert_eq!(&got[..VNET_HDR_LEN], &hdr);
    assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);
    assert_eq!(d.interrupt.eventfd().read().unwrap(), 1);

    // A second frame arrives after the worker saw the new buffer and found
    // the tap empty: it must be polling the tap again.
    d.add(RX, &[(DATA + 0x2000, 2048, true)]);
    std::thread::sleep(Duration::from_millis(50));
    host.send(&sent).unwrap();
    assert_eq!(d.wait_used(RX, 2)[1], (2, len));
}

#[test]
fn hostile_chains_are_returned_empty_and_the_device_goes_on() {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (mut net, host) = fake_net();
    let mut d = Driver::new(&mem);
    d.activate(&mut net);
    let outside = 0xdead_0000_0000;

    // Transmit: outside memory, straddling the end of memory, a writable
    // descriptor, shorter than the header, longer than any frame, a bogus
    // head index.
    d.add(TX, &[(outside, 100, false)]);
    d.add(TX, &[(DATA, 12, false), ((16 << 20) - 8, 64, false)]);
    d.add(TX, &[(DATA, 12, false), (DATA + 12, 64, true)]);
    d.add(TX, &[(DATA, 8, false)]);
    d.add(TX, &[(DATA, MAX_FRAME as u32 + 1, false)]);
    // A head index past the queue: skipped, nothing to return as used.
    let avail = d.queues[TX].avail();
    let i = avail.idx().load();
    avail.ring().ref_at(usize::from(i)).unwrap().store(300);
    avail.idx().store(i + 1);
    let good: Vec<u8> = (0..76u8).collect();
    mem.write_slice(&good, GuestAddress(DATA + 0x8000)).unwrap();
    d.add(TX, &[(DATA + 0x8000, 76, false)]);
    let used = d.wait_used(TX, 6);
    assert!(used.iter().all(|&(_, len)| len == 0));
    let got = recv(&host);
    assert_eq!(
        &got[VNET_HDR_LEN..],
        &good[VNET_HDR_LEN..],
        "only the good chain"
    );
    host.set_nonblocking(true).unwrap();
    assert!(host.recv(&mut [0; 64]).is_err(), "nothing else was sent");
    host.set_nonblocking(false).unwrap();

    // Receive: a read-only buffer, one outside memory, one too small.
    d.add(RX, &[(DATA, 2048, false)]);
    d.add(RX, &[(outside, 2048, true)]);
    d.add(RX, &[(DATA, 16, true)]);
    d.add(RX, &[(DATA + 0x4000, 2048, true)]);
    let mut frame = vec![0u8; VNET_HDR_LEN + 60];
    frame[VNET_HDR_LEN..].fill(0x42);
    host.send(&frame).unwrap(); // dropped: the too-small buffer
    host.send(&frame).unwrap();
    let used = d.wait_used(RX, 4);
    assert_eq!(used[..3], [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(used[3], (3, frame.len() as u32));
    assert_eq!(d.read(DATA + 0x4000 + 12, 60), vec![0x42; 60]);

    // The worker still serves the transmit queue.
    d.add(TX, &[(DATA + 0x8000, 76, false)]);
    recv(&host);
    assert!(net.reset(), "worker joined");
}

#[test]
fn reset_stops_the_worker_and_the_device_starts_again() {
    let mem = create_guest_memory(16 << 20).unwrap();
    let (mut net, host) = fake_net();
    let mut d = Driver::new(&mem);
    d.activate(&mut net);
    assert!(net.reset());
    d.add(TX, &[(DATA, 76, false)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(d.used_idx(TX), 0, "nobody serves the queue after reset");
    host.set_nonblocking(true).unwrap();
    assert!(host.recv(&mut [0; 64]).is_err());
    host.set_nonblocking(false).unwrap();
    assert_eq!(net.acked_features(), 0);

    // The driver sets the device up again on fresh rings.
    let mem = create_guest_memory(16 << 20).unwrap();
    let mut d = Driver::new(&mem);
    d.activate(&mut net);
    d.add(TX, &[(DATA, 76, false)]);
    assert_eq!(recv(&host).len(), 76);
    drop(net); // joins the worker
}

mod real_tap {
    //! A real tap in a network namespace the test makes for itself (on
    //! its own thread, via unshare), so nothing reaches host interfaces;
    //! the namespace goes away with the thread.

    use std::net::{Ipv4Addr, UdpSocket};
    use std::process::Command;

    use super::*;
    use crate::virtio::tap::tests::in_private_netns;

    const TAP: &str = "husk-t0";
    const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 7, 1);
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 253, 7, 2);

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("SKIP: cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Ethernet + IPv4 + UDP (checksum 0, allowed for IPv4).
    fn udp_frame(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst_mac);
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut iph = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
        iph[2..4].copy_from_slice(&total.to_be_bytes());
        iph.extend_from_slice(&src.0.octets());
        iph.extend_from_slice(&dst.0.octets());
        let mut sum: u32 = iph
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        iph[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&iph);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn udp_both_ways_through_a_tap_in_a_private_netns() {
        const NAME: &str = "udp_both_ways_through_a_tap_in_a_private_netns";
        in_private_netns(NAME, || match run_in_netns() {
            Ok(()) => {}
            Err(e) if e.starts_with("SKIP: ") => husk_test_support::skip(&e["SKIP: ".len()..]),
            Err(e) => panic!("{e}"),
        });
    }

    fn run_in_netns() -> Result<(), String> {
        let tap = Tap::open(TAP).map_err(|e| format!("tap: {e:#}"))?;
        assert_eq!(tap.name(), TAP);
        ip(&["link", "set", "dev", TAP, "address", "02:00:00:00:00:01"])?;
        ip(&["addr", "add", "10.253.7.1/24", "dev", TAP])?;
        ip(&["link", "set", "dev", TAP, "up"])?;
        ip(&[
            "neigh",
            "add",
            "10.253.7.2",
            "lladdr",
            "52:54:00:12:34:56",
            "dev",
            TAP,
            "nud",
            "permanent",
        ])?;

        let mem = create_guest_memory(16 << 20).unwrap();
        let mut net = Net::new(tap, MAC, 1500, ThreadHook::none());
        let mut d = Driver::new(&mem);
        d.activate(&mut net);

        // Guest -> host: a UDP datagram to a socket on the tap's address.
        let sock = UdpSocket::bind((HOST_IP, 7777)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut chain = vec![0u8; VNET_HDR_LEN];
        chain.extend(udp_frame(
            HOST_MAC,
            MAC,
            (GUEST_IP, 5555),
            (HOST_IP, 7777),
            b"hello from the guest",
        ));
        mem.write_slice(&chain, GuestAddress(DATA)).unwrap();
        d.add(TX, &[(DATA, chain.len() as u32, false)]);
        let mut buf = [0u8; 128];
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("guest->host: {e}"))?;
        assert_eq!(&buf[..n], b"hello from the guest");
        assert_eq!(from, (GUEST_IP, 5555).into());

        // Host -> guest. The kernel may send IPv6 noise first, so post
        // several buffers and look for the datagram among them.
        const BUFS: u16 = 16;
        for i in 0..u64::from(BUFS) {
            d.add(RX, &[(DATA + 0x1_0000 + i * 0x1000, 2048, true)]);
        }
        sock.send_to(b"hello from the host", (GUEST_IP, 9999))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = d.used_idx(RX);
            let found = d.wait_used(RX, n).into_iter().find_map(|(id, len)| {
                let f = d.read(DATA + 0x1_0000 + u64::from(id) * 0x1000, len as usize);
                let is_udp = f.len() > VNET_HDR_LEN + 42
                    && f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0x00]
                    && f[VNET_HDR_LEN + 23] == 17
                    && f[VNET_HDR_LEN + 36..VNET_HDR_LEN + 38] == 9999u16.to_be_bytes();
                is_udp.then_some(f)
            });
            if let Some(f) = found {
                assert_eq!(f[10..12], [1, 0], "num_buffers");
                assert_eq!(&f[VNET_HDR_LEN..VNET_HDR_LEN + 6], &MAC);
                assert_eq!(&f[VNET_HDR_LEN + 6..VNET_HDR_LEN + 12], &HOST_MAC);
                assert_eq!(&f[VNET_HDR_LEN + 42..], b"hello from the host");
                break;
            }
            if Instant::now() > deadline || n == BUFS {
                return Err(format!("host->guest: no UDP frame in {n} received frames"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(net.reset());
        Ok(())
    }
}
