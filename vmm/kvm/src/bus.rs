//! Port-I/O and MMIO dispatch: a vCPU exit names an address; the bus finds
//! the device whose range holds it and hands it the offset into that range.
//!
//! Hand-written: rust-vmm's `vm-device` bus is unreleased on crates.io in a
//! version that matches our other crates, and what we need is a sorted map.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the start of the range the
/// device was inserted at; `data.len()` is the access width (1, 2, 4 or 8).
pub trait BusDevice: Send {
    /// A guest read: fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps.
    #[error("empty or wrapping bus range {base:#x}+{len:#x}")]
    BadRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// One device shared between the bus and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping ranges, each owned by a device. Cloning shares
/// the devices (each vCPU thread holds a clone).
#[derive(Clone, Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.devices
                    .iter()
                    .map(|(b, e)| format!("{b:#x}+{:#x}", e.len)),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base+len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let before = self.devices.range(..end).next_back();
        if before.is_some_and(|(b, e)| b + e.len > base) {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64, width: usize) -> Option<(&Entry, u64)> {
        let (base, e) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(width as u64)? <= e.len).then_some((e, offset))
    }

    /// A guest read at `addr`; false (and `data` untouched) when no device
    /// holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.device).read(off, data);
                true
            }
            None => false,
        }
    }

    /// A guest write at `addr`; false when no device holds the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, off)) => {
                lock(&e.device).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device; a device whose lock was poisoned by a panicking vCPU is
/// still handed out (its state is plain registers).
fn lock(d: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Reg {
        last: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_bounds() {
        let a = Arc::new(Mutex::new(Reg::default()));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        assert_eq!(
            bus.insert(a.clone(), 0x3fc, 8),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert_eq!(
            bus.insert(a.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        bus.insert(a.clone(), 0x3f0, 8).unwrap();
        assert!(matches!(
            bus.insert(a.clone(), u64::MAX, 2),
            Err(BusError::BadRange { .. })
        ));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d, [5]);
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(a.lock().unwrap().last, vec![(1, vec![7])]);
        let mut w = [0u8; 4];
        assert!(!bus.read(0x3fe, &mut w), "access crossing the end");
        assert!(!bus.read(0x400, &mut d));
        assert!(!bus.read(0, &mut d));
    }
}
