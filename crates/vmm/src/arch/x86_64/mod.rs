//! x86_64 boot support: memory layout, kernel loading, boot tables and vCPU setup.
//!
//! The VMM builder uses it in this order: [`layout::ram_regions`] to create guest memory,
//! [`boot::load_kernel`], [`boot::load_initrd`], [`boot::load_cmdline`],
//! [`acpi::setup_acpi`], [`boot::configure_system`] (with the RSDP's address),
//! [`mptable::setup_mptable`], then per vCPU
//! [`cpuid::filter_cpuid`] and [`configure_vcpu`].

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

use std::fmt;

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub use boot::BootError;
pub use interrupts::InterruptsError;
pub use mptable::MptableError;
pub use msr::MsrError;
pub use regs::RegsError;

/// Errors of the x86_64 boot code.
#[derive(Debug)]
pub enum Error {
    /// Loading the kernel, initrd or command line, or writing boot_params, failed.
    Boot(BootError),
    /// Writing the MP table failed.
    Mptable(MptableError),
    /// KVM_SET_CPUID2 failed.
    SetCpuid(kvm_ioctls::Error),
    /// Setting the boot MSRs failed.
    Msrs(MsrError),
    /// Setting the boot registers failed.
    Regs(RegsError),
    /// Configuring the local APIC failed.
    Interrupts(InterruptsError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Boot(e) => write!(f, "boot setup: {e}"),
            Self::Mptable(e) => write!(f, "MP table: {e}"),
            Self::SetCpuid(e) => write!(f, "failed to set vCPU CPUID: {e}"),
            Self::Msrs(e) => write!(f, "vCPU MSRs: {e}"),
            Self::Regs(e) => write!(f, "vCPU registers: {e}"),
            Self::Interrupts(e) => write!(f, "vCPU local APIC: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Boot(e) => Some(e),
            Self::Mptable(e) => Some(e),
            Self::SetCpuid(e) => Some(e),
            Self::Msrs(e) => Some(e),
            Self::Regs(e) => Some(e),
            Self::Interrupts(e) => Some(e),
        }
    }
}

impl From<BootError> for Error {
    fn from(e: BootError) -> Self {
        Self::Boot(e)
    }
}

impl From<MptableError> for Error {
    fn from(e: MptableError) -> Self {
        Self::Mptable(e)
    }
}

impl From<MsrError> for Error {
    fn from(e: MsrError) -> Self {
        Self::Msrs(e)
    }
}

impl From<RegsError> for Error {
    fn from(e: RegsError) -> Self {
        Self::Regs(e)
    }
}

impl From<InterruptsError> for Error {
    fn from(e: InterruptsError) -> Self {
        Self::Interrupts(e)
    }
}

/// Configures one vCPU for the 64-bit Linux boot protocol: CPUID (already filtered for
/// this vCPU), boot MSRs, long-mode registers entering at `entry`, FPU, and LINT0/LINT1.
///
/// Like Firecracker, every vCPU gets the full setup: with the in-kernel irqchip the APs
/// wait for INIT/SIPI from the BSP, which resets their registers, so the register state
/// given to them is harmless. `is_bsp` is only used for logging. Needs the in-kernel
/// irqchip (KVM_CREATE_IRQCHIP) to exist before the vCPU was created.
pub fn configure_vcpu(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    kvm_cpuid: &CpuId,
    entry: GuestAddress,
    is_bsp: bool,
) -> Result<(), Error> {
    vcpu.set_cpuid2(kvm_cpuid).map_err(Error::SetCpuid)?;
    msr::setup_msrs(vcpu)?;
    regs::setup_regs(vcpu, entry)?;
    regs::setup_fpu(vcpu)?;
    regs::setup_sregs(mem, vcpu)?;
    interrupts::set_lint(vcpu)?;
    log::debug!(
        "configured {} vCPU, entry {:#x}",
        if is_bsp { "boot" } else { "application" },
        entry.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::Kvm;

    #[test]
    fn configure_all_vcpus_on_kvm() {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&layout::ram_regions(64 << 20)).unwrap();
        mptable::setup_mptable(&mem, 2).unwrap();
        let entry = GuestAddress(0x100_0000);
        for i in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(i)).unwrap();
            let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
            cpuid::filter_cpuid(&mut cpuid, i, 2, false);
            configure_vcpu(&mem, &vcpu, &cpuid, entry, i == 0).unwrap();
            assert_eq!(vcpu.get_regs().unwrap().rip, 0x100_0000);
            let got = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let leaf1 = got.as_slice().iter().find(|e| e.function == 1).unwrap();
            assert_eq!(leaf1.ebx >> 24, u32::from(i));
        }
    }

    /// Boots a tiny 64-bit "kernel" through the whole boot path and watches it run:
    /// `mov dx, 0x3f8; mov al, 'K'; out dx, al; mov al, '!'; out dx, al; hlt`.
    /// (With the in-kernel irqchip KVM handles `hlt` itself, so the test stops at the second
    /// port write instead of waiting for a halt exit.)
    #[test]
    fn tiny_guest_runs_in_long_mode() {
        use kvm_bindings::kvm_userspace_memory_region;
        use kvm_ioctls::VcpuExit;
        use std::io::{Seek, Write};
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::from_ranges(&layout::ram_regions(32 << 20)).unwrap();
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = mem.get_host_address(region.start_addr()).unwrap();
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which outlives the VM.
            unsafe { vm.set_user_memory_region(r) }.unwrap();
        }

        // Hand-made ELF64: header, one PT_LOAD at 16 MiB, code.
        let code = [
            0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xb0, b'!', 0xee, 0xf4,
        ];
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[16] = 2; // ET_EXEC
        elf[18] = 62; // x86_64
        elf[20] = 1;
        elf[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[ph + 16..ph + 24].copy_from_slice(&0x100_0000u64.to_le_bytes()); // p_vaddr
        elf[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // p_paddr
        elf[ph + 32..ph + 40].copy_from_slice(&(code.len() as u64).to_le_bytes());
        elf[ph + 40..ph + 48].copy_from_slice(&(code.len() as u64).to_le_bytes());
        elf.extend_from_slice(&code);
        let mut file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.write_all(&elf).unwrap();
        file.rewind().unwrap();

        let kernel = boot::load_kernel(&mem, &mut file).unwrap();
        let mut cmdline = linux_loader::cmdline::Cmdline::new(layout::CMDLINE_MAX_SIZE).unwrap();
        cmdline.insert_str("console=ttyS0").unwrap();
        boot::load_cmdline(&mem, &cmdline).unwrap();
        boot::configure_system(&mem, 14, None, kernel.setup_header, None).unwrap();
        mptable::setup_mptable(&mem, 1).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        cpuid::filter_cpuid(&mut cpuid, 0, 1, false);
        configure_vcpu(&mem, &vcpu, &cpuid, kernel.entry, true).unwrap();

        let mut vcpu = vcpu;
        for expected in [b"K", b"!"] {
            match vcpu.run().unwrap() {
                VcpuExit::IoOut(port, data) => assert_eq!((port, data), (0x3f8, &expected[..])),
                other => panic!("unexpected exit {other:?}"),
            }
        }
        let rip = vcpu.get_regs().unwrap().rip;
        assert_eq!(rip, 0x100_0000 + 10); // just past the second `out`
    }

    #[test]
    fn error_display_and_source() {
        let e = Error::from(MptableError::NoCpus);
        assert!(e.to_string().contains("MP table"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
