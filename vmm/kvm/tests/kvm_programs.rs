//! Tier-2 tests of the KVM VMM on real KVM: small hand-assembled
//! 16-bit programs run through the same `Machine` / `Vmm` path
//! husk-vmm boots Linux with. Each skips with a reason when `/dev/kvm`
//! cannot be opened.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_kvm::bus::BusDevice;
use husk_kvm::cpu::{CpuTopology, Entry};
use husk_kvm::memory::create_guest_memory;
use husk_kvm::{Machine, Vmm};
use vm_memory::{Bytes, GuestAddress};

/// Whether `/dev/kvm` can be opened; the test skips (printing why) when not.
fn kvm_usable() -> bool {
    match husk_test_support::kvm() {
        Ok(()) => true,
        Err(e) => {
            husk_test_support::skip(format!("{e}; KVM tests need it"));
            false
        }
    }
}

/// Records writes; a read at `offset` returns the bytes of `0x1234_5678 +
/// offset`.
#[derive(Default)]
struct Recorder {
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Recorder {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = (0x1234_5678u32 + offset as u32).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

const CODE: u64 = 0x1000;
const TEST_PORT: u64 = 0x100;
/// `mov al, 0xfe; out 0x64, al` (i8042 reset), then `hlt; jmp $-1`.
const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// A one-vCPU machine with `mem_size` bytes of RAM, `program` at 0x1000
/// (real mode, cs = 0) and a recorder on ports 0x100-0x10f.
fn machine(mem_size: u64, program: &[u8]) -> (Machine, Arc<Mutex<Recorder>>) {
    let mem = create_guest_memory(mem_size).unwrap();
    mem.write_slice(program, GuestAddress(CODE)).unwrap();
    let mut m = Machine::new(
        mem,
        CpuTopology {
            count: 1,
            mask_for_emulation: false,
        },
    )
    .unwrap();
    let rec = Arc::new(Mutex::new(Recorder::default()));
    m.pio.insert(rec.clone(), TEST_PORT, 0x10).unwrap();
    m.set_entry(Entry::Real {
        cs: 0,
        ip: CODE as u16,
        sp: 0x8000,
    })
    .unwrap();
    (m, rec)
}

fn wait(engine: &mut Vmm) -> Result<(), String> {
    assert!(
        engine.wait_timeout(Duration::from_secs(20)),
        "guest did not stop within 20 s"
    );
    engine.try_wait().expect("stopped")
}

fn writes(rec: &Arc<Mutex<Recorder>>) -> Vec<(u64, Vec<u8>)> {
    rec.lock().unwrap().writes.clone()
}

#[test]
fn port_io_reaches_the_device_and_its_value_a_register() {
    if !kvm_usable() {
        return;
    }
    let mut p = vec![
        0xba, 0x00, 0x01, // mov dx, 0x100
        0xb0, 0x42, // mov al, 0x42
        0xee, // out dx, al
        0xba, 0x02, 0x01, // mov dx, 0x102
        0xed, // in ax, dx
        0xba, 0x04, 0x01, // mov dx, 0x104
        0xef, // out dx, ax
        0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x0f, 0xa2, // cpuid
        0xba, 0x08, 0x01, // mov dx, 0x108
        0x66, 0x89, 0xd8, // mov eax, ebx
        0x66, 0xef, // out dx, eax
        0xba, 0x10, 0x02, // mov dx, 0x210 (nobody there)
        0xed, // in ax, dx
        0xba, 0x0c, 0x01, // mov dx, 0x10c
        0xef, // out dx, ax
    ];
    p.extend_from_slice(RESET);
    let (m, rec) = machine(1 << 20, &p);
    let mut engine = Vmm::run(m).unwrap();
    assert_eq!(wait(&mut engine), Ok(()), "i8042 reset is a clean stop");
    engine.stop();
    let w = writes(&rec);
    assert_eq!(w[0], (0, vec![0x42]));
    let read_back = (0x1234_5678u32 + 2).to_le_bytes()[..2].to_vec();
    assert_eq!(w[1], (4, read_back), "the value `in` read landed in ax");
    let ebx = u32::from_le_bytes(w[2].1.clone().try_into().unwrap());
    assert_eq!(w[2].0, 8);
    assert_eq!(ebx >> 24, 0, "CPUID leaf 1 APIC id of vCPU 0");
    assert_eq!((ebx >> 16) & 0xff, 1, "CPUID leaf 1 logical CPU count");
    assert_eq!(
        w[3],
        (0xc, vec![0xff, 0xff]),
        "unclaimed port reads as all ones"
    );
}

#[test]
fn mmio_reaches_the_device_and_unmapped_mmio_is_ignored() {
    if !kvm_usable() {
        return;
    }
    let mut p = vec![
        0xb8, 0x00, 0xa0, // mov ax, 0xa000
        0x8e, 0xd8, // mov ds, ax
        0x66, 0xc7, 0x06, 0x10, 0x00, 0xef, 0xbe, 0xad, 0xde, // mov dword [0x10], 0xdeadbeef
        0x66, 0xa1, 0x20, 0x00, // mov eax, [0x20]
        0x66, 0xa3, 0x30, 0x00, // mov [0x30], eax
        0xc6, 0x06, 0x41, 0x00, 0x07, // mov byte [0x41], 7
        0xb8, 0x00, 0xb0, // mov ax, 0xb000 (nothing there)
        0x8e, 0xd8, // mov ds, ax
        0x66, 0xa1, 0x00, 0x00, // mov eax, [0]
        0x66, 0xa3, 0x04, 0x00, // mov [4], eax
        0xba, 0x00, 0x01, // mov dx, 0x100
        0x66, 0xef, // out dx, eax
    ];
    p.extend_from_slice(RESET);
    // 512 KiB of RAM: 0xa0000 and 0xb0000 are outside it.
    let (mut m, rec) = machine(512 << 10, &p);
    let dev = Arc::new(Mutex::new(Recorder::default()));
    m.mmio.insert(dev.clone(), 0xa_0000, 0x1000).unwrap();
    let mut engine = Vmm::run(m).unwrap();
    assert_eq!(wait(&mut engine), Ok(()));
    engine.stop();
    let w = writes(&dev);
    assert_eq!(w[0], (0x10, 0xdead_beefu32.to_le_bytes().to_vec()));
    assert_eq!(
        w[1],
        (0x30, (0x1234_5678u32 + 0x20).to_le_bytes().to_vec()),
        "the MMIO read's value landed in eax"
    );
    assert_eq!(w[2], (0x41, vec![7]));
    assert_eq!(w.len(), 3, "the unmapped write went nowhere");
    assert_eq!(
        writes(&rec),
        vec![(0, vec![0xff; 4])],
        "unmapped MMIO reads as all ones"
    );
}

#[test]
fn irqfd_interrupt_runs_the_guest_handler() {
    if !kvm_usable() {
        return;
    }
    let vector = 0x25u16; // PIC base 0x20 + IRQ 5
    let handler = 0x1100u16;
    let main = [
        0xfa, // cli
        0xb0, 0x11, 0xe6, 0x20, // ICW1: init, ICW4 follows
        0xb0, 0x20, 0xe6, 0x21, // ICW2: vectors from 0x20
        0xb0, 0x04, 0xe6, 0x21, // ICW3: slave on IRQ 2
        0xb0, 0x01, 0xe6, 0x21, // ICW4: 8086 mode
        0xb0, 0xdf, 0xe6, 0x21, // OCW1: only IRQ 5 unmasked
        0xba, 0x00, 0x01, 0xb0, 0x01, 0xee, // out 0x100, 1: ready
        0xfb, // sti
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ];
    let mut isr = vec![
        0xba, 0x01, 0x01, 0xb0, 0x25, 0xee, // out 0x101, 0x25
        0xb0, 0x20, 0xe6, 0x20, // EOI
    ];
    isr.extend_from_slice(RESET);
    let (mut m, rec) = machine(1 << 20, &main);
    m.mem
        .write_slice(&isr, GuestAddress(u64::from(handler)))
        .unwrap();
    // The real-mode IVT entry: offset, then segment 0.
    m.mem
        .write_obj(handler, GuestAddress(u64::from(vector) * 4))
        .unwrap();
    m.mem
        .write_obj(0u16, GuestAddress(u64::from(vector) * 4 + 2))
        .unwrap();
    let irq = m.irqfd(5).unwrap();
    let mut engine = Vmm::run(m).unwrap();
    let t = Instant::now();
    while writes(&rec).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(20), "guest never ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(engine.try_wait().is_none(), "guest halted, waiting");
    irq.write(1).unwrap();
    assert_eq!(wait(&mut engine), Ok(()));
    engine.stop();
    assert_eq!(writes(&rec), vec![(0, vec![1]), (1, vec![0x25])]);
}

#[test]
fn triple_fault_is_a_clean_guest_stop() {
    if !kvm_usable() {
        return;
    }
    // The PVH entry state: 32-bit protected mode with an empty IDT, so
    // `ud2` raises #UD, then #GP, then #DF, then shuts down.
    let (m, _rec) = machine(1 << 20, &[0x0f, 0x0b, 0xeb, 0xfe]);
    m.set_entry(Entry::Pvh {
        entry: CODE,
        start_info: 0,
    })
    .unwrap();
    let mut engine = Vmm::run(m).unwrap();
    assert_eq!(wait(&mut engine), Ok(()));
    engine.stop();
}

#[test]
fn stop_kicks_spinning_and_halted_vcpus() {
    if !kvm_usable() {
        return;
    }
    let threads_before = thread_count();
    for program in [&[0xeb, 0xfe][..], &[0xfa, 0xf4, 0xeb, 0xfd][..]] {
        let (m, _rec) = machine(1 << 20, program);
        let mut engine = Vmm::run(m).unwrap();
        assert!(!engine.wait_timeout(Duration::from_millis(200)));
        let t = Instant::now();
        engine.stop();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            t.elapsed()
        );
        assert_eq!(engine.try_wait(), Some(Ok(())));
    }
    // Other tests run threads concurrently; the count must not have grown
    // by this test's vCPU threads at least.
    assert!(thread_count() <= threads_before + 4);
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// A console that keeps what the guest wrote.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn odd_width_and_string_io_is_ignored_not_fatal() {
    if !kvm_usable() {
        return;
    }
    let mut p = vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
        0xb8, 0x41, 0x41, // mov ax, 0x4141
        0xef, // out dx, ax: 16-bit write to an 8-bit port
        0x66, 0xed, // in eax, dx: 32-bit read
        0x66, 0x89, 0xc3, // mov ebx, eax
        0xb0, 0x41, // mov al, 'A'
        0xee, // out dx, al: the one real byte
        0xba, 0x64, 0x00, // mov dx, 0x64 (i8042)
        0xb8, 0xfe, 0xfe, // mov ax, 0xfefe
        0xef, // out dx, ax: a 16-bit "reset" must not count
        0xbe, 0x00, 0x18, // mov si, 0x1800
        0xb9, 0x03, 0x00, // mov cx, 3
        0xba, 0x00, 0x01, // mov dx, 0x100
        0xf3, 0x6e, // rep outsb
        0xba, 0x04, 0x01, // mov dx, 0x104
        0x66, 0x89, 0xd8, // mov eax, ebx
        0x66, 0xef, // out dx, eax
    ];
    p.extend_from_slice(RESET);
    let (mut m, rec) = machine(1 << 20, &p);
    m.mem.write_slice(b"xyz", GuestAddress(0x1800)).unwrap();
    let console = Sink::default();
    m.add_serial(Box::new(console.clone())).unwrap();
    let mut engine = Vmm::run(m).unwrap();
    assert_eq!(wait(&mut engine), Ok(()));
    engine.stop();
    assert_eq!(&*console.0.lock().unwrap(), b"A");
    let w = writes(&rec);
    assert_eq!(
        w.last(),
        Some(&(4, vec![0xff; 4])),
        "the odd-width serial read gave all ones and the guest went on: {w:?}"
    );
}
