//! Intel MultiProcessor Specification 1.4 table, so the guest finds its CPUs and IOAPIC.
//!
//! Layout at [`EBDA_START`]: floating pointer structure, then the configuration table
//! header followed by its entries (processors, ISA bus, IOAPIC, interrupt sources, local
//! interrupt sources). The floating pointer is within the last KiB of base memory, where
//! Linux looks for it; the table behind it may run on into the reserved area below 1 MiB.

use std::fmt;
use std::mem::size_of;

use vm_memory::{Address, ByteValued, Bytes, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START, IRQ_MAX};

const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
const MPC_SPEC_REV: u8 = 4;
const MPC_OEM: [u8; 8] = *b"KVMINI  ";
const MPC_PRODUCT_ID: [u8; 12] = *b"KVMINI-VM   ";
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
/// Family 6, model 1, stepping 0.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;

const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;

const MP_IRQ_TYPE_INT: u8 = 0;
const MP_IRQ_TYPE_NMI: u8 = 1;
const MP_IRQ_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger mode conform to the bus specification.
const MP_IRQ_DEFAULT: u16 = 0;
const ISA_BUS_ID: u8 = 0;
/// Destination "all local APICs".
const ALL_LOCAL_APICS: u8 = 0xff;

/// Highest vCPU count: APIC ids 0..n-1, the IOAPIC takes n+1, and 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 253;

/// MP floating pointer structure.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature: [u8; 5],
}

/// MP configuration table header.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    reserved: u32,
}

/// Processor entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// Bus entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// IOAPIC entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// I/O interrupt source entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

/// Local interrupt source entry.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MpcLintsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbusid: u8,
    srcbusirq: u8,
    destapic: u8,
    destapiclint: u8,
}

// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcTable {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcBus {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcIntsrc {}
// SAFETY: packed struct of integers and byte arrays only: no padding, every bit pattern valid.
unsafe impl ByteValued for MpcLintsrc {}

// Sizes fixed by the MP specification.
const _: () = {
    assert!(size_of::<MpfIntel>() == 16);
    assert!(size_of::<MpcTable>() == 44);
    assert!(size_of::<MpcCpu>() == 20);
    assert!(size_of::<MpcBus>() == 8);
    assert!(size_of::<MpcIoapic>() == 8);
    assert!(size_of::<MpcIntsrc>() == 8);
    assert!(size_of::<MpcLintsrc>() == 8);
};

/// Errors while writing the MP table.
#[derive(Debug)]
pub enum MptableError {
    /// No vCPUs.
    NoCpus,
    /// More vCPUs than the table can describe.
    TooManyCpus(u8),
    /// The table does not fit in the reserved area below 1 MiB, or in guest memory.
    NotEnoughMemory,
    /// An address computation overflowed.
    AddressOverflow,
    /// Writing the table to guest memory failed.
    WriteMpTable(vm_memory::GuestMemoryError),
}

impl fmt::Display for MptableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpus => write!(f, "the MP table needs at least one vCPU"),
            Self::TooManyCpus(n) => write!(
                f,
                "{n} vCPUs are too many for the MP table (max {MAX_CPUS})"
            ),
            Self::NotEnoughMemory => write!(f, "the MP table does not fit in guest memory"),
            Self::AddressOverflow => write!(f, "MP table address computation overflowed"),
            Self::WriteMpTable(e) => write!(f, "failed to write the MP table: {e}"),
        }
    }
}

impl std::error::Error for MptableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::WriteMpTable(e) => Some(e),
            _ => None,
        }
    }
}

/// Number of interrupt source entries (ISA IRQs 0..=IRQ_MAX).
const NUM_INTSRC: usize = IRQ_MAX as usize + 1;

/// Total size in bytes of the floating pointer plus configuration table for `num_cpus`.
pub fn mptable_size(num_cpus: u8) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + size_of::<MpcCpu>() * usize::from(num_cpus)
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + size_of::<MpcIntsrc>() * NUM_INTSRC
        + size_of::<MpcLintsrc>() * 2
}

/// Two's complement of the byte sum: makes the bytes plus checksum sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the whole MP table (floating pointer first) as it must appear at `base`.
pub fn build_mptable(base: u32, num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1; // cannot overflow: num_cpus <= MAX_CPUS

    let mut entries: Vec<u8> = Vec::with_capacity(mptable_size(num_cpus));
    for cpu in 0..num_cpus {
        let mut cpuflag = CPU_ENABLED;
        if cpu == 0 {
            cpuflag |= CPU_BOOTPROCESSOR;
        }
        let e = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: cpu,
            apicver: APIC_VERSION,
            cpuflag,
            cpufeature: CPU_SIGNATURE,
            featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
            reserved: [0; 2],
        };
        entries.extend_from_slice(e.as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: ISA_BUS_ID,
        bustype: BUS_TYPE_ISA,
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: IOAPIC_ENABLED,
        apicaddr: IOAPIC_START.0 as u32,
    };
    entries.extend_from_slice(ioapic.as_slice());
    for irq in 0..=(IRQ_MAX as u8) {
        let e = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_IRQ_TYPE_INT,
            irqflag: MP_IRQ_DEFAULT,
            srcbus: ISA_BUS_ID,
            srcbusirq: irq,
            dstapic: ioapic_id,
            dstirq: irq,
        };
        entries.extend_from_slice(e.as_slice());
    }
    // The legacy PIC (ExtINT) goes to LINT0 of the boot CPU, NMI to LINT1 of every CPU.
    let extint = MpcLintsrc {
        type_: MP_LINTSRC,
        irqtype: MP_IRQ_TYPE_EXTINT,
        irqflag: MP_IRQ_DEFAULT,
        srcbusid: ISA_BUS_ID,
        srcbusirq: 0,
        destapic: 0,
        destapiclint: 0,
    };
    entries.extend_from_slice(extint.as_slice());
    let nmi = MpcLintsrc {
        type_: MP_LINTSRC,
        irqtype: MP_IRQ_TYPE_NMI,
        irqflag: MP_IRQ_DEFAULT,
        srcbusid: ISA_BUS_ID,
        srcbusirq: 0,
        destapic: ALL_LOCAL_APICS,
        destapiclint: 1,
    };
    entries.extend_from_slice(nmi.as_slice());

    let entry_count = usize::from(num_cpus) + 1 + 1 + NUM_INTSRC + 2;
    let table_len = size_of::<MpcTable>() + entries.len();
    let mut header = MpcTable {
        signature: MPC_SIGNATURE,
        length: u16::try_from(table_len).map_err(|_| MptableError::NotEnoughMemory)?,
        spec: MPC_SPEC_REV,
        checksum: 0,
        oem: MPC_OEM,
        productid: MPC_PRODUCT_ID,
        oemptr: 0,
        oemsize: 0,
        oemcount: u16::try_from(entry_count).map_err(|_| MptableError::NotEnoughMemory)?,
        lapic: APIC_START.0 as u32,
        reserved: 0,
    };
    let mut table = header.as_slice().to_vec();
    table.extend_from_slice(&entries);
    header.checksum = checksum(&table);

    let table_addr = base
        .checked_add(size_of::<MpfIntel>() as u32)
        .ok_or(MptableError::AddressOverflow)?;
    let mut mpf = MpfIntel {
        signature: MPF_SIGNATURE,
        physptr: table_addr,
        length: 1, // in 16-byte units
        specification: MPC_SPEC_REV,
        checksum: 0,
        feature: [0; 5], // feature[0] == 0: a configuration table is present
    };
    mpf.checksum = checksum(mpf.as_slice());

    let mut out = mpf.as_slice().to_vec();
    out.extend_from_slice(header.as_slice());
    out.extend_from_slice(&entries);
    Ok(out)
}

/// Writes the MP table for `num_cpus` vCPUs at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let base = u32::try_from(EBDA_START.raw_value()).map_err(|_| MptableError::AddressOverflow)?;
    let table = build_mptable(base, num_cpus)?;
    let end = EBDA_START
        .checked_add(table.len() as u64)
        .ok_or(MptableError::AddressOverflow)?;
    if end > HIMEM_START || !mem.check_range(EBDA_START, table.len()) {
        return Err(MptableError::NotEnoughMemory);
    }
    mem.write_slice(&table, EBDA_START)
        .map_err(MptableError::WriteMpTable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn read_table(m: &GuestMemoryMmap, num_cpus: u8) -> Vec<u8> {
        let mut buf = vec![0u8; mptable_size(num_cpus)];
        m.read_slice(&mut buf, EBDA_START).unwrap();
        buf
    }

    #[test]
    fn checksums_sum_to_zero() {
        for cpus in [1u8, 2, 8, 64, MAX_CPUS] {
            let m = mem();
            setup_mptable(&m, cpus).unwrap();
            let buf = read_table(&m, cpus);
            assert_eq!(&buf[0..4], b"_MP_");
            assert_eq!(sum(&buf[..16]), 0, "floating pointer, {cpus} cpus");
            let mpf: MpfIntel = m.read_obj(EBDA_START).unwrap();
            let physptr = { mpf.physptr };
            assert_eq!(u64::from(physptr), EBDA_START.0 + 16);
            let header: MpcTable = m.read_obj(GuestAddress(u64::from(physptr))).unwrap();
            let len = usize::from(header.length);
            assert_eq!(16 + len, mptable_size(cpus));
            assert_eq!(&buf[16..20], b"PCMP");
            assert_eq!(sum(&buf[16..16 + len]), 0, "config table, {cpus} cpus");
            assert_eq!({ header.lapic }, 0xfee0_0000);
            assert_eq!(header.spec, 4);
        }
    }

    #[test]
    fn cpu_entries() {
        let cpus = 4u8;
        let buf = build_mptable(EBDA_START.0 as u32, cpus).unwrap();
        let header = MpcTable::from_slice(&buf[16..60]).unwrap();
        assert_eq!(usize::from(header.oemcount), 4 + 1 + 1 + 24 + 2);
        let mut off = 60;
        for i in 0..cpus {
            let cpu = MpcCpu::from_slice(&buf[off..off + 20]).unwrap();
            assert_eq!((cpu.type_, cpu.apicid), (MP_PROCESSOR, i));
            let bsp = if i == 0 { CPU_BOOTPROCESSOR } else { 0 };
            assert_eq!(cpu.cpuflag, CPU_ENABLED | bsp);
            assert_eq!({ cpu.featureflag }, CPU_FEATURE_APIC | CPU_FEATURE_FPU);
            off += 20;
        }
        let bus = MpcBus::from_slice(&buf[off..off + 8]).unwrap();
        assert_eq!((bus.type_, &bus.bustype), (MP_BUS, b"ISA   "));
        off += 8;
        let ioapic = MpcIoapic::from_slice(&buf[off..off + 8]).unwrap();
        assert_eq!(
            (ioapic.type_, ioapic.apicid, ioapic.apicver),
            (MP_IOAPIC, 5, 0x11)
        );
        assert_eq!({ ioapic.apicaddr }, 0xfec0_0000);
        off += 8;
        for irq in 0..24u8 {
            let src = MpcIntsrc::from_slice(&buf[off..off + 8]).unwrap();
            assert_eq!(
                (src.type_, src.srcbusirq, src.dstirq),
                (MP_INTSRC, irq, irq)
            );
            assert_eq!((src.dstapic, src.irqtype), (5, MP_IRQ_TYPE_INT));
            off += 8;
        }
        let l0 = MpcLintsrc::from_slice(&buf[off..off + 8]).unwrap();
        assert_eq!((l0.irqtype, l0.destapiclint), (MP_IRQ_TYPE_EXTINT, 0));
        let l1 = MpcLintsrc::from_slice(&buf[off + 8..off + 16]).unwrap();
        assert_eq!(
            (l1.irqtype, l1.destapic, l1.destapiclint),
            (MP_IRQ_TYPE_NMI, 0xff, 1)
        );
        assert_eq!(off + 16, buf.len());
    }

    #[test]
    fn table_fits_below_1mib() {
        assert!(EBDA_START.0 + mptable_size(MAX_CPUS) as u64 <= HIMEM_START.0);
        // The floating pointer is in the last KiB of base memory, where Linux scans.
        assert_eq!(EBDA_START.0, 639 * 1024);
    }

    #[test]
    fn cpu_count_errors() {
        let m = mem();
        assert!(matches!(setup_mptable(&m, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            setup_mptable(&m, MAX_CPUS + 1),
            Err(MptableError::TooManyCpus(254))
        ));
    }

    #[test]
    fn memory_too_small() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9fc00 + 100)]).unwrap();
        assert!(matches!(
            setup_mptable(&m, 1),
            Err(MptableError::NotEnoughMemory)
        ));
    }
}
