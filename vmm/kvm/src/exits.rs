//! What one `KVM_RUN` exit means for the vCPU loop (`crate::vcpu`).
//!
//! The guest is hostile: port I/O and MMIO go to the buses, and an access
//! nobody claims, or with an odd width, is logged at debug and ignored
//! (reads return all ones). The guest stopping (an i8042 CPU reset, read
//! from the reset line's eventfd after each port write; a triple fault; a
//! system event; `hlt` without an in-kernel LAPIC) is a clean stop. Only
//! KVM itself failing (internal error, failed entry, an exit never asked
//! for) stops the VM with an error.

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;

/// What one exit asks of the vCPU loop.
pub(crate) enum Step {
    /// Enter the guest again.
    Continue,
    /// The guest stopped: `Ok` cleanly, `Err` with why KVM failed.
    Stop(Result<(), String>),
    /// `KVM_EXIT_INTERNAL_ERROR`: describe it with [`internal_error`].
    InternalError,
}

/// Where a vCPU's exits go.
pub(crate) struct ExitContext<'a> {
    /// The vCPU's index, for messages.
    pub id: usize,
    /// Port I/O devices.
    pub pio: &'a Bus,
    /// MMIO devices.
    pub mmio: &'a Bus,
    /// The i8042's reset line.
    pub reset: &'a EventFd,
}

impl ExitContext<'_> {
    /// Handles the outcome of one `KVM_RUN`.
    pub fn handle(&self, exit: Result<VcpuExit<'_>, kvm_ioctls::Error>) -> Step {
        let id = self.id;
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    tracing::debug!(port, width = data.len(), "unclaimed port read");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(u64::from(port), data) {
                    tracing::debug!(port, width = data.len(), "unclaimed port write");
                }
                self.reset_requested()
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    tracing::debug!(addr, width = data.len(), "unclaimed MMIO read");
                    data.fill(0xff);
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    tracing::debug!(addr, width = data.len(), "unclaimed MMIO write");
                }
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => {
                tracing::info!(vcpu = id, "guest halted");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::info!(vcpu = id, "guest shut down (triple fault or reset)");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                tracing::info!(vcpu = id, kind, "guest system event");
                Step::Stop(Ok(()))
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::InternalError) => Step::InternalError,
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Stop(Err(format!(
                "vCPU {id}: KVM entry failed (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
            Ok(other) => Step::Stop(Err(format!("vCPU {id}: unexpected KVM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Stop(Err(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }

    /// After a port write: a clean stop if it pulled the i8042's reset
    /// line (the eventfd is non-blocking; reading it clears it).
    fn reset_requested(&self) -> Step {
        match self.reset.read() {
            Ok(_) => Step::Stop(Ok(())),
            Err(_) => Step::Continue,
        }
    }
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR`: its suberror (1 = the
/// instruction emulator failed) and where the guest was.
pub(crate) fn internal_error(vcpu: &mut VcpuFd, id: usize) -> String {
    // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the union member KVM filled in.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let n = (internal.ndata as usize).min(internal.data.len());
    let rip = vcpu
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|_| "?".into());
    format!(
        "vCPU {id}: KVM internal error, suberror {} (1 = instruction emulation failed) at rip {rip}, data {:x?}",
        internal.suberror,
        &internal.data[..n]
    )
}
