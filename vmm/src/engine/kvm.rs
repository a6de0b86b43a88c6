//! The builtin engine: the KVM VMM (`husk-kvm`, `vmm/kvm/`) behind the
//! monitor's [`EngineInstance`]. This adapter gives it what the monitor
//! decides: the kernel command line, the host's CPUID policy and the
//! seccomp confinement of its vCPU threads and net worker.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use husk_kvm::{BuildOptions, Devices, ThreadHook, ThreadRole, Vmm, VmmError};
use husk_vmm_contract::config::VmConfig;

use super::{kernel_cmdline, Accel, EngineInstance, HostFacts};
use crate::seccomp::ThreadKind;

/// Confines the VMM's threads as the monitor's other threads are:
/// capabilities dropped, no_new_privs, the thread kind's seccomp filter.
pub fn confine_hook() -> ThreadHook {
    ThreadHook::new(|role| {
        let kind = match role {
            ThreadRole::Vcpu => ThreadKind::Vcpu,
            ThreadRole::NetWorker => ThreadKind::NetWorker,
        };
        crate::confine::this_thread(kind).map_err(|e| crate::monitor::error_chain(&e))
    })
}

/// A running builtin-engine guest.
#[derive(Debug)]
pub struct KvmEngine(Vmm);

impl KvmEngine {
    /// Builds the VM for `cfg` with `devices` and starts it, COM1 writing
    /// to `console` (the console relay's pipe, `crate::console`, or any
    /// file).
    pub fn start(
        cfg: &VmConfig,
        devices: Devices,
        console: std::fs::File,
    ) -> Result<Self, VmmError> {
        let opts = BuildOptions {
            devices,
            cmdline: kernel_cmdline(cfg, Accel::Kvm),
            hardware_virtualization: HostFacts::probe().hardware_virtualization(),
            confine: confine_hook(),
        };
        Ok(KvmEngine(Vmm::start(cfg, &opts, console)?))
    }
}

impl EngineInstance for KvmEngine {
    fn name(&self) -> &str {
        "builtin"
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), String> {
        self.0.set_paused(paused)
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn exit_fd(&self) -> BorrowedFd<'_> {
        self.0.exit_fd()
    }

    fn try_wait(&mut self) -> Option<Result<(), String>> {
        Vmm::try_wait(&self.0)
    }

    fn wait_timeout(&mut self, timeout: Duration) -> bool {
        Vmm::wait_timeout(&self.0, timeout)
    }

    /// There is no clean way to ask a guest without ACPI to stop; the
    /// monitor asks the agent first, so this just stops the vCPUs.
    fn stop(&mut self, _grace: Duration) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use husk_kvm::memory::create_guest_memory;
    use husk_kvm::testing::{fake_net, recv, NetDriver};
    use husk_kvm::virtio::tap::VNET_HDR_LEN;
    use husk_kvm::virtio::VirtioDevice;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const DATA: u64 = 0x10_0000;
    const RX: usize = 0;
    const TX: usize = 1;

    /// The virtio-net device as husk-vmm runs it: activated from a thread
    /// under the vCPU filter (which starts the worker, confined through
    /// [`confine_hook`] as the net worker), frames both ways, reset,
    /// dropped. In a child process (see `seccomp::testing`).
    #[test]
    fn net_works_under_the_vcpu_and_worker_filters() {
        if !crate::seccomp::testing::in_child_process(
            module_path!(),
            "net_works_under_the_vcpu_and_worker_filters",
        ) {
            return;
        }
        std::thread::spawn(|| {
            // Built before confinement, like the monitor's devices.
            let mem = create_guest_memory(16 << 20).unwrap();
            let (mut net, host) = fake_net(MAC, confine_hook());
            let mut d = NetDriver::new(&mem);
            confine_hook().enter(ThreadRole::Vcpu).unwrap();
            d.activate(&mut net);
            let frame: Vec<u8> = (0..76u8).collect();
            mem.write_slice(&frame, GuestAddress(DATA)).unwrap();
            d.add(TX, &[(DATA, 76, false)]);
            assert_eq!(recv(&host).len(), 76);
            d.add(RX, &[(DATA + 0x1000, 2048, true)]);
            host.send(&[0x55; VNET_HDR_LEN + 60]).unwrap();
            assert_eq!(d.wait_used(RX, 1), vec![(0, (VNET_HDR_LEN + 60) as u32)]);
            assert!(net.reset(), "worker joined");
            drop(net);
        })
        .join()
        .unwrap();
    }
}
