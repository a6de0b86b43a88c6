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
/// The status register (port 0x64): output buffer full (bit 0), input
/// buffer empty (bit 1 clear), nothing else.
pub const STATUS: u8 = 0x01;
/// What the data port (0x60) reads: nothing there.
pub const NO_DATA: u8 = 0xff;
/// The status register's offset.
const STATUS_OFFSET: u64 = 4;

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
        match (offset, data.len()) {
            (STATUS_OFFSET, 1) => data[0] = STATUS,
            _ => data.fill(NO_DATA),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042(I8042Device::new(ResetTrigger(evt.try_clone().unwrap())));
        (dev, evt)
    }

    #[test]
    fn reads_as_a_controller_whose_buffer_never_drains() {
        let (mut d, _) = device();
        let mut b = [0u8];
        d.read(STATUS_OFFSET, &mut b);
        assert_eq!(b[0] & 1, 1, "output buffer full");
        assert_eq!(b[0] & 2, 0, "input buffer empty");
        d.read(0, &mut b);
        assert_eq!(b[0], NO_DATA);
        // Draining changes nothing.
        d.read(STATUS_OFFSET, &mut b);
        assert_eq!(b[0], STATUS);
        let mut wide = [0u8; 2];
        d.read(STATUS_OFFSET, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn command_0xfe_pulls_the_reset_line_and_others_do_not() {
        let (mut d, evt) = device();
        d.write(STATUS_OFFSET, &[0x20]);
        d.write(0, &[0xfe]);
        assert!(evt.read().is_err(), "no reset yet");
        d.write(STATUS_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
