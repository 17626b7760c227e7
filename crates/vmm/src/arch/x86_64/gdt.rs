//! Encoding and decoding of GDT segment descriptors.

use kvm_bindings::kvm_segment;

/// Access/flags of a 64-bit code segment: present, DPL 0, code, execute/read, accessed, L=1, G=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Access/flags of a data segment: present, DPL 0, data, read/write, accessed, D/B=1, G=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// Access/flags of a 64-bit busy TSS: present, DPL 0, system, type 0xb, G=1.
pub const TSS_FLAGS: u16 = 0x808b;

/// Builds a segment descriptor from its flags (access byte in bits 7:0, flags nibble in
/// bits 15:12), 32-bit base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Base address encoded in a descriptor.
pub const fn get_base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32) | ((entry & 0x0000_00ff_ffff_0000) >> 16)
}

/// Byte-granular limit encoded in a descriptor (scaled when the G flag is set).
pub const fn get_limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    if get_g(entry) == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

const fn bit(entry: u64, shift: u32) -> u8 {
    ((entry >> shift) & 1) as u8
}

/// Granularity flag.
pub const fn get_g(entry: u64) -> u8 {
    bit(entry, 55)
}

/// Default operation size flag.
pub const fn get_db(entry: u64) -> u8 {
    bit(entry, 54)
}

/// 64-bit code segment flag.
pub const fn get_l(entry: u64) -> u8 {
    bit(entry, 53)
}

/// Available-for-software flag.
pub const fn get_avl(entry: u64) -> u8 {
    bit(entry, 52)
}

/// Present flag.
pub const fn get_p(entry: u64) -> u8 {
    bit(entry, 47)
}

/// Descriptor privilege level.
pub const fn get_dpl(entry: u64) -> u8 {
    ((entry >> 45) & 0x3) as u8
}

/// Descriptor type flag (1 = code/data, 0 = system).
pub const fn get_s(entry: u64) -> u8 {
    bit(entry, 44)
}

/// Segment type.
pub const fn get_type(entry: u64) -> u8 {
    ((entry >> 40) & 0xf) as u8
}

/// The `kvm_segment` for descriptor `entry` living at index `table_index` of the GDT.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: u16::from(table_index) * 8,
        type_: get_type(entry),
        present: get_p(entry),
        dpl: get_dpl(entry),
        db: get_db(entry),
        s: get_s(entry),
        l: get_l(entry),
        g: get_g(entry),
        avl: get_avl(entry),
        unusable: u8::from(get_p(entry) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        assert_eq!(gdt_entry(0, 0, 0), 0);
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_round_trips() {
        let seg = kvm_segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 1);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(seg.type_, 0xb);
        assert_eq!((seg.present, seg.dpl, seg.s), (1, 0, 1));
        assert_eq!((seg.l, seg.db, seg.g, seg.avl), (1, 0, 1, 0));
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn data_and_tss_segments_round_trip() {
        let data = kvm_segment_from_gdt(gdt_entry(DATA_FLAGS, 0, 0xfffff), 2);
        assert_eq!(
            (data.selector, data.type_, data.l, data.db),
            (0x10, 0x3, 0, 1)
        );
        let tss = kvm_segment_from_gdt(gdt_entry(TSS_FLAGS, 0, 0xfffff), 3);
        assert_eq!(
            (tss.selector, tss.type_, tss.s, tss.present),
            (0x18, 0xb, 0, 1)
        );
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        assert_eq!(get_base(e), 0x1234_5678);
        assert_eq!(get_limit(e), 0xabcde); // G clear: byte granular
        let e = gdt_entry(0x8093, 0xdead_beef, 0x1);
        assert_eq!(get_base(e), 0xdead_beef);
        assert_eq!(get_limit(e), 0x1fff); // G set: 4 KiB granular
    }

    #[test]
    fn null_descriptor_is_unusable() {
        let seg = kvm_segment_from_gdt(0, 0);
        assert_eq!((seg.present, seg.unusable), (0, 1));
    }
}
