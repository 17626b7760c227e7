//! Fuzz harnesses for kvmini's guest-facing code (issue 16, item 5).
//!
//! Each module is one libFuzzer target (`fuzz_targets/<name>.rs` calls its
//! `run`) and documents its input format and the invariants it asserts; a
//! failed assertion or any panic in kvmini is a finding. The inputs are
//! plain byte streams read with [`input::Input`] (zeros past the end), so
//! `examples/gen_corpus.rs` can write the seed corpus with the same
//! encoders ([`seeds`]).
//!
//! - [`mmio`]: the virtio-mmio register protocol in front of each device;
//! - [`block`], [`net`], [`console`]: the devices' queues, with guest
//!   memory, descriptor tables and rings from the input ([`guest`]);
//! - [`kernel`]: ELF and bzImage kernel images;
//! - [`share`]: `exec --share`'s copy-back of the archive the guest sends.

pub mod block;
pub mod console;
pub mod guest;
pub mod input;
pub mod kernel;
pub mod mmio;
pub mod net;
pub mod seeds;
pub mod share;

/// A target's name (as `run.sh` and the corpus know it) and entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 6] = [
    ("mmio", mmio::run),
    ("block", block::run),
    ("net", net::run),
    ("console", console::run),
    ("kernel", kernel::run),
    ("share", share::run),
];
