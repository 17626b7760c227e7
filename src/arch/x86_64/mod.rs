//! x86_64 boot support: memory layout, kernel loading, boot tables and vCPU setup.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
