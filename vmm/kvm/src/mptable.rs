//! The Intel MultiProcessor (MP 1.4) table: how a guest without ACPI (our
//! kernel has none) learns about its other vCPUs and the IOAPIC. Linux
//! looks for the floating pointer in the last KiB below 640 KiB, among other
//! places; the table follows it there, in the EBDA hole the memory map
//! reserves. Without it the guest runs on vCPU 0 only, through the PIC.
//!
//! Hand-written: no rust-vmm crate writes MP tables (Firecracker and Cloud
//! Hypervisor each keep their own copy inside their VMM crates); the
//! layout is the MP 1.4 specification's, chapter 4.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

/// Where the floating pointer goes: the start of the last KiB below 640 KiB
/// (the EBDA), which Linux scans.
pub const MPTABLE_START: u64 = 0x9_fc00;
/// The LAPIC's physical address.
const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The IOAPIC's physical address.
const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The IOAPIC's input pins, each wired to the ISA IRQ of the same number.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

// Entry types and sizes.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;

// Interrupt types.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// The table's bytes for `vcpus` processors, the floating pointer first,
/// as placed at [`MPTABLE_START`].
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus.saturating_add(1);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        // enabled, and the bootstrap processor for vCPU 0
        let flags = 1 | if id == 0 { 2 } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC).
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Conforming polarity and trigger, ISA bus 0 IRQ `pin` to the pin.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, pin]);
        entries.extend_from_slice(&[ioapic_id, pin]);
        count += 1;
    }
    // LINT0 is ExtINT (the PIC), LINT1 NMI, on every LAPIC (0xff).
    for (kind, lint) in [(INT_TYPE_EXTINT, 0), (INT_TYPE_NMI, 1)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, 0, 0, 0xff, lint]);
        count += 1;
    }

    let table_addr = MPTABLE_START as u32 + FLOATING_LEN as u32;
    let table_len = (HEADER_LEN + entries.len()) as u16;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"HUSK    "); // OEM id
    header.extend_from_slice(b"MICROVM     "); // product id
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    header.push(0);
    header.push(0);
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // features: a configuration table follows
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    floating
}

/// The byte that makes `bytes` sum to zero (with it in place of a zero).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the table for `vcpus` processors into guest RAM.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), GuestMemoryError> {
    mem.write_slice(&build(vcpus), GuestAddress(MPTABLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_lengths_and_entries() {
        for vcpus in [1u8, 2, 32] {
            let t = build(vcpus);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..FLOATING_LEN]), 0, "floating pointer checksum");
            let addr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(addr, MPTABLE_START + FLOATING_LEN as u64);
            let table = &t[FLOATING_LEN..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            // Walk the entries by their types' sizes.
            let (mut at, mut cpus, mut seen) = (HEADER_LEN, 0, 0);
            while at < len {
                let size = match table[at] {
                    ENTRY_PROCESSOR => {
                        assert_eq!(table[at + 1], cpus as u8, "APIC ids in order");
                        assert_eq!(table[at + 3] & 2 != 0, cpus == 0, "vCPU 0 is the BSP");
                        cpus += 1;
                        20
                    }
                    ENTRY_BUS | ENTRY_IOAPIC | ENTRY_IO_INTERRUPT | ENTRY_LOCAL_INTERRUPT => 8,
                    t => panic!("entry type {t}"),
                };
                at += size;
                seen += 1;
            }
            assert_eq!(at, len);
            assert_eq!((cpus, seen), (usize::from(vcpus), count));
            // It fits in the KiB below 640 KiB (RAM, reserved in the memory map).
            assert!(MPTABLE_START as usize + t.len() <= 0xa_0000);
        }
    }
}
