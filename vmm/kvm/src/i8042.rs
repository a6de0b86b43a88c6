//! The i8042 keyboard controller, only for its CPU reset line (command
//! 0xFE on port 0x64), which is how Linux reboots a PC without ACPI
//! (`reboot=k`, and its fallback). The reset line signals an [`EventFd`];
//! the vCPU run loop reads it after each port write (`crate::exits`), and a
//! reset ends the guest.

use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The controller's ports 0x60-0x64 (data at +0, command at +4).
pub const I8042_BASE: u64 = 0x60;
/// Five ports.
pub const I8042_LEN: u64 = 5;

/// The reset line: writes its eventfd (non-blocking, created by the
/// builder) when the guest asks for a CPU reset.
#[derive(Debug)]
pub struct ResetTrigger(pub EventFd);

impl Trigger for ResetTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> Result<(), Self::E> {
        tracing::info!("guest reset through the i8042");
        self.0.write(1)
    }
}

/// The controller on the pio bus.
#[derive(Debug)]
pub struct I8042(pub I8042Device<ResetTrigger>);

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.0.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), &[v]) = (u8::try_from(offset), data) {
            if let Err(e) = self.0.write(off, v) {
                tracing::error!(error = %e, "i8042: cannot signal the reset line");
            }
        } else {
            tracing::debug!(offset, width = data.len(), "i8042: odd write ignored");
        }
    }
}
