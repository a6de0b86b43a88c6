//! COM1 (ports 0x3f8-0x3ff, IRQ 4): vm-superio's 16550A with its output in
//! the console log. Its interrupt is an eventfd registered as an irqfd, so
//! raising it never needs the vCPU. Guest input is not wired.

use std::fs::File;
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// COM1's first port.
pub const COM1_BASE: u64 = 0x3f8;
/// Its eight registers.
pub const COM1_LEN: u64 = 8;
/// Its interrupt line (ISA IRQ 4 = GSI 4).
pub const COM1_GSI: u32 = 4;

/// An [`EventFd`] as vm-superio's interrupt trigger.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial port on the pio bus.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A port raising `irq` and writing what the guest sends to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            serial: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// A port writing to the console log `file` (unbuffered: the monitor
    /// watches the log for the agent's ready line).
    pub fn to_file(irq: EventFd, file: File) -> Self {
        Self::new(irq, Box::new(file))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.serial.read(off),
            _ => {
                tracing::debug!(offset, width = data.len(), "serial: odd read ignored");
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), &[v]) => {
                if let Err(e) = self.serial.write(off, v) {
                    tracing::debug!(error = ?e, "serial: write failed");
                }
            }
            _ => tracing::debug!(offset, width = data.len(), "serial: odd write ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_and_interrupt() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        s.write(1, &[0x02]); // IER: THR empty interrupt
        s.write(0, b"h");
        s.write(0, b"i");
        s.write(0, &[1, 2]); // wrong width: ignored
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        let mut wide = [0u8; 2];
        s.read(5, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
