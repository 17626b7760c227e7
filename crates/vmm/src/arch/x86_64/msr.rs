//! Model-specific registers set before boot.

use std::fmt;

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// SYSENTER code segment.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// SYSENTER stack pointer.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// SYSENTER instruction pointer.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// SYSCALL segment selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// 64-bit SYSCALL target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// Compatibility-mode SYSCALL target.
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL RFLAGS mask.
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// SWAPGS shadow base.
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Time stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;
/// Miscellaneous feature enables.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MISC_ENABLE`: fast string operations.
pub const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// Default memory type and MTRR enable.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `MTRRdefType`: MTRRs enabled, default type write-back.
pub const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 0x6;

/// Errors while setting the boot MSRs.
#[derive(Debug)]
pub enum MsrError {
    /// Building the `kvm_msrs` structure failed.
    CreateMsrs(vmm_sys_util::fam::Error),
    /// KVM_SET_MSRS failed.
    SetMsrs(kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped at this MSR: KVM refused it.
    MsrNotSet {
        /// Index of the first MSR KVM did not set.
        index: u32,
        /// Its name.
        name: &'static str,
    },
}

impl fmt::Display for MsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateMsrs(e) => write!(f, "failed to build the MSR list: {e}"),
            Self::SetMsrs(e) => write!(f, "failed to set MSRs: {e}"),
            Self::MsrNotSet { index, name } => {
                write!(f, "KVM refused to set MSR {name} ({index:#x})")
            }
        }
    }
}

impl std::error::Error for MsrError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::CreateMsrs(e) => Some(e),
            Self::SetMsrs(e) => Some(e),
            Self::MsrNotSet { .. } => None,
        }
    }
}

/// The boot MSRs, with their names and values, in the order they are given to KVM.
pub const BOOT_MSRS: [(u32, &str, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, "IA32_SYSENTER_CS", 0),
    (MSR_IA32_SYSENTER_ESP, "IA32_SYSENTER_ESP", 0),
    (MSR_IA32_SYSENTER_EIP, "IA32_SYSENTER_EIP", 0),
    (MSR_STAR, "STAR", 0),
    (MSR_CSTAR, "CSTAR", 0),
    (MSR_KERNEL_GS_BASE, "KERNEL_GS_BASE", 0),
    (MSR_SYSCALL_MASK, "SYSCALL_MASK", 0),
    (MSR_LSTAR, "LSTAR", 0),
    (MSR_IA32_TSC, "IA32_TSC", 0),
    (
        MSR_IA32_MISC_ENABLE,
        "IA32_MISC_ENABLE",
        MSR_IA32_MISC_ENABLE_FAST_STRING,
    ),
    (MSR_MTRR_DEF_TYPE, "MTRRdefType", MTRR_ENABLE_WRITE_BACK),
];

/// The boot MSRs as `kvm_msr_entry`s.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    BOOT_MSRS
        .iter()
        .map(|&(index, _, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect()
}

/// Name of the MSR with `index` in [`BOOT_MSRS`].
fn msr_name(index: u32) -> &'static str {
    BOOT_MSRS
        .iter()
        .find(|(i, _, _)| *i == index)
        .map_or("unknown", |(_, name, _)| name)
}

/// Checks that KVM set all of `entries` (it reports how many it set, stopping at the first
/// failure).
fn check_all_set(entries: &[kvm_msr_entry], set: usize) -> Result<(), MsrError> {
    match entries.get(set) {
        None => Ok(()),
        Some(e) => Err(MsrError::MsrNotSet {
            index: e.index,
            name: msr_name(e.index),
        }),
    }
}

/// Sets the boot MSRs of `vcpu`.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::CreateMsrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::SetMsrs)?;
    check_all_set(&entries, set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msr_values() {
        let entries = boot_msr_entries();
        assert_eq!(entries.len(), BOOT_MSRS.len());
        for e in &entries {
            let expected = match e.index {
                MSR_IA32_MISC_ENABLE => 1,
                MSR_MTRR_DEF_TYPE => 0x806,
                _ => 0,
            };
            assert_eq!(e.data, expected, "MSR {:#x}", e.index);
        }
        for index in [
            MSR_IA32_SYSENTER_CS,
            MSR_LSTAR,
            MSR_IA32_TSC,
            MSR_SYSCALL_MASK,
        ] {
            assert!(entries.iter().any(|e| e.index == index));
        }
    }

    #[test]
    fn partial_set_names_the_refused_msr() {
        let entries = boot_msr_entries();
        assert!(check_all_set(&entries, entries.len()).is_ok());
        let err = check_all_set(&entries, 3).unwrap_err();
        assert!(matches!(
            err,
            MsrError::MsrNotSet {
                index: MSR_STAR,
                name: "STAR"
            }
        ));
        assert!(err.to_string().contains("STAR"));
    }

    #[test]
    fn set_on_real_vcpu() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        setup_msrs(&vcpu).unwrap();
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
        assert_eq!(msrs.as_slice()[0].data & 1, 1);
    }
}
