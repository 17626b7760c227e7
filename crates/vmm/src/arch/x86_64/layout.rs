//! The guest physical memory map, in one place and in address order.
//!
//! ```text
//! 0x0000_0500  boot GDT                  (BOOT_GDT_START)
//! 0x0000_0520  boot IDT                  (BOOT_IDT_START)
//! 0x0000_7000  zero page / boot_params   (ZERO_PAGE_START)
//! 0x0000_8ff0  initial stack pointer     (BOOT_STACK_POINTER)
//! 0x0000_9000  PML4                      (PML4_START)
//! 0x0000_a000  PDPTE                     (PDPTE_START)
//! 0x0000_b000  PDE (1 GiB, 2 MiB pages)  (PDE_START)
//! 0x0002_0000  kernel command line       (CMDLINE_START, CMDLINE_MAX_SIZE)
//! 0x0009_fc00  EBDA, MP table            (EBDA_START) .. 0xa0000, reserved to 1 MiB
//! 0x000e_0000  ACPI: RSDP, then tables   (ACPI_START) .. 1 MiB (BIOS area)
//! 0x0010_0000  kernel                    (HIMEM_START) .. end of low RAM
//! 0xd000_0000  MMIO gap: virtio-mmio slots (VIRTIO_MMIO_START)
//! 0xfec0_0000  IOAPIC                    (IOAPIC_START)
//! 0xfee0_0000  local APIC                (APIC_START)
//! 0x1_0000_0000 end of MMIO gap; RAM above 4 GiB continues here
//! ```

use vm_memory::GuestAddress;

/// Global descriptor table used for the 64-bit boot.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Number of entries in the boot GDT (null, code, data, TSS).
pub const BOOT_GDT_MAX: usize = 4;
/// Interrupt descriptor table used for the 64-bit boot (empty).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer (and frame pointer) of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page map of the boot page tables.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page directory pointer table of the boot page tables.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Page directory of the boot page tables: identity-maps the first GiB with 2 MiB pages.
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Maximum kernel command line size, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area; the MP table lives here. [EBDA_START, HIMEM_START) is reserved.
pub const EBDA_START: GuestAddress = GuestAddress(0x9fc00);
/// End (exclusive) of the area available for the MP table (start of the VGA hole).
pub const EBDA_END: GuestAddress = GuestAddress(0xa0000);
/// ACPI tables: the RSDP first (the spec has OSes search the BIOS area
/// 0xe0000..0xfffff for it on a 16-byte boundary), then XSDT, FADT, MADT
/// and DSDT. Outside e820 RAM, like everything in [EBDA_START, HIMEM_START).
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// End (exclusive) of the ACPI area.
pub const ACPI_END: GuestAddress = GuestAddress(0x10_0000);
/// Start of high memory: the kernel is loaded here.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);
/// Start of the 32-bit MMIO gap: no RAM between here and [`MMIO_GAP_END`].
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// First virtio-mmio device slot.
pub const VIRTIO_MMIO_START: GuestAddress = GuestAddress(MMIO_GAP_START);
/// Size of one virtio-mmio device slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: GuestAddress = GuestAddress(0xfec0_0000);
/// Local APIC registers.
pub const APIC_START: GuestAddress = GuestAddress(0xfee0_0000);
/// End (exclusive) of the MMIO gap: RAM above the gap starts here (4 GiB).
pub const MMIO_GAP_END: u64 = 1 << 32;
/// Size of the MMIO gap (768 MiB).
pub const MMIO_GAP_SIZE: u64 = MMIO_GAP_END - MMIO_GAP_START;

/// IRQ (IOAPIC pin) of the serial console (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed out to virtio-mmio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IRQ (the IOAPIC has 24 pins).
pub const IRQ_MAX: u32 = 23;
/// Maximum number of virtio-mmio devices (one IRQ each).
pub const VIRTIO_MAX_DEVICES: u32 = IRQ_MAX - VIRTIO_IRQ_BASE + 1;
/// IRQ of the ACPI Generic Event Device (the power button). ISA IRQ 3
/// (COM2's) is free: kvmini has one serial port.
pub const GED_IRQ: u32 = 3;

// Port I/O, in address order.
/// CMOS RTC: index port 0x70, data port 0x71.
pub const RTC_PORT: u16 = 0x70;
/// pvpanic (QEMU's ISA port): the guest's driver reads it at probe and
/// writes 1 when the kernel panics.
pub const PVPANIC_PORT: u16 = 0x505;
/// ACPI power block: sleep control (+0), sleep status (+1), reset (+2),
/// "the guest's ACPI interpreter runs" probe (+3), GED event (+4).
pub const ACPI_PORT: u16 = 0x600;
/// Length of the ACPI power block.
pub const ACPI_PORT_LEN: u16 = 5;

// Layout invariants, checked at compile time: the GDT fits before the IDT, the page tables
// are one page each, nothing runs into the command line, the command line ends before the
// EBDA, the virtio-mmio slots end before the IOAPIC.
const _: () = {
    assert!(BOOT_GDT_START.0 + (BOOT_GDT_MAX as u64) * 8 <= BOOT_IDT_START.0);
    assert!(BOOT_IDT_START.0 + 8 <= ZERO_PAGE_START.0);
    assert!(ZERO_PAGE_START.0 + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START.0);
    assert!(PDPTE_START.0 - PML4_START.0 == 0x1000);
    assert!(PDE_START.0 - PDPTE_START.0 == 0x1000);
    assert!(PDE_START.0 + 0x1000 <= CMDLINE_START.0);
    assert!(CMDLINE_START.0 + CMDLINE_MAX_SIZE as u64 <= EBDA_START.0);
    assert!(EBDA_END.0 <= ACPI_START.0 && ACPI_END.0 <= HIMEM_START.0);
    assert!(ACPI_START.0 % 16 == 0);
    assert!(GED_IRQ != SERIAL_IRQ && GED_IRQ < VIRTIO_IRQ_BASE);
    assert!((RTC_PORT as u32) + 2 <= PVPANIC_PORT as u32 && PVPANIC_PORT < ACPI_PORT);
    assert!(
        VIRTIO_MMIO_START.0 + VIRTIO_MAX_DEVICES as u64 * VIRTIO_MMIO_SLOT_SIZE <= IOAPIC_START.0
    );
};

/// Guest address of the virtio-mmio slot `index`, or `None` if there is no such slot.
pub fn virtio_mmio_slot(index: u32) -> Option<GuestAddress> {
    if index >= VIRTIO_MAX_DEVICES {
        return None;
    }
    u64::from(index)
        .checked_mul(VIRTIO_MMIO_SLOT_SIZE)
        .and_then(|off| VIRTIO_MMIO_START.0.checked_add(off))
        .map(GuestAddress)
}

/// IRQ of the virtio-mmio device in slot `index`, or `None` if there is no such slot.
pub fn virtio_irq(index: u32) -> Option<u32> {
    if index >= VIRTIO_MAX_DEVICES {
        return None;
    }
    VIRTIO_IRQ_BASE.checked_add(index)
}

/// RAM regions for a guest with `mem_size` bytes of RAM: up to [`MMIO_GAP_START`] below
/// the gap, the rest from [`MMIO_GAP_END`] (4 GiB) on. Empty for a zero size.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let high = mem_size.saturating_sub(MMIO_GAP_START);
    let mut regions = Vec::with_capacity(2);
    // kvmini is x86_64 only, where usize is 64 bits wide: these conversions are lossless.
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    if high > 0 {
        regions.push((GuestAddress(MMIO_GAP_END), high as usize));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn regions_are_in_order_and_do_not_overlap() {
        let ordered = [
            BOOT_GDT_START.0,
            BOOT_IDT_START.0,
            ZERO_PAGE_START.0,
            BOOT_STACK_POINTER,
            PML4_START.0,
            PDPTE_START.0,
            PDE_START.0,
            CMDLINE_START.0,
            EBDA_START.0,
            EBDA_END.0,
            ACPI_START.0,
            HIMEM_START.0,
            MMIO_GAP_START,
            IOAPIC_START.0,
            APIC_START.0,
            MMIO_GAP_END,
        ];
        assert!(ordered.windows(2).all(|w| w[0] < w[1]), "{ordered:x?}");
        assert_eq!(MMIO_GAP_SIZE, 768 * MIB);
    }

    #[test]
    fn ram_regions_small_guest() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
        assert!(ram_regions(0).is_empty());
    }

    #[test]
    fn ram_regions_exactly_up_to_gap() {
        assert_eq!(
            ram_regions(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START as usize)]
        );
    }

    #[test]
    fn ram_regions_split_around_gap() {
        let r = ram_regions(6 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(4 * GIB), (6 * GIB - MMIO_GAP_START) as usize),
            ]
        );
        let total: usize = r.iter().map(|(_, s)| s).sum();
        assert_eq!(total as u64, 6 * GIB);
    }

    #[test]
    fn virtio_slots_and_irqs() {
        assert_eq!(virtio_mmio_slot(0), Some(VIRTIO_MMIO_START));
        assert_eq!(virtio_mmio_slot(2), Some(GuestAddress(0xd000_2000)));
        assert_eq!(virtio_irq(0), Some(5));
        assert_eq!(virtio_irq(VIRTIO_MAX_DEVICES - 1), Some(IRQ_MAX));
        assert_eq!(virtio_irq(VIRTIO_MAX_DEVICES), None);
        assert_eq!(virtio_mmio_slot(VIRTIO_MAX_DEVICES), None);
        let last = virtio_mmio_slot(VIRTIO_MAX_DEVICES - 1).unwrap();
        assert!(last.0 + VIRTIO_MMIO_SLOT_SIZE <= IOAPIC_START.0);
        assert_ne!(SERIAL_IRQ, VIRTIO_IRQ_BASE);
    }
}
