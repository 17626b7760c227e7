//! kvmini: a small Type-2 hypervisor on Linux KVM, built on the rust-vmm crates.
//!
//! The binary (`src/main.rs`) parses the command line ([`cli`]) into the VMM
//! core's validated [`config::VmConfig`] ([`flags`]) and runs it: on this
//! host's KVM ([`vmm::run`]) or inside the emulated machine ([`emulated`]);
//! `kvmini exec` ([`exec`]) runs one command in a throwaway VM, and the
//! default guest is built on first use ([`guest`]). The VMM core is the
//! `kvmini-vmm` crate (re-exported here, so `kvmini::vmm` and the rest keep
//! their paths), `kvmini bench` the `kvmini-bench` crate. The library exists
//! so that the tests can reach the pieces directly.

pub use kvmini_vmm::{arch, config, devices, kvm, stop, vmm};

pub mod cli;
pub mod emulated;
pub mod exec;
pub mod flags;
pub mod guest;
pub mod logger;
