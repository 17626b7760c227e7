//! ACPI tables for guests whose kernel has ACPI (every distribution's):
//! RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT, built with rust-vmm's
//! `acpi_tables` crate and written into the BIOS area ([`ACPI_START`]).
//!
//! Kernels without ACPI (kvmini's default guest) ignore all of it and use
//! the MP table and the `virtio_mmio.device=` command-line words instead.
//!
//! The platform is hardware-reduced (no PM1 blocks, no SCI, no legacy PIC):
//! power-off goes through the FADT's sleep control register, reset through
//! its reset register, and the power button is a `PNP0C0C` device notified
//! by a Generic Event Device (see [`dsdt`]).

mod dsdt;

use std::fmt;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_PORT, ACPI_START, APIC_START, IOAPIC_START};

pub use dsdt::VirtioMmioDevice;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"KVMINI";
/// OEM table ID in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"KVMINI  ";
const OEM_REVISION: u32 = 1;
/// Tables start on this boundary (the RSDP needs 16).
const ALIGN: u64 = 16;

/// Offsets in the ACPI power block at [`ACPI_PORT`].
pub mod port {
    /// Sleep control register (FADT `SLEEP_CONTROL_REG`): the guest writes
    /// `SLP_EN | SLP_TYP << 2` to enter a sleep state; S5 is power-off.
    pub const SLEEP_CONTROL: u16 = 0;
    /// Sleep status register (FADT `SLEEP_STATUS_REG`): reads 0.
    pub const SLEEP_STATUS: u16 = 1;
    /// Reset register (FADT `RESET_REG`): [`super::RESET_VALUE`] resets.
    pub const RESET: u16 = 2;
    /// Written by the DSDT's `\_SB._INI` when the guest's ACPI interpreter
    /// starts: proof that the guest runs ACPI.
    pub const ACPI_PROBE: u16 = 3;
    /// Generic Event Device's event register: read by its `_EVT` method,
    /// bit 0 = power button pressed; cleared by the read.
    pub const GED_EVENT: u16 = 4;
}

/// What the guest writes to the reset register to reset.
pub const RESET_VALUE: u8 = 1;
/// `SLP_TYP` of S5 in the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The sleep control register's enable bit.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// GED event bit: the power button was pressed.
pub const GED_POWER_BUTTON: u8 = 1;
/// CMOS index of the RTC's century register (FADT `CENTURY`).
pub const RTC_CENTURY_INDEX: u8 = 0x32;
/// FADT IAPC_BOOT_ARCH: no VGA. Not "8042 present", so a kernel does not
/// probe the i8042 (kvmini models only its reset line), and not
/// "no CMOS RTC": the RTC is there.
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// What the tables describe.
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    /// vCPUs (local APIC IDs 0..vcpus).
    pub vcpus: u8,
    /// The virtio-mmio devices, in slot order.
    pub virtio: Vec<VirtioMmioDevice>,
}

/// Errors while building or writing the ACPI tables.
#[derive(Debug)]
pub enum AcpiError {
    /// No vCPUs to describe.
    NoCpus,
    /// The tables do not fit in the ACPI area.
    TooBig(u64),
    /// Writing a table to guest memory failed.
    WriteTable(&'static str, vm_memory::GuestMemoryError),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpus => write!(f, "no vCPUs to list in the MADT"),
            Self::TooBig(size) => write!(
                f,
                "the ACPI tables take {size} bytes, more than the {} of the ACPI area: \
                 use fewer devices",
                ACPI_END.0 - ACPI_START.0
            ),
            Self::WriteTable(name, e) => {
                write!(f, "cannot write the {name} table to guest memory: {e}")
            }
        }
    }
}

impl std::error::Error for AcpiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::WriteTable(_, e) => Some(e),
            _ => None,
        }
    }
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn io_register(offset: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PORT + offset),
    )
}

/// The FADT: hardware-reduced, DSDT at `dsdt`, sleep control/status and
/// reset registers in kvmini's ACPI power block.
fn fadt(dsdt: GuestAddress) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt.0)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.reset_reg = io_register(port::RESET);
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = io_register(port::SLEEP_CONTROL);
    f.sleep_status_reg = io_register(port::SLEEP_STATUS);
    f.century = RTC_CENTURY_INDEX;
    f.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    bytes(&f.finalize())
}

/// The MADT: one enabled local APIC per vCPU (APIC ID = index, as in the
/// MP table and CPUID), and the IOAPIC with GSIs from 0.
fn madt(vcpus: u8) -> Vec<u8> {
    // The LAPIC and IOAPIC sit below 4 GiB by construction.
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START.0 as u32),
    );
    for cpu in 0..vcpus {
        m.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the CPUs', as in the MP table.
    m.add_structure(IoApic::new(
        vcpus.saturating_add(1),
        IOAPIC_START.0 as u32,
        0,
    ));
    bytes(&m)
}

/// Where each table goes, in the order they are laid out after the RSDP.
struct Placement {
    at: GuestAddress,
    name: &'static str,
    data: Vec<u8>,
}

fn align_up(addr: u64) -> u64 {
    addr.div_ceil(ALIGN) * ALIGN
}

/// Builds every table for `config`, placed from [`ACPI_START`]: RSDP, DSDT,
/// FADT, MADT, XSDT. Returns them in that order.
fn build(config: &AcpiConfig) -> Result<Vec<Placement>, AcpiError> {
    if config.vcpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mut next = align_up(ACPI_START.0 + Rsdp::len() as u64);
    let mut place = |name: &'static str, data: Vec<u8>| {
        let at = GuestAddress(next);
        next = align_up(next + data.len() as u64);
        Placement { at, name, data }
    };
    let dsdt = place("DSDT", dsdt::dsdt(&config.virtio));
    let fadt = place("FADT", fadt(dsdt.at));
    let madt = place("MADT", madt(config.vcpus));
    let mut x = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    x.add_entry(fadt.at.0);
    x.add_entry(madt.at.0);
    let xsdt = place("XSDT", bytes(&x));
    let end = xsdt.at.0 + xsdt.data.len() as u64;
    if end > ACPI_END.0 {
        return Err(AcpiError::TooBig(end - ACPI_START.0));
    }
    let rsdp = Placement {
        at: ACPI_START,
        name: "RSDP",
        data: bytes(&Rsdp::new(OEM_ID, xsdt.at.0)),
    };
    Ok(vec![rsdp, dsdt, fadt, madt, xsdt])
}

/// Writes the ACPI tables for `config` into guest memory; returns the RSDP's
/// address (for the zero page's `acpi_rsdp_addr`).
pub fn setup_acpi(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<GuestAddress, AcpiError> {
    for t in build(config)? {
        mem.write_slice(&t.data, t.at)
            .map_err(|e| AcpiError::WriteTable(t.name, e))?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests;
