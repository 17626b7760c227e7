//! Architecture-specific boot code. kvmini targets x86_64 only.

pub mod x86_64;
