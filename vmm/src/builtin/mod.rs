//! The builtin engine: husk-vmm runs the guest on KVM itself, with the
//! rust-vmm crates, instead of starting QEMU.
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`memory`] | guest RAM: one memfd (so the vhost-user daemons can map it), the x86 layout and the MMIO gap |
//! | [`bus`] | port-I/O and MMIO dispatch from vCPU exits to devices |
//! | [`vm`] | the KVM VM: memory slots, in-kernel PIC/IOAPIC/LAPIC and PIT, irqfd/ioeventfd |
//! | [`cpu`] | vCPU setup: CPUID, MSRs, FPU, LAPIC LINT pins, entry registers |
//! | [`boot`] | `vmlinux` ELF load, initramfs, command line, PVH `hvm_start_info` and memory map |
//! | [`mptable`] | the MP table: the guest's vCPUs and IOAPIC (there is no ACPI) |
//! | [`serial`] | COM1 (vm-superio 16550A) into the console log |
//! | [`i8042`] | the i8042's CPU reset line (guest reboot) |
//! | [`devices`] | the config's devices (vsock, one fs per share) placed behind virtio-mmio transports at windows and GSIs |
//! | [`engine`] | [`engine::Machine`] (the build recipe) and [`engine::BuiltinEngine`] (vCPU threads) |
//! | [`virtio`] | the virtio-mmio transport, the [`virtio::VirtioDevice`] trait, the vhost-user frontend and in-process devices |
//!
//! The guest is hostile: anything a device reads from the guest (register
//! writes, queue addresses, descriptors) is validated once, and a bad value
//! fails that device, never the monitor.

pub mod boot;
pub mod bus;
pub mod cpu;
pub mod devices;
pub mod engine;
pub mod i8042;
pub mod memory;
pub mod mptable;
pub mod serial;
pub mod virtio;
pub mod vm;
