//! Test helpers, for this crate's tests and (feature `test-utils`) other
//! crates': a virtio-net guest driver on virtio-queue's mock rings, and a
//! virtio-net device on a socket pair instead of a tap.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::confine::ThreadHook;
use crate::virtio::net::{Net, QUEUE_SIZE};
use crate::virtio::tap::Tap;
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice};

/// A virtio-net guest driver's view: two rings (0 = receive, 1 =
/// transmit), kick eventfds, the interrupt line.
pub struct NetDriver<'a> {
    mem: &'a GuestMemoryMmap,
    /// The rings, in guest memory at 0 and 0x1_0000.
    pub queues: [MockSplitQueue<'a, GuestMemoryMmap>; 2],
    /// Each queue's kick eventfd.
    pub kicks: [EventFd; 2],
    next_desc: [u16; 2],
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

impl std::fmt::Debug for NetDriver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDriver")
            .field("next_desc", &self.next_desc)
            .finish_non_exhaustive()
    }
}

impl<'a> NetDriver<'a> {
    /// A driver with fresh rings in `mem` (at least 128 KiB).
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        NetDriver {
            mem,
            queues: [
                MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE),
                MockSplitQueue::create(mem, GuestAddress(0x1_0000), QUEUE_SIZE),
            ],
            kicks: [0, 1].map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            next_desc: [0; 2],
            interrupt: Arc::new(Interrupt::new().unwrap()),
        }
    }

    /// Hands `net` the rings (`DRIVER_OK`).
    pub fn activate(&self, net: &mut Net) {
        let queues = (0..2)
            .map(|i| ActiveQueue {
                index: i,
                queue: self.queues[i].create_queue::<Queue>().unwrap(),
                kick: self.kicks[i].try_clone().unwrap(),
            })
            .collect();
        net.activate(self.mem.clone(), self.interrupt.clone(), queues)
            .unwrap();
    }

    /// Adds one chain of `(addr, len, device-writable)` buffers and kicks.
    pub fn add(&mut self, q: usize, bufs: &[(u64, u32, bool)]) {
        let first = self.next_desc[q];
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, write))| {
                let idx = first + i as u16;
                let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, idx + 1))
            })
            .collect();
        self.queues[q].add_desc_chains(&descs, first).unwrap();
        self.next_desc[q] += bufs.len() as u16;
        self.kicks[q].write(1).unwrap();
    }

    /// Queue `q`'s used index.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.queues[q].used().idx().load()
    }

    /// Waits until queue `q` has `n` used entries; returns them (id, len).
    pub fn wait_used(&self, q: usize, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(q) < n {
            assert!(
                Instant::now() < deadline,
                "queue {q}: {} of {n} used",
                self.used_idx(q)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        (0..n as usize)
            .map(|i| {
                let e = self.queues[q].used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A virtio-net device showing `mac` on one end of a datagram socket
/// pair standing in for the tap (one datagram = one frame with its
/// header), and the host's end (5 s read timeout). Its worker is confined
/// with `confine`.
pub fn fake_net(mac: [u8; 6], confine: ThreadHook) -> (Net, UnixDatagram) {
    let (dev, host) = UnixDatagram::pair().unwrap();
    dev.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (Net::new(Tap::fake(dev.into()), mac, 1500, confine), host)
}

/// The next frame the device sent (panics after the read timeout).
pub fn recv(host: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0; 70_000];
    let n = host.recv(&mut buf).expect("a frame on the tap");
    buf.truncate(n);
    buf
}

/// Running one unit test alone in a child process, so what it counts
/// (fds, threads) is its own: the test binary runs the one test again in
/// a child, and the parent checks how the child ended.
#[cfg(test)]
pub(crate) mod child {
    use std::process::Command;

    /// Set in the child.
    const CHILD_ENV: &str = "HUSK_KVM_TEST_CHILD";

    /// In the child: true, the caller runs its body. In the parent: reruns
    /// test `module::name` in a child, asserts it passed, returns false.
    pub fn in_child_process(module: &str, name: &str) -> bool {
        if std::env::var_os(CHILD_ENV).is_some() {
            return true;
        }
        let module = module.split_once("::").map_or(module, |(_, m)| m);
        let test = format!("{module}::{name}");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{test}: {:?}\n{text}", out.status);
        assert!(text.contains("1 passed"), "{test} did not run:\n{text}");
        false
    }
}
