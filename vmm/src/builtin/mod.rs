//! The builtin engine: husk-vmm runs the guest on KVM itself, with the
//! rust-vmm crates, instead of starting QEMU.
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`memory`] | guest RAM: one memfd (so the vhost-user daemons can map it), the x86 layout and the MMIO gap |
//! | [`bus`] | port-I/O and MMIO dispatch from vCPU exits to devices |
//! | [`virtio`] | the virtio-mmio transport, the [`virtio::VirtioDevice`] trait, the vhost-user frontend and in-process devices |
//!
//! The guest is hostile: anything a device reads from the guest (register
//! writes, queue addresses, descriptors) is validated once, and a bad value
//! fails that device, never the monitor.

pub mod bus;
pub mod memory;
pub mod virtio;
