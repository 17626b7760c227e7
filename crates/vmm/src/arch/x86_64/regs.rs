//! Register state of a vCPU entering the kernel through the 64-bit Linux boot protocol:
//! long mode, flat segments, identity-mapped first GiB, `rsi` pointing at `boot_params`.

use std::fmt;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{gdt_entry, kvm_segment_from_gdt, CODE64_FLAGS, DATA_FLAGS, TSS_FLAGS};
use super::layout::{
    BOOT_GDT_MAX, BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START,
    PML4_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Page table entry flags.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
/// Number of 2 MiB pages mapped by the boot PDE (1 GiB).
const PDE_ENTRIES: u64 = 512;

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; BOOT_GDT_MAX] = [
    gdt_entry(0, 0, 0),
    gdt_entry(CODE64_FLAGS, 0, 0xfffff),
    gdt_entry(DATA_FLAGS, 0, 0xfffff),
    gdt_entry(TSS_FLAGS, 0, 0xfffff),
];

/// Errors while setting up vCPU registers.
#[derive(Debug)]
pub enum RegsError {
    /// KVM_SET_REGS failed.
    SetRegs(kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    SetFpu(kvm_ioctls::Error),
    /// KVM_GET_SREGS failed.
    GetSregs(kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    SetSregs(kvm_ioctls::Error),
    /// Writing the GDT to guest memory failed.
    WriteGdt(vm_memory::GuestMemoryError),
    /// Writing the IDT to guest memory failed.
    WriteIdt(vm_memory::GuestMemoryError),
    /// Writing the PML4 to guest memory failed.
    WritePml4(vm_memory::GuestMemoryError),
    /// Writing the PDPTE to guest memory failed.
    WritePdpte(vm_memory::GuestMemoryError),
    /// Writing the PDE to guest memory failed.
    WritePde(vm_memory::GuestMemoryError),
    /// A PDE entry address overflowed.
    PdeAddressOverflow,
}

impl fmt::Display for RegsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetRegs(e) => write!(f, "failed to set general purpose registers: {e}"),
            Self::SetFpu(e) => write!(f, "failed to set FPU registers: {e}"),
            Self::GetSregs(e) => write!(f, "failed to get special registers: {e}"),
            Self::SetSregs(e) => write!(f, "failed to set special registers: {e}"),
            Self::WriteGdt(e) => write!(f, "failed to write the boot GDT: {e}"),
            Self::WriteIdt(e) => write!(f, "failed to write the boot IDT: {e}"),
            Self::WritePml4(e) => write!(f, "failed to write the boot PML4: {e}"),
            Self::WritePdpte(e) => write!(f, "failed to write the boot PDPTE: {e}"),
            Self::WritePde(e) => write!(f, "failed to write the boot PDE: {e}"),
            Self::PdeAddressOverflow => write!(f, "boot PDE address overflowed"),
        }
    }
}

impl std::error::Error for RegsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::SetRegs(e) | Self::SetFpu(e) | Self::GetSregs(e) | Self::SetSregs(e) => Some(e),
            Self::WriteGdt(e)
            | Self::WriteIdt(e)
            | Self::WritePml4(e)
            | Self::WritePdpte(e)
            | Self::WritePde(e) => Some(e),
            Self::PdeAddressOverflow => None,
        }
    }
}

/// General purpose registers at the 64-bit kernel entry point.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START.0,
        ..Default::default()
    }
}

/// Sets the general purpose registers of `vcpu` for entering the kernel at `entry`.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(entry)).map_err(RegsError::SetRegs)
}

/// FPU state at boot: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Sets the FPU registers of `vcpu`.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(RegsError::SetFpu)
}

/// Writes the boot GDT and an empty IDT to guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    mem.write_obj(BOOT_GDT, BOOT_GDT_START)
        .map_err(RegsError::WriteGdt)?;
    mem.write_obj(0u64, BOOT_IDT_START)
        .map_err(RegsError::WriteIdt)
}

/// Entry `i` of the PDE identity-mapping the first GiB with 2 MiB pages.
const fn boot_pde_entry(i: u64) -> u64 {
    (i << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE
}

/// Writes page tables identity-mapping the first GiB: PML4[0] -> PDPTE[0] -> PDE (2 MiB pages).
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    mem.write_obj(PDPTE_START.0 | PTE_PRESENT | PTE_WRITABLE, PML4_START)
        .map_err(RegsError::WritePml4)?;
    mem.write_obj(PDE_START.0 | PTE_PRESENT | PTE_WRITABLE, PDPTE_START)
        .map_err(RegsError::WritePdpte)?;
    for i in 0..PDE_ENTRIES {
        let addr = PDE_START
            .checked_add(i * 8)
            .ok_or(RegsError::PdeAddressOverflow)?;
        mem.write_obj(boot_pde_entry(i), addr)
            .map_err(RegsError::WritePde)?;
    }
    Ok(())
}

/// Applies the long-mode boot configuration to `sregs` (as read from KVM): flat segments
/// from the boot GDT, GDT/IDT registers, paging with PAE and long mode enabled.
pub fn configure_boot_sregs(sregs: &mut kvm_sregs) {
    let code = kvm_segment_from_gdt(BOOT_GDT[1], 1);
    let data = kvm_segment_from_gdt(BOOT_GDT[2], 2);
    let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);

    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.0;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr3 = PML4_START.0;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Writes the GDT, IDT and page tables to guest memory and puts `vcpu` in long mode.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    write_gdt_idt(mem)?;
    write_page_tables(mem)?;
    configure_boot_sregs(&mut sregs);
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn regs_point_at_entry_stack_and_zero_page() {
        let regs = boot_regs(GuestAddress(0x100_0000));
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rflags, 2);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rsi, ZERO_PAGE_START.0);
        assert_eq!((regs.rax, regs.rdi), (0, 0));
    }

    #[test]
    fn fpu_defaults() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn gdt_and_idt_written() {
        let m = mem();
        write_gdt_idt(&m).unwrap();
        for (i, e) in BOOT_GDT.iter().enumerate() {
            let addr = m.checked_offset(BOOT_GDT_START, i * 8).unwrap();
            assert_eq!(m.read_obj::<u64>(addr).unwrap(), *e);
        }
        assert_eq!(m.read_obj::<u64>(BOOT_IDT_START).unwrap(), 0);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let m = mem();
        write_page_tables(&m).unwrap();
        assert_eq!(m.read_obj::<u64>(PML4_START).unwrap(), 0xa003);
        assert_eq!(m.read_obj::<u64>(PDPTE_START).unwrap(), 0xb003);
        for i in 0..512u64 {
            let addr = m.checked_offset(PDE_START, (i * 8) as usize).unwrap();
            assert_eq!(m.read_obj::<u64>(addr).unwrap(), (i << 21) | 0x83);
        }
        // Nothing beyond the single PML4 / PDPTE entry.
        let next = m.checked_offset(PML4_START, 8).unwrap();
        assert_eq!(m.read_obj::<u64>(next).unwrap(), 0);
        let next = m.checked_offset(PDPTE_START, 8).unwrap();
        assert_eq!(m.read_obj::<u64>(next).unwrap(), 0);
    }

    #[test]
    fn page_tables_need_memory() {
        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        assert!(matches!(
            write_page_tables(&tiny),
            Err(RegsError::WritePml4(_))
        ));
    }

    #[test]
    fn sregs_in_long_mode() {
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        configure_boot_sregs(&mut sregs);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x520, 7));
        assert_eq!(sregs.cs.selector, 0x08);
        assert_eq!(sregs.cs.l, 1);
        for s in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((s.selector, s.type_, s.present), (0x10, 3, 1));
        }
        assert_eq!(sregs.tr.selector, 0x18);
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.cr0, 0x6000_0010 | 0x8000_0011);
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
    }

    #[test]
    fn setup_on_real_vcpu() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let m = mem();
        setup_regs(&vcpu, GuestAddress(0x100_0000)).unwrap();
        setup_fpu(&vcpu).unwrap();
        setup_sregs(&m, &vcpu).unwrap();
        assert_eq!(vcpu.get_regs().unwrap().rip, 0x100_0000);
        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr3, 0x9000);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    }
}
