//! kvmini: a small Type-2 hypervisor on Linux KVM, built on the rust-vmm crates.
//!
//! The binary (`src/main.rs`) parses the command line ([`cli`]; the VM flags
//! are the `kvmini-flags` crate's) into the VMM core's validated
//! [`config::VmConfig`] and runs it where [`launch`] decides: on this host's
//! KVM ([`vmm::run`]), on QEMU's software CPU ([`tcg`]) or inside the
//! emulated machine ([`emulated`]; both drive QEMU through [`qemu`]); every
//! exit code is in [`outcome`];
//! `kvmini exec` ([`exec`]) runs one command in a throwaway VM, and the
//! default guest is built on first use ([`guest`]). The VMM core is the
//! `kvmini-vmm` crate (re-exported here, so `kvmini::vmm` and the rest keep
//! their paths), `kvmini bench` the `kvmini-bench` crate. The library exists
//! so that the tests can reach the pieces directly.

pub use kvmini_vmm::{arch, config, devices, exit, kvm, seccomp, stop, vmm};

pub mod cli;
pub mod emulated;
pub mod exec;
pub mod guest;
pub mod launch;
pub mod logger;
pub mod outcome;
pub mod qemu;
pub mod tcg;
