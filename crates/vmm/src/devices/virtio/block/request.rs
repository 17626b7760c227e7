//! Parsing of virtio-blk requests (virtio 1.2, 5.2.6). Pure functions over a
//! descriptor chain and guest memory: the guest is untrusted, so every field
//! is checked here and the device only executes well-formed requests.
//!
//! Layout: a 16-byte device-readable header, data descriptors (device-writable
//! for IN and GET_ID, readable for OUT, DISCARD and WRITE_ZEROES), and a
//! device-writable status byte in the last descriptor.

use std::fmt;
use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::backend::{SECTOR_SHIFT, SECTOR_SIZE};

// Request types and status values (virtio 1.2, 5.2.6).
pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
/// Request status bytes (the spec's values as the status byte).
pub const VIRTIO_BLK_S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
/// The only defined flag of a discard/write-zeroes segment.
pub use virtio_bindings::virtio_blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

const HEADER_LEN: u32 = 16;
const DISCARD_SEGMENT_LEN: usize = 16;

/// What the device accepts; the same numbers it advertises in config space.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub capacity: u64,
    pub readonly: bool,
    pub max_segments: usize,
    pub max_segment_size: u32,
    /// `None` when DISCARD is not offered.
    pub discard: Option<RangeLimits>,
    /// `None` when WRITE_ZEROES is not offered.
    pub write_zeroes: Option<RangeLimits>,
}

#[derive(Clone, Copy, Debug)]
pub struct RangeLimits {
    pub max_sectors: u32,
    pub max_segments: usize,
}

/// A guest buffer of the request, already checked to lie in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One range of a DISCARD or WRITE_ZEROES request, in bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub sector: u64,
    pub sectors: u32,
    pub unmap: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    In { sector: u64, data: Vec<Segment> },
    Out { sector: u64, data: Vec<Segment> },
    Flush,
    GetId { data: Vec<Segment> },
    Discard(Vec<Range>),
    WriteZeroes(Vec<Range>),
}

impl Op {
    /// Bytes the request writes into guest data buffers on success.
    pub fn data_bytes_written(&self) -> u32 {
        match self {
            // The chain length fits a u32: virtio-queue stops a chain there.
            Self::In { data, .. } => data.iter().map(|s| s.len).sum(),
            Self::GetId { data } => data
                .iter()
                .map(|s| s.len)
                .sum::<u32>()
                .min(super::backend::ID_BYTES as u32),
            _ => 0,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// No usable status descriptor: the request cannot even be failed.
    NoStatus,
    MissingHeader,
    HeaderWritable,
    HeaderLength(u32),
    HeaderUnreadable,
    Unsupported(u32),
    NoData,
    TooManySegments(usize),
    SegmentTooLarge(u32),
    WrongDirection,
    OutOfMemory(GuestAddress, u32),
    Unaligned(u64),
    OutOfRange {
        sector: u64,
        sectors: u64,
    },
    ReadOnly,
    BadFlags(u32),
}

impl Error {
    /// The status the driver gets for this request.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::BadFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStatus => write!(f, "no device-writable status descriptor at the end"),
            Self::MissingHeader => write!(f, "no request header"),
            Self::HeaderWritable => write!(f, "request header is device-writable"),
            Self::HeaderLength(l) => write!(f, "request header is {l} bytes, not 16"),
            Self::HeaderUnreadable => write!(f, "request header is not in guest memory"),
            Self::Unsupported(t) => write!(f, "unsupported request type {t}"),
            Self::NoData => write!(f, "request has no data buffer"),
            Self::TooManySegments(n) => write!(f, "{n} data segments is too many"),
            Self::SegmentTooLarge(l) => write!(f, "data segment of {l} bytes is too large"),
            Self::WrongDirection => write!(f, "data buffer has the wrong direction"),
            Self::OutOfMemory(a, l) => {
                write!(f, "buffer {:#x}+{l:#x} is not in guest memory", a.0)
            }
            Self::Unaligned(l) => write!(f, "data length {l} is not a multiple of 512"),
            Self::OutOfRange { sector, sectors } => {
                write!(f, "sectors {sector}+{sectors} are beyond the disk")
            }
            Self::ReadOnly => write!(f, "write to a read-only disk"),
            Self::BadFlags(fl) => write!(f, "unsupported segment flags {fl:#x}"),
        }
    }
}

/// A parsed chain: where to write the status (if anywhere) and the request.
#[derive(Debug)]
pub struct Parsed {
    pub status: Option<GuestAddress>,
    pub request: Result<Op, Error>,
}

/// Parses the chain `chain` against `limits`.
pub fn parse<M>(mut chain: DescriptorChain<M>, limits: &Limits) -> Parsed
where
    M: Deref,
    M::Target: GuestMemory,
{
    // Bounded: virtio-queue ends a chain after queue-size descriptors.
    let descs: Vec<Descriptor> = chain.by_ref().collect();
    let mem = chain.memory();
    let status = descs
        .last()
        .filter(|d| d.is_write_only() && d.len() >= 1)
        .map(|d| d.addr())
        .filter(|&a| mem.check_range(a, 1, Permissions::Write));
    let request = match status {
        None => Err(Error::NoStatus),
        Some(_) => parse_op(mem, &descs[..descs.len() - 1], limits),
    };
    Parsed { status, request }
}

fn parse_op<M: GuestMemory + ?Sized>(
    mem: &M,
    descs: &[Descriptor],
    limits: &Limits,
) -> Result<Op, Error> {
    let (header, data) = descs.split_first().ok_or(Error::MissingHeader)?;
    if header.is_write_only() {
        return Err(Error::HeaderWritable);
    }
    if header.len() != HEADER_LEN {
        return Err(Error::HeaderLength(header.len()));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(|_| Error::HeaderUnreadable)?;
    let kind = u32::from_le_bytes(raw[0..4].try_into().unwrap_or_default());
    let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());

    match kind {
        VIRTIO_BLK_T_IN => {
            let data = segments(mem, data, limits, true)?;
            check_sectors(sector, &data, limits)?;
            Ok(Op::In { sector, data })
        }
        VIRTIO_BLK_T_OUT => {
            if limits.readonly {
                return Err(Error::ReadOnly);
            }
            let data = segments(mem, data, limits, false)?;
            check_sectors(sector, &data, limits)?;
            Ok(Op::Out { sector, data })
        }
        // Any buffers of a flush carry nothing: ignore them.
        VIRTIO_BLK_T_FLUSH => Ok(Op::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(Op::GetId {
            data: segments(mem, data, limits, true)?,
        }),
        VIRTIO_BLK_T_DISCARD => match limits.discard {
            Some(l) => ranges(mem, data, limits, &l, false).map(Op::Discard),
            None => Err(Error::Unsupported(kind)),
        },
        VIRTIO_BLK_T_WRITE_ZEROES => match limits.write_zeroes {
            Some(l) => ranges(mem, data, limits, &l, true).map(Op::WriteZeroes),
            None => Err(Error::Unsupported(kind)),
        },
        _ => Err(Error::Unsupported(kind)),
    }
}

/// Checks the data descriptors: count, size, direction, in guest memory.
fn segments<M: GuestMemory + ?Sized>(
    mem: &M,
    data: &[Descriptor],
    limits: &Limits,
    writable: bool,
) -> Result<Vec<Segment>, Error> {
    if data.is_empty() {
        return Err(Error::NoData);
    }
    if data.len() > limits.max_segments {
        return Err(Error::TooManySegments(data.len()));
    }
    let access = if writable {
        Permissions::Write
    } else {
        Permissions::Read
    };
    data.iter()
        .map(|d| {
            if d.is_write_only() != writable {
                return Err(Error::WrongDirection);
            }
            if d.len() > limits.max_segment_size {
                return Err(Error::SegmentTooLarge(d.len()));
            }
            if !mem.check_range(d.addr(), d.len() as usize, access) {
                return Err(Error::OutOfMemory(d.addr(), d.len()));
            }
            Ok(Segment {
                addr: d.addr(),
                len: d.len(),
            })
        })
        .collect()
}

fn check_sectors(sector: u64, data: &[Segment], limits: &Limits) -> Result<(), Error> {
    let len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    if len % SECTOR_SIZE != 0 {
        return Err(Error::Unaligned(len));
    }
    check_range(sector, len >> SECTOR_SHIFT, limits.capacity)
}

fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), Error> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(Error::OutOfRange { sector, sectors }),
    }
}

/// Reads and checks the segments of a DISCARD or WRITE_ZEROES request.
fn ranges<M: GuestMemory + ?Sized>(
    mem: &M,
    data: &[Descriptor],
    limits: &Limits,
    range_limits: &RangeLimits,
    write_zeroes: bool,
) -> Result<Vec<Range>, Error> {
    let segs = segments(mem, data, limits, false)?;
    let len: usize = segs.iter().map(|s| s.len as usize).sum();
    if len == 0 || len % DISCARD_SEGMENT_LEN != 0 {
        return Err(Error::Unaligned(len as u64));
    }
    let count = len / DISCARD_SEGMENT_LEN;
    if count > range_limits.max_segments {
        return Err(Error::TooManySegments(count));
    }
    // At most max_segments * 16 bytes, checked just above.
    let mut raw = vec![0u8; len];
    let mut at = 0;
    for s in &segs {
        let end = at + s.len as usize;
        mem.read_slice(&mut raw[at..end], s.addr)
            .map_err(|_| Error::OutOfMemory(s.addr, s.len))?;
        at = end;
    }
    raw.chunks_exact(DISCARD_SEGMENT_LEN)
        .map(|c| {
            let sector = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(c[12..16].try_into().unwrap_or_default());
            let allowed = if write_zeroes {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            } else {
                0
            };
            if flags & !allowed != 0 {
                return Err(Error::BadFlags(flags));
            }
            if sectors > range_limits.max_sectors {
                return Err(Error::OutOfRange {
                    sector,
                    sectors: sectors.into(),
                });
            }
            check_range(sector, sectors.into(), limits.capacity)?;
            Ok(Range {
                sector,
                sectors,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, GuestMemoryMmap};

    use super::*;
    use crate::devices::virtio::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    fn limits() -> Limits {
        Limits {
            capacity: 100,
            readonly: false,
            max_segments: 2,
            max_segment_size: 4096,
            discard: None,
            write_zeroes: Some(RangeLimits {
                max_sectors: 8,
                max_segments: 1,
            }),
        }
    }

    fn parse_descs(descs: &[(u64, u32, bool)], kind: u32, sector: u64) -> Parsed {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, w)| {
                let flags = if w { VRING_DESC_F_WRITE } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, 0))
            })
            .collect();
        let chain = vq.build_desc_chain(&raw).unwrap();
        parse(chain, &limits())
    }

    fn req(data: &[(u64, u32, bool)], kind: u32, sector: u64) -> Result<Op, Error> {
        let mut d = vec![(HDR, 16, false)];
        d.extend_from_slice(data);
        d.push((STATUS, 1, true));
        let p = parse_descs(&d, kind, sector);
        assert_eq!(p.status, Some(GuestAddress(STATUS)));
        p.request
    }

    #[test]
    fn well_formed_requests() {
        assert_eq!(
            req(
                &[(DATA, 512, true), (DATA + 4096, 1024, true)],
                VIRTIO_BLK_T_IN,
                97
            ),
            Ok(Op::In {
                sector: 97,
                data: vec![
                    Segment {
                        addr: GuestAddress(DATA),
                        len: 512
                    },
                    Segment {
                        addr: GuestAddress(DATA + 4096),
                        len: 1024
                    }
                ]
            })
        );
        assert_eq!(req(&[], VIRTIO_BLK_T_FLUSH, 0), Ok(Op::Flush));
        let op = req(&[(DATA, 20, true)], VIRTIO_BLK_T_GET_ID, 0).unwrap();
        assert_eq!(op.data_bytes_written(), 20);
    }

    #[test]
    fn limits_are_enforced() {
        let three = [
            (DATA, 512, true),
            (DATA + 512, 512, true),
            (DATA + 1024, 512, true),
        ];
        assert_eq!(
            req(&three, VIRTIO_BLK_T_IN, 0),
            Err(Error::TooManySegments(3))
        );
        assert_eq!(
            req(&[(DATA, 8192, true)], VIRTIO_BLK_T_IN, 0),
            Err(Error::SegmentTooLarge(8192))
        );
        assert_eq!(
            req(&[(DATA, 1024, true)], VIRTIO_BLK_T_IN, 99),
            Err(Error::OutOfRange {
                sector: 99,
                sectors: 2
            })
        );
        assert!(matches!(
            req(&[(DATA, 512, false)], VIRTIO_BLK_T_OUT, u64::MAX),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(
            req(&[(DATA, 16, false)], VIRTIO_BLK_T_DISCARD, 0),
            Err(Error::Unsupported(VIRTIO_BLK_T_DISCARD))
        );
        // One write-zeroes segment of at most 8 sectors.
        assert_eq!(
            req(&[(DATA, 32, false)], VIRTIO_BLK_T_WRITE_ZEROES, 0),
            Err(Error::TooManySegments(2))
        );
        // Guest memory is zeroed: one segment of sector 0, 0 sectors.
        assert_eq!(
            req(&[(DATA, 16, false)], VIRTIO_BLK_T_WRITE_ZEROES, 0),
            Ok(Op::WriteZeroes(vec![Range {
                sector: 0,
                sectors: 0,
                unmap: false
            }]))
        );
        assert_eq!(Error::Unsupported(3).status(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(Error::BadFlags(2).status(), VIRTIO_BLK_S_UNSUPP);
        assert_eq!(Error::NoData.status(), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn read_only_limits_refuse_out() {
        let mut l = limits();
        l.readonly = true;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let raw: Vec<RawDescriptor> = [
            (HDR, 16, 0),
            (DATA, 512, 0),
            (STATUS, 1, VRING_DESC_F_WRITE),
        ]
        .iter()
        .map(|&(a, len, f)| RawDescriptor::from(SplitDescriptor::new(a, len, f, 0)))
        .collect();
        let p = parse(vq.build_desc_chain(&raw).unwrap(), &l);
        assert_eq!(p.request, Err(Error::ReadOnly));
        assert_eq!(p.request.unwrap_err().status(), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn missing_or_bad_status_has_no_status_address() {
        for descs in [
            vec![(HDR, 16, false), (DATA, 512, false)],
            vec![(HDR, 16, false), (STATUS, 0, true)],
            vec![(HDR, 16, false), (0x20_0000, 1, true)],
        ] {
            let p = parse_descs(&descs, VIRTIO_BLK_T_OUT, 0);
            assert_eq!(p.status, None);
            assert_eq!(p.request, Err(Error::NoStatus));
        }
    }

    #[test]
    fn indirect_chains_are_followed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        // An indirect table at 0x8000 with header, data and status.
        let table = GuestAddress(0x8000);
        let entries = [
            (HDR, 16, VRING_DESC_F_NEXT, 1),
            (DATA, 512, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
            (STATUS, 1, VRING_DESC_F_WRITE, 0),
        ];
        for (i, &(a, l, f, n)) in entries.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(a, l, f, n));
            mem.write_obj(d, table.unchecked_add(16 * i as u64))
                .unwrap();
        }
        let vq = MockSplitQueue::new(&mem, 16);
        const VRING_DESC_F_INDIRECT: u16 = 4;
        let head = RawDescriptor::from(SplitDescriptor::new(
            table.0,
            16 * entries.len() as u32,
            VRING_DESC_F_INDIRECT,
            0,
        ));
        let chain = vq.build_desc_chain(&[head]).unwrap();
        let p = parse(chain, &limits());
        assert_eq!(p.status, Some(GuestAddress(STATUS)));
        assert!(matches!(p.request, Ok(Op::In { sector: 0, .. })));
    }
}
