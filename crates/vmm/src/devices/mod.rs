//! Device models. They know nothing about KVM: the vCPU loop hands them
//! port and MMIO accesses through [`bus::Bus`], and they raise interrupts
//! through eventfds that the VM wires to irqfds.

pub mod acpi;
pub mod bus;
pub mod child;
pub mod events;
pub mod legacy;
pub mod output;
pub mod rate_limiter;
pub mod virtio;
