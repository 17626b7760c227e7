//! Frames and the virtio-net header (virtio 1.2, 5.1.6): pure functions over
//! descriptor chains and guest memory. The guest is untrusted, so every
//! chain is checked here before a byte moves, and a bad chain costs only
//! its own frame.
//!
//! On both queues a frame is the 12-byte `virtio_net_hdr_v1` followed by an
//! Ethernet frame; the TAP uses the same layout (`IFF_VNET_HDR`, header size
//! 12), so frames pass through unchanged but for `num_buffers`.

use std::fmt;
use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::device::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};
use crate::devices::virtio::feature;

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_AT: usize = 10;
pub const ETH_HLEN: usize = 14;
/// The largest Ethernet frame either side may send: a 64 KiB segmentation
/// offload packet plus its Ethernet header.
pub const MAX_FRAME_LEN: usize = 65536 + ETH_HLEN;
/// A frame with its header, as read from or written to the TAP.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

// Header flags and GSO types (virtio 1.2, 5.1.6).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Why a chain's frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The chain ended on a descriptor that still points to a next one:
    /// a loop, or a link out of the table.
    Truncated,
    /// A device-writable descriptor on the transmit queue, or a
    /// device-readable one on the receive queue.
    WrongDirection,
    OutOfMemory(GuestAddress, u32),
    /// Transmit: more than [`MAX_BUFFER_LEN`] bytes.
    TooLarge(u64),
    /// Transmit: no room for the header and an Ethernet header. Receive
    /// (mergeable buffers): a buffer smaller than the header.
    TooShort(u64),
    /// Transmit header asks for an offload the driver did not negotiate.
    Header(HeaderError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Flags other than NEEDS_CSUM, or NEEDS_CSUM without VIRTIO_NET_F_CSUM.
    Flags(u8),
    /// A GSO type that is unknown or not negotiated.
    Gso(u8),
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "descriptor chain loops or is cut short"),
            Self::WrongDirection => write!(f, "descriptor has the wrong direction"),
            Self::OutOfMemory(a, l) => write!(f, "buffer {:#x}+{l:#x} is not in guest memory", a.0),
            Self::TooLarge(l) => write!(f, "frame of {l} bytes exceeds {MAX_BUFFER_LEN}"),
            Self::TooShort(l) => write!(f, "buffer of {l} bytes is too short"),
            Self::Header(HeaderError::Flags(fl)) => {
                write!(f, "header flags {fl:#x} not negotiated")
            }
            Self::Header(HeaderError::Gso(t)) => {
                write!(f, "header GSO type {t:#x} not negotiated")
            }
        }
    }
}

/// The TUN offloads (`TUNSETOFFLOAD`) matching what the driver accepted
/// on receive: the host may then hand the guest partially checksummed and
/// segmentation-offloaded frames.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let has = |bit| acked & feature(bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        flags |= libc::TUN_F_TSO_ECN;
    }
    flags
}

/// Checks a transmit header against the features the driver accepted: it
/// may only ask for the offloads it negotiated (virtio 1.2, 5.1.6.2.1).
pub fn check_tx_header(hdr: &[u8; VNET_HDR_LEN], acked: u64) -> Result<(), HeaderError> {
    let has = |bit| acked & feature(bit) != 0;
    let (flags, gso) = (hdr[0], hdr[1]);
    if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
        || (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !has(VIRTIO_NET_F_CSUM))
    {
        return Err(HeaderError::Flags(flags));
    }
    let ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => gso == VIRTIO_NET_HDR_GSO_NONE,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6),
        // UFO is not offered.
        _ => false,
    };
    let ecn_ok = gso & VIRTIO_NET_HDR_GSO_ECN == 0 || has(VIRTIO_NET_F_HOST_ECN);
    if ok && ecn_ok {
        Ok(())
    } else {
        Err(HeaderError::Gso(gso))
    }
}

/// All descriptors of `chain`, or [`ChainError::Truncated`] if it did not
/// end properly (virtio-queue stops a looping chain after queue-size
/// descriptors, and a chain whose next link leaves the table at once).
fn descriptors<M>(chain: &mut DescriptorChain<M>) -> Result<Vec<Descriptor>, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let descs: Vec<Descriptor> = chain.by_ref().collect();
    match descs.last() {
        Some(d) if !d.has_next() => Ok(descs),
        _ => Err(ChainError::Truncated),
    }
}

/// Copies the frame of a transmit chain into `buf` (at least
/// [`MAX_BUFFER_LEN`] bytes) and checks its header; returns its length.
pub fn read_tx_chain<M>(
    mut chain: DescriptorChain<M>,
    buf: &mut [u8],
    acked: u64,
) -> Result<usize, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let descs = descriptors(&mut chain)?;
    let mem = chain.memory();
    let total: u64 = descs.iter().map(|d| u64::from(d.len())).sum();
    if total > MAX_BUFFER_LEN as u64 || total > buf.len() as u64 {
        return Err(ChainError::TooLarge(total));
    }
    if total < (VNET_HDR_LEN + ETH_HLEN) as u64 {
        return Err(ChainError::TooShort(total));
    }
    let mut at = 0;
    for d in &descs {
        if d.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let len = d.len() as usize;
        // Bounded by `total` above.
        mem.read_slice(&mut buf[at..at + len], d.addr())
            .map_err(|_| ChainError::OutOfMemory(d.addr(), d.len()))?;
        at += len;
    }
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr.copy_from_slice(&buf[..VNET_HDR_LEN]);
    check_tx_header(&hdr, acked).map_err(ChainError::Header)?;
    Ok(at)
}

/// A receive buffer: the device-writable pieces of one chain.
#[derive(Debug, PartialEq, Eq)]
pub struct RxBuffer {
    pub head: u16,
    pub segments: Vec<(GuestAddress, u32)>,
    pub capacity: u64,
}

/// Checks a receive chain: every descriptor device-writable and inside
/// guest memory.
pub fn rx_buffer<M>(mut chain: DescriptorChain<M>) -> Result<RxBuffer, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.head_index();
    let descs = descriptors(&mut chain)?;
    let mem = chain.memory();
    let mut segments = Vec::with_capacity(descs.len());
    let mut capacity = 0u64;
    for d in &descs {
        if !d.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        if !mem.check_range(d.addr(), d.len() as usize, Permissions::Write) {
            return Err(ChainError::OutOfMemory(d.addr(), d.len()));
        }
        if d.len() > 0 {
            segments.push((d.addr(), d.len()));
            capacity += u64::from(d.len());
        }
    }
    Ok(RxBuffer {
        head,
        segments,
        capacity,
    })
}

/// Sets `num_buffers` in a received frame's header.
pub fn set_num_buffers(frame: &mut [u8], n: u16) {
    if let Some(b) = frame.get_mut(NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2) {
        b.copy_from_slice(&n.to_le_bytes());
    }
}

/// Writes as much of `data` as fits into `buf`; returns the bytes written.
pub fn write_rx_buffer<M: GuestMemory + ?Sized>(
    mem: &M,
    buf: &RxBuffer,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut at = 0;
    for &(addr, len) in &buf.segments {
        if at == data.len() {
            break;
        }
        let n = (len as usize).min(data.len() - at);
        mem.write_slice(&data[at..at + n], addr)
            .map_err(|_| ChainError::OutOfMemory(addr, len))?;
        at += n;
    }
    Ok(at)
}
