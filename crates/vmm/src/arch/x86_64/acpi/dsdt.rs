//! The DSDT: every device a kernel cannot find by itself, in AML built with
//! `acpi_tables::aml`.
//!
//! ```text
//! \_S5_                      Package { 5 }: SLP_TYP of power-off
//! \_SB_._INI                 writes the probe port: "the guest runs ACPI"
//! \_SB_.COM1  PNP0501        16550 at 0x3f8, IRQ 4
//! \_SB_.RTC_  PNP0B00        CMOS RTC at 0x70 (no IRQ: kvmini's RTC has none)
//! \_SB_.PVPN  QEMU0001       pvpanic at 0x505
//! \_SB_.PWRB  PNP0C0C        power button
//! \_SB_.GED_  ACPI0013       Generic Event Device: its interrupt runs _EVT,
//!                            which reads the event port and notifies PWRB
//! \_SB_.VRnn  LNRO0005       one per virtio-mmio device: window and IRQ
//! ```
//! Interrupts are edge-triggered and active-high, as kvmini's irqfds
//! deliver them.

use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Interrupt, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path,
    ResourceTemplate, Scope, Store, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{port, GED_POWER_BUTTON, OEM_ID, OEM_REVISION, OEM_TABLE_ID, S5_SLEEP_TYPE};
use crate::arch::x86_64::layout::{ACPI_PORT, GED_IRQ, PVPANIC_PORT, RTC_PORT, SERIAL_IRQ};

/// COM1's first port and its number of ports.
const COM1_PORT: u16 = 0x3f8;
const COM1_PORTS: u8 = 8;
/// DSDT revision 2: 64-bit integers in AML.
const DSDT_REVISION: u8 = 2;
/// Notify value of a power button press.
const NOTIFY_POWER_BUTTON: u8 = 0x80;

/// One virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Start of its MMIO window (below 4 GiB).
    pub base: u32,
    /// Size of the window.
    pub size: u32,
    /// Its GSI (IOAPIC pin).
    pub irq: u32,
}

/// An edge-triggered, active-high, exclusive interrupt the device consumes.
fn irq(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// A fixed range of `len` I/O ports from `base`.
fn ports(base: u16, len: u8) -> IO {
    IO::new(base, base, 1, len)
}

fn com1() -> Vec<u8> {
    let io = ports(COM1_PORT, COM1_PORTS);
    let int = irq(SERIAL_IRQ);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    aml_bytes(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn rtc() -> Vec<u8> {
    let io = ports(RTC_PORT, 2);
    let crs = ResourceTemplate::new(vec![&io]);
    aml_bytes(&Device::new(
        "RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn pvpanic() -> Vec<u8> {
    let io = ports(PVPANIC_PORT, 1);
    let crs = ResourceTemplate::new(vec![&io]);
    aml_bytes(&Device::new(
        "PVPN".into(),
        vec![
            &Name::new("_HID".into(), &"QEMU0001"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn power_button() -> Vec<u8> {
    aml_bytes(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    ))
}

/// The Generic Event Device: on its interrupt the kernel runs `_EVT`,
/// which reads (and so clears) the event register and, for the power
/// button bit, notifies `\_SB_.PWRB`.
fn ged() -> Vec<u8> {
    let int = irq(GED_IRQ);
    let crs = ResourceTemplate::new(vec![&int]);
    let event_port = ACPI_PORT + port::GED_EVENT;
    let region = OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &event_port, &1u8);
    let field = Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let gdat = Path::new("GDAT");
    let read = Store::new(&aml::Local(0), &gdat);
    let masked = aml::And::new(&aml::Local(1), &aml::Local(0), &GED_POWER_BUTTON);
    let pwrb = Path::new("\\_SB_.PWRB");
    let notify = Notify::new(&pwrb, &NOTIFY_POWER_BUTTON);
    let pressed = aml::Equal::new(&aml::Local(1), &GED_POWER_BUTTON);
    let on_press = If::new(&pressed, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&read, &masked, &on_press]);
    aml_bytes(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &region,
            &field,
            &evt,
        ],
    ))
}

/// `\_SB_._INI`, which ACPICA runs first when it initializes the namespace:
/// writes 1 to the probe port, so kvmini knows the guest runs ACPI.
fn probe() -> Vec<u8> {
    let probe_port = ACPI_PORT + port::ACPI_PROBE;
    let region = OpRegion::new("PRBE".into(), OpRegionSpace::SystemIO, &probe_port, &1u8);
    let field = Field::new(
        "PRBE".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"PRBV", 8)],
    );
    let prbv = Path::new("PRBV");
    let write = Store::new(&prbv, &aml::ONE);
    let ini = Method::new("_INI".into(), 0, false, vec![&write]);
    let mut v = aml_bytes(&region);
    v.extend(aml_bytes(&field));
    v.extend(aml_bytes(&ini));
    v
}

fn virtio(index: usize, dev: &VirtioMmioDevice) -> Vec<u8> {
    let name = format!("VR{:02}", index % 100);
    let window = Memory32Fixed::new(true, dev.base, dev.size);
    let int = irq(dev.irq);
    let crs = ResourceTemplate::new(vec![&window, &int]);
    let uid = index as u32;
    aml_bytes(&Device::new(
        name.as_str().into(),
        vec![
            &Name::new("_HID".into(), &"LNRO0005"),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

/// The DSDT for these virtio-mmio devices (plus the fixed devices above).
pub fn dsdt(devices: &[VirtioMmioDevice]) -> Vec<u8> {
    let mut sb = Vec::new();
    sb.extend(probe());
    sb.extend(com1());
    sb.extend(rtc());
    sb.extend(pvpanic());
    sb.extend(power_button());
    sb.extend(ged());
    for (i, dev) in devices.iter().enumerate() {
        sb.extend(virtio(i, dev));
    }
    let mut body = Scope::raw("\\_SB_".into(), sb);
    body.extend(aml_bytes(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE]),
    )));
    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    table.as_slice().to_vec()
}
