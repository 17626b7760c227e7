//! Local APIC setup: LINT0 delivers ExtINT (the legacy PIC), LINT1 delivers NMI.

use std::fmt;

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// Offset of the LVT LINT0 register in the local APIC page.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the local APIC page.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode field of an LVT register (bits 10:8).
const APIC_DELIVERY_MODE_MASK: u32 = 0x7 << 8;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;
/// Delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while configuring the local APIC.
#[derive(Debug)]
pub enum InterruptsError {
    /// KVM_GET_LAPIC failed.
    GetLapic(kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    SetLapic(kvm_ioctls::Error),
    /// A register offset lies outside the local APIC page.
    RegisterOutOfRange(usize),
}

impl fmt::Display for InterruptsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GetLapic(e) => write!(f, "failed to get the local APIC state: {e}"),
            Self::SetLapic(e) => write!(f, "failed to set the local APIC state: {e}"),
            Self::RegisterOutOfRange(off) => {
                write!(f, "local APIC register offset {off:#x} is out of range")
            }
        }
    }
}

impl std::error::Error for InterruptsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::GetLapic(e) | Self::SetLapic(e) => Some(e),
            Self::RegisterOutOfRange(_) => None,
        }
    }
}

/// Reads the 32-bit register at `offset` of the local APIC state.
pub fn get_klapic_reg(klapic: &kvm_lapic_state, offset: usize) -> Result<u32, InterruptsError> {
    let end = offset
        .checked_add(4)
        .ok_or(InterruptsError::RegisterOutOfRange(offset))?;
    let bytes = klapic
        .regs
        .get(offset..end)
        .ok_or(InterruptsError::RegisterOutOfRange(offset))?;
    let mut raw = [0u8; 4];
    for (dst, src) in raw.iter_mut().zip(bytes) {
        // c_char -> u8 reinterprets the bit pattern, which is what we want.
        *dst = *src as u8;
    }
    Ok(u32::from_le_bytes(raw))
}

/// Writes the 32-bit register at `offset` of the local APIC state.
pub fn set_klapic_reg(
    klapic: &mut kvm_lapic_state,
    offset: usize,
    value: u32,
) -> Result<(), InterruptsError> {
    let end = offset
        .checked_add(4)
        .ok_or(InterruptsError::RegisterOutOfRange(offset))?;
    let bytes = klapic
        .regs
        .get_mut(offset..end)
        .ok_or(InterruptsError::RegisterOutOfRange(offset))?;
    for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
        // u8 -> c_char reinterprets the bit pattern, which is what we want.
        *dst = src as std::os::raw::c_char;
    }
    Ok(())
}

/// `reg` with its delivery mode replaced by `mode`.
pub const fn set_apic_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !APIC_DELIVERY_MODE_MASK) | ((mode << 8) & APIC_DELIVERY_MODE_MASK)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `klapic`.
pub fn configure_lint(klapic: &mut kvm_lapic_state) -> Result<(), InterruptsError> {
    let lvt0 = get_klapic_reg(klapic, APIC_LVT0)?;
    set_klapic_reg(
        klapic,
        APIC_LVT0,
        set_apic_delivery_mode(lvt0, APIC_MODE_EXTINT),
    )?;
    let lvt1 = get_klapic_reg(klapic, APIC_LVT1)?;
    set_klapic_reg(
        klapic,
        APIC_LVT1,
        set_apic_delivery_mode(lvt1, APIC_MODE_NMI),
    )
}

/// Configures the LINT0/LINT1 pins of the local APIC of `vcpu` (needs the in-kernel irqchip).
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), InterruptsError> {
    let mut klapic = vcpu.get_lapic().map_err(InterruptsError::GetLapic)?;
    configure_lint(&mut klapic)?;
    vcpu.set_lapic(&klapic).map_err(InterruptsError::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_round_trip() {
        let mut klapic = kvm_lapic_state::default();
        set_klapic_reg(&mut klapic, APIC_LVT0, 0xdead_beef).unwrap();
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT0).unwrap(), 0xdead_beef);
        assert_eq!(klapic.regs[APIC_LVT0] as u8, 0xef); // little endian
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT1).unwrap(), 0);
    }

    #[test]
    fn out_of_range_offsets() {
        let mut klapic = kvm_lapic_state::default();
        assert!(get_klapic_reg(&klapic, 1021).is_err());
        assert!(set_klapic_reg(&mut klapic, usize::MAX, 0).is_err());
        assert!(get_klapic_reg(&klapic, 1020).is_ok());
    }

    #[test]
    fn delivery_mode_only_touches_bits_10_8() {
        assert_eq!(
            set_apic_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(
            set_apic_delivery_mode(0xffff_ffff, APIC_MODE_NMI),
            0xffff_fcff
        );
        assert_eq!(set_apic_delivery_mode(0x700, 0), 0);
    }

    #[test]
    fn lint_configuration() {
        let mut klapic = kvm_lapic_state::default();
        set_klapic_reg(&mut klapic, APIC_LVT0, 0x0001_0000).unwrap(); // masked
        configure_lint(&mut klapic).unwrap();
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT0).unwrap(), 0x0001_0700);
        assert_eq!(get_klapic_reg(&klapic, APIC_LVT1).unwrap(), 0x400);
    }

    #[test]
    fn set_lint_on_real_vcpu() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        set_lint(&vcpu).unwrap();
        let klapic = vcpu.get_lapic().unwrap();
        let lvt0 = get_klapic_reg(&klapic, APIC_LVT0).unwrap();
        let lvt1 = get_klapic_reg(&klapic, APIC_LVT1).unwrap();
        assert_eq!(lvt0 & APIC_DELIVERY_MODE_MASK, APIC_MODE_EXTINT << 8);
        assert_eq!(lvt1 & APIC_DELIVERY_MODE_MASK, APIC_MODE_NMI << 8);
    }
}
