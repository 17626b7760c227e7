//! Table contents as a kernel reads them: from guest memory, following the
//! RSDP's pointers, checking every checksum.

use super::*;
use crate::arch::x86_64::layout::{ram_regions, GED_IRQ, PVPANIC_PORT};

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&ram_regions(64 << 20)).unwrap()
}

fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
}

/// Reads the table at `at` (its length from its header), checks signature
/// and checksum.
fn table(mem: &GuestMemoryMmap, at: u64, sig: &[u8; 4]) -> Vec<u8> {
    let head = read(mem, at, 36);
    assert_eq!(&head[..4], sig, "signature at {at:#x}");
    let t = read(mem, at, u32_at(&head, 4) as usize);
    assert!(
        sums_to_zero(&t),
        "{} checksum",
        String::from_utf8_lossy(sig)
    );
    assert_eq!(&t[10..16], b"KVMINI");
    t
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The encoded EISA ID of `name` as the DSDT carries it (DWordConst).
fn eisa(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    acpi_tables::aml::EISAName::new(name).to_aml_bytes(&mut v);
    v
}

struct Tables {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn tables(config: &AcpiConfig) -> Tables {
    let m = mem();
    let rsdp_at = setup_acpi(&m, config).unwrap();
    assert_eq!(rsdp_at, ACPI_START);
    let rsdp = read(&m, rsdp_at.0, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert!(sums_to_zero(&rsdp[..20]), "RSDP checksum");
    assert!(sums_to_zero(&rsdp), "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP (has an XSDT)");
    let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    assert_eq!(entries.len(), 2);
    let fadt = table(&m, entries[0], b"FACP");
    let madt = table(&m, entries[1], b"APIC");
    let dsdt = table(&m, u64_at(&fadt, 140), b"DSDT");
    for at in entries.iter().chain([&u64_at(&fadt, 140)]) {
        assert!(
            (ACPI_START.0..ACPI_END.0).contains(at),
            "{at:#x} outside the ACPI area"
        );
        assert_eq!(at % 8, 0);
    }
    Tables { fadt, madt, dsdt }
}

fn config(vcpus: u8, virtio: usize) -> AcpiConfig {
    AcpiConfig {
        vcpus,
        virtio: (0..virtio as u32)
            .map(|i| VirtioMmioDevice {
                base: 0xd000_0000 + i * 0x1000,
                size: 0x1000,
                irq: 5 + i,
            })
            .collect(),
    }
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = tables(&config(1, 0));
    let flags = u32_at(&t.fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_ne!(flags & (1 << 4), 0, "power button is a device");
    // GAS: space 1 (I/O), 8 bits, offset 0, byte access, address.
    let gas = |off: usize| {
        (
            t.fadt[off],
            t.fadt[off + 1],
            t.fadt[off + 3],
            u64_at(&t.fadt, off + 4),
        )
    };
    let port = |p: u16| u64::from(ACPI_PORT + p);
    assert_eq!(gas(116), (1, 8, 1, port(port::RESET)), "RESET_REG");
    assert_eq!(t.fadt[128], RESET_VALUE);
    assert_eq!(
        gas(244),
        (1, 8, 1, port(port::SLEEP_CONTROL)),
        "SLEEP_CONTROL_REG"
    );
    assert_eq!(
        gas(256),
        (1, 8, 1, port(port::SLEEP_STATUS)),
        "SLEEP_STATUS_REG"
    );
    assert_eq!(t.fadt[108], RTC_CENTURY_INDEX);
    let boot_arch = u16::from_le_bytes([t.fadt[109], t.fadt[110]]);
    assert_eq!(
        boot_arch & (1 << 1),
        0,
        "no 8042: kernels must not probe it"
    );
    assert_eq!(boot_arch & (1 << 5), 0, "the CMOS RTC is there");
}

#[test]
fn madt_lists_every_vcpu_and_the_ioapic() {
    let t = tables(&config(3, 0));
    assert_eq!(u32_at(&t.madt, 36), APIC_START.0 as u32);
    let mut lapics = Vec::new();
    let mut ioapics = Vec::new();
    let mut off = 44;
    while off < t.madt.len() {
        let (kind, len) = (t.madt[off], t.madt[off + 1] as usize);
        match kind {
            0 => lapics.push((t.madt[off + 2], t.madt[off + 3], u32_at(&t.madt, off + 4))),
            1 => ioapics.push((
                t.madt[off + 2],
                u32_at(&t.madt, off + 4),
                u32_at(&t.madt, off + 8),
            )),
            other => panic!("unexpected MADT entry type {other}"),
        }
        off += len;
    }
    assert_eq!(off, t.madt.len());
    // (processor UID, APIC ID, enabled)
    assert_eq!(lapics, vec![(0, 0, 1), (1, 1, 1), (2, 2, 1)]);
    assert_eq!(ioapics, vec![(4, IOAPIC_START.0 as u32, 0)]);
}

#[test]
fn dsdt_describes_every_device() {
    let t = tables(&config(2, 3));
    let d = &t.dsdt;
    assert_eq!(&d[..4], b"DSDT");
    for dev in ["VR00", "VR01", "VR02"] {
        assert!(contains(d, dev.as_bytes()), "{dev}");
    }
    assert_eq!(d.windows(9).filter(|w| w == b"LNRO0005\0").count(), 3);
    // Each virtio window (Memory32Fixed: base, size) and IRQ (Extended
    // IRQ: edge, active-high, consumer; one GSI).
    for i in 0..3u32 {
        let mut window = vec![0x86, 9, 0, 1];
        window.extend((0xd000_0000 + i * 0x1000).to_le_bytes());
        window.extend(0x1000u32.to_le_bytes());
        assert!(contains(d, &window), "window of VR0{i}");
        let mut int = vec![0x89, 6, 0, 0b0011, 1];
        int.extend((5 + i).to_le_bytes());
        assert!(contains(d, &int), "IRQ of VR0{i}");
    }
    for hid in ["PNP0501", "PNP0B00", "PNP0C0C"] {
        assert!(contains(d, &eisa(hid)), "{hid}");
    }
    for hid in ["QEMU0001", "ACPI0013"] {
        assert!(contains(d, format!("{hid}\0").as_bytes()), "{hid}");
    }
    // COM1: ports 0x3f8-0x3ff, IRQ 4.
    assert!(contains(d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]));
    assert!(contains(d, &[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]));
    // pvpanic's port, the GED's IRQ, the power-off sleep type.
    let pv = PVPANIC_PORT.to_le_bytes();
    assert!(contains(d, &[0x47, 1, pv[0], pv[1], pv[0], pv[1], 1, 1]));
    assert!(contains(
        d,
        &[0x89, 6, 0, 0b0011, 1, GED_IRQ as u8, 0, 0, 0]
    ));
    assert!(contains(d, b"_S5_"));
    assert!(contains(d, b"_EVT"));
    assert!(contains(d, b"_INI"));
}

#[test]
fn errors() {
    assert!(matches!(
        setup_acpi(&mem(), &config(0, 0)),
        Err(AcpiError::NoCpus)
    ));
    // The most devices kvmini places still fit, with every vCPU it allows.
    let max = crate::arch::x86_64::layout::VIRTIO_MAX_DEVICES as usize;
    tables(&config(crate::config::MAX_VCPUS as u8, max));
    let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let e = setup_acpi(&small, &config(1, 0)).unwrap_err();
    assert!(matches!(e, AcpiError::WriteTable("RSDP", _)), "{e}");
}
