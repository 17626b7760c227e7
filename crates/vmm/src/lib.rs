//! kvmini's VMM core: a VM on Linux KVM from a validated [`config::VmConfig`]
//! to the reason it stopped ([`vmm::exit::VmExit`]), on the rust-vmm crates.
//!
//! Layers, lowest first (a module uses only those before it):
//! [`sync`] and [`exit`] (why a VM stops, and the signal that carries it),
//! [`seccomp`] and [`thread`] (how every VMM thread starts: signals blocked,
//! its seccomp filter installed, a deadline to wait for it),
//! [`arch`] (guest memory map, boot protocol, CPUID, ACPI and MP tables),
//! [`kvm`] (thin wrappers over kvm-ioctls: VM, vCPU threads),
//! [`devices`] (bus, legacy devices, virtio devices; they know nothing of
//! KVM), [`config`] (the validated VM description), [`vmm`] (builds the VM
//! and runs its event loop). [`stop`] is the process-wide clean stop on
//! host signals for commands that own things to undo.

pub mod arch;
pub mod config;
pub mod devices;
pub mod exit;
pub mod kvm;
pub mod seccomp;
pub mod stop;
pub mod sync;
/// Helpers for unit tests (this crate's, and the bench's through the
/// `test-utils` feature).
#[cfg(any(test, feature = "test-utils"))]
pub mod testutil;
pub mod thread;
pub mod vmm;
