//! husk's builtin KVM VMM: runs a guest on `/dev/kvm` in process, with the
//! rust-vmm crates, instead of starting QEMU. husk-vmm (the monitor) embeds
//! it behind its engine trait; this crate knows nothing of the monitor:
//! what it needs from it (the kernel command line, whether the host has
//! hardware virtualization, how to confine a thread) comes in
//! [`BuildOptions`].
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`memory`] | guest RAM: one memfd (so the vhost-user daemons can map it), the x86 layout and the MMIO gap |
//! | [`bus`] | port-I/O and MMIO dispatch from vCPU exits to devices |
//! | [`kvm_vm`] | the KVM VM: memory slots, in-kernel PIC/IOAPIC/LAPIC and PIT, irqfd/ioeventfd |
//! | [`cpu`] | vCPU setup: CPUID, MSRs, FPU, LAPIC LINT pins, entry registers |
//! | [`boot`] | `vmlinux` ELF load, initramfs, command line, PVH `hvm_start_info` and memory map |
//! | [`mptable`] | the MP table: the guest's vCPUs and IOAPIC (there is no ACPI) |
//! | [`serial`] | COM1 (vm-superio 16550A) into the console log |
//! | [`i8042`] | the i8042's CPU reset line (guest reboot), signalled on an eventfd |
//! | [`devices`] | the config's devices (vsock, one fs per share, one net per tap) placed behind virtio-mmio transports at windows and GSIs |
//! | [`builder`] | [`Machine`]: building the VM (memory, devices, vCPUs, kernel) from a config or by hand |
//! | [`vcpu`] | [`Vmm`]: the vCPU threads, their `KVM_RUN` loop, kicks, pause and stop |
//! | [`exits`] | what one KVM exit means: port I/O and MMIO to the buses, guest reset/shutdown, KVM failures |
//! | [`confine`] | [`ThreadHook`]: how the embedding process confines the vCPU threads and the net worker |
//! | [`virtio`] | the virtio-mmio transport, the [`virtio::VirtioDevice`] trait, the vhost-user frontend and in-process devices |
//!
//! The guest is hostile: anything a device reads from the guest (register
//! writes, queue addresses, descriptors) is validated once, and a bad value
//! fails that device, never the VMM.

pub mod boot;
pub mod builder;
pub mod bus;
pub mod confine;
pub mod cpu;
pub mod devices;
pub mod exits;
pub mod i8042;
pub mod kvm_vm;
pub mod memory;
pub mod mptable;
pub mod serial;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod vcpu;
pub mod virtio;

pub use builder::{BuildOptions, Devices, Machine, VmmError};
pub use confine::{ThreadHook, ThreadRole};
pub use vcpu::{ExitState, Vmm};
