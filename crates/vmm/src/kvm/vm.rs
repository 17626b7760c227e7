//! The KVM VM: guest memory slots, the in-kernel irqchip and PIT, irqfds
//! and ioeventfds.

use std::fmt;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM puts the three pages of its real-mode TSS (Intel only); just
/// below the IOAPIC/LAPIC window at the top of the 32-bit MMIO gap.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug)]
pub enum VmError {
    CreateVm(kvm_ioctls::Error),
    SetTssAddress(kvm_ioctls::Error),
    CreateIrqChip(kvm_ioctls::Error),
    CreatePit(kvm_ioctls::Error),
    MemoryRegion(u32, kvm_ioctls::Error),
    HostAddress(vm_memory::GuestMemoryError),
    RegisterIrqfd(u32, kvm_ioctls::Error),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateVm(e) => write!(f, "cannot create the KVM VM: {e}"),
            Self::SetTssAddress(e) => write!(f, "cannot set the TSS address: {e}"),
            Self::CreateIrqChip(e) => write!(f, "cannot create the in-kernel irqchip: {e}"),
            Self::CreatePit(e) => write!(f, "cannot create the in-kernel PIT: {e}"),
            Self::MemoryRegion(s, e) => write!(f, "cannot register memory slot {s}: {e}"),
            Self::HostAddress(e) => write!(f, "cannot find guest memory in the VMM: {e}"),
            Self::RegisterIrqfd(g, e) => write!(f, "cannot register an irqfd for GSI {g}: {e}"),
        }
    }
}

impl std::error::Error for VmError {}

pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM with an in-kernel irqchip and PIT, and maps `mem`.
    pub fn new(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::SetTssAddress)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        let vm = Vm { fd };
        vm.map_memory(mem)?;
        Ok(vm)
    }

    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(VmError::HostAddress)?;
            let desc = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // VMM keeps alive (through clones held by the vCPU threads and the
            // devices) for as long as the VM exists; the slot numbers are
            // unique and the guest ranges do not overlap (vm-memory checks).
            unsafe { self.fd.set_user_memory_region(desc) }
                .map_err(|e| VmError::MemoryRegion(slot, e))?;
        }
        Ok(())
    }

    /// Routes writes to `evt` into interrupt `gsi` of the in-kernel irqchip.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|e| VmError::RegisterIrqfd(gsi, e))
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
