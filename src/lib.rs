//! kvmini: a small Type-2 hypervisor on Linux KVM, built on the rust-vmm crates.
//!
//! The binary (`src/main.rs`) parses the command line into a validated
//! [`config::VmConfig`] and hands it to [`vmm::run`]. The library exists so
//! that the tests can reach the pieces directly.

pub mod arch;
pub mod bench;
pub mod cli;
pub mod config;
pub mod devices;
pub mod emulated;
pub mod exec;
pub mod guest;
pub mod kvm;
pub mod logger;
pub mod stop;
#[cfg(test)]
mod testutil;
pub mod vmm;
