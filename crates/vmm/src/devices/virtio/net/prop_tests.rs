//! Property test of the whole virtio-net data path (issue 17): a model of
//! Linux's virtio-net driver posts receive and transmit chains of random
//! shapes (mergeable buffers, "big packet" chains, small buffers, direct or
//! through indirect tables, with ring indexes about to wrap), the host end
//! of a socketpair sends and takes frames of the sizes and headers the
//! negotiated offloads allow, and the device runs under the event loop as
//! in the VMM (queue kicks only when the device asked for them through
//! EVENT_IDX or the used-ring flags). After every event-loop pass the whole
//! guest memory is compared with its copy from before the pass. The device
//! may only have written the used rings (with `avail_event`) and the first
//! `len` bytes (the used length) of the device-writable descriptors of the
//! receive chains it returned.
//!
//! Every frame must also arrive intact and in order (`num_buffers` right),
//! every interrupt the driver asked for must come, and no frame may wait
//! while the guest has room for it. Seeded: a failure prints the seed;
//! `KVMINI_NET_PROPTEST_SEED` and `KVMINI_NET_PROPTEST_STEPS` replay or
//! lengthen a run.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::device::*;
use super::frame::*;
use super::mac::MacAddr;
use super::tap::FrameIo;
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC,
    VIRTIO_F_VERSION_1, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

const VRING_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const MEM_SIZE: usize = 4 << 20;
const QSIZE: u16 = QUEUE_SIZE;
/// Ring addresses: (descriptor table, avail ring, used ring).
const RX_RINGS: (u64, u64, u64) = (0x0, 0x1000, 0x2000);
const TX_RINGS: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
/// Buffers and indirect tables come from here on.
const HEAP: u64 = 0x1_0000;
const GRANULE: u64 = 64;
/// Ethernet payload of a plain (unsegmented) frame.
const MTU_FRAME: usize = 1514;

/// xorshift64*: deterministic, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The device's end of the socketpair.
struct SockIo(UnixDatagram);

impl AsRawFd for SockIo {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for SockIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.0.send(frame)
    }
    fn set_offload(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

/// First-fit allocator of guest memory for buffers and indirect tables.
struct Heap {
    used: Vec<bool>,
    cursor: usize,
}

impl Heap {
    fn new() -> Self {
        Self {
            used: vec![false; ((MEM_SIZE as u64 - HEAP) / GRANULE) as usize],
            cursor: 0,
        }
    }

    fn granules(len: u64) -> usize {
        len.div_ceil(GRANULE).max(1) as usize
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let n = Self::granules(len);
        let total = self.used.len();
        let mut start = self.cursor;
        let mut scanned = 0;
        while scanned < total + n {
            if start + n > total {
                scanned += total - start;
                start = 0;
                continue;
            }
            match self.used[start..start + n].iter().rposition(|&u| u) {
                Some(busy) => {
                    scanned += busy + 1;
                    start += busy + 1;
                }
                None => {
                    self.used[start..start + n].fill(true);
                    self.cursor = (start + n) % total;
                    return Some(HEAP + start as u64 * GRANULE);
                }
            }
        }
        None
    }

    fn free(&mut self, addr: u64, len: u64) {
        let start = ((addr - HEAP) / GRANULE) as usize;
        let n = Self::granules(len);
        assert!(
            self.used[start..start + n].iter().all(|&u| u),
            "double free"
        );
        self.used[start..start + n].fill(false);
    }
}

/// One segment of a posted chain: guest address, length, device-writable.
type Seg = (u64, u32, bool);
/// A used-ring entry: head index, length written.
type Used = (u32, u32);

/// A chain the driver gave the device and has not got back.
struct Posted {
    segs: Vec<Seg>,
    /// Ring descriptors it occupies (one if indirect).
    ring_descs: Vec<u16>,
    /// Heap allocations to free on completion (buffers, indirect table).
    allocs: Vec<(u64, u64)>,
    /// Deliberately malformed: the device must return it empty.
    bad: bool,
}

/// The driver side of one split virtqueue, as Linux's virtio_ring does it.
struct DriverQueue {
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    avail_idx: u16,
    /// avail idx at the last kick decision.
    kick_old: u16,
    last_used: u16,
    posted: HashMap<u16, Posted>,
    event_idx: bool,
}

impl DriverQueue {
    fn new(mem: &GuestMemoryMmap, rings: (u64, u64, u64), start_idx: u16, event_idx: bool) -> Self {
        let (desc, avail, used) = rings;
        mem.write_obj(0u16, GuestAddress(avail)).unwrap();
        mem.write_obj(start_idx, GuestAddress(avail + 2)).unwrap();
        mem.write_obj(start_idx, GuestAddress(used_event_addr(avail)))
            .unwrap();
        mem.write_obj(0u16, GuestAddress(used)).unwrap();
        mem.write_obj(start_idx, GuestAddress(used + 2)).unwrap();
        Self {
            desc,
            avail,
            used,
            free: (0..QSIZE).rev().collect(),
            avail_idx: start_idx,
            kick_old: start_idx,
            last_used: start_idx,
            posted: HashMap::new(),
            event_idx,
        }
    }

    fn queue(&self, start_idx: u16) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_next_avail(start_idx);
        q.set_next_used(start_idx);
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
        q
    }

    /// Posts `segs` as one chain (through an indirect table if `indirect`);
    /// `None` when there are not enough free descriptors or memory.
    fn post(
        &mut self,
        mem: &GuestMemoryMmap,
        heap: &mut Heap,
        segs: Vec<Seg>,
        mut allocs: Vec<(u64, u64)>,
        indirect: bool,
        bad: bool,
    ) -> Option<u16> {
        let link = |i: usize, n: usize, next: u16| -> (u16, u16) {
            if i + 1 < n {
                (VRING_DESC_F_NEXT, next)
            } else {
                (0, 0)
            }
        };
        let flags_of = |w: bool| if w { VRING_DESC_F_WRITE } else { 0 };
        let ring_descs: Vec<u16> = if indirect {
            let table_len = 16 * segs.len() as u64;
            let table = heap.alloc(table_len)?;
            let Some(head) = self.free.pop() else {
                heap.free(table, table_len);
                return None;
            };
            for (i, &(addr, len, w)) in segs.iter().enumerate() {
                let (f, next) = link(i, segs.len(), i as u16 + 1);
                let d = SplitDescriptor::new(addr, len, flags_of(w) | f, next);
                mem.write_obj(RawDescriptor::from(d), GuestAddress(table + 16 * i as u64))
                    .unwrap();
            }
            let d = SplitDescriptor::new(table, table_len as u32, VRING_DESC_F_INDIRECT, 0);
            mem.write_obj(
                RawDescriptor::from(d),
                GuestAddress(self.desc + 16 * u64::from(head)),
            )
            .unwrap();
            allocs.push((table, table_len));
            vec![head]
        } else {
            if self.free.len() < segs.len() {
                return None;
            }
            let ids: Vec<u16> = (0..segs.len()).map(|_| self.free.pop().unwrap()).collect();
            for (i, &(addr, len, w)) in segs.iter().enumerate() {
                let (f, next) = link(i, segs.len(), ids.get(i + 1).copied().unwrap_or(0));
                let d = SplitDescriptor::new(addr, len, flags_of(w) | f, next);
                mem.write_obj(
                    RawDescriptor::from(d),
                    GuestAddress(self.desc + 16 * u64::from(ids[i])),
                )
                .unwrap();
            }
            ids
        };
        let head = ring_descs[0];
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.posted.insert(
            head,
            Posted {
                segs,
                ring_descs,
                allocs,
                bad,
            },
        );
        Some(head)
    }

    /// Linux's virtqueue_kick_prepare: does the device want a notification
    /// for what was added since the last decision?
    fn needs_kick(&mut self, mem: &GuestMemoryMmap) -> bool {
        let (old, new) = (self.kick_old, self.avail_idx);
        self.kick_old = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            let event = mem
                .read_obj::<u16>(GuestAddress(avail_event_addr(self.used)))
                .unwrap();
            need_event(event, new, old)
        } else {
            let flags = mem.read_obj::<u16>(GuestAddress(self.used)).unwrap();
            flags & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used entries the driver has not consumed yet: (head, len).
    fn peek_used(&self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let end = self.used_idx(mem);
        let mut out = Vec::new();
        let mut i = self.last_used;
        while i != end {
            let at = self.used + 4 + 8 * u64::from(i % QSIZE);
            let id = mem.read_obj::<u32>(GuestAddress(at)).unwrap();
            let len = mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            i = i.wrapping_add(1);
        }
        out
    }

    /// Takes back the chain `head` (the device returned it).
    fn complete(&mut self, heap: &mut Heap, head: u32) -> Posted {
        let head = u16::try_from(head).expect("used id fits a descriptor index");
        let p = self
            .posted
            .remove(&head)
            .unwrap_or_else(|| panic!("used ring returns head {head}, which is not outstanding"));
        self.free.extend(p.ring_descs.iter().rev());
        for &(a, l) in &p.allocs {
            heap.free(a, l);
        }
        self.last_used = self.last_used.wrapping_add(1);
        p
    }

    /// Linux's virtqueue_enable_cb_prepare: ask for an interrupt at the
    /// next used entry.
    fn enable_interrupts(&self, mem: &GuestMemoryMmap) {
        self.enable_interrupts_after(mem, 0);
    }

    /// virtqueue_enable_cb_delayed: ask for an interrupt only once `later`
    /// more entries are used.
    fn enable_interrupts_after(&self, mem: &GuestMemoryMmap, later: u16) {
        mem.write_obj(
            self.last_used.wrapping_add(later),
            GuestAddress(used_event_addr(self.avail)),
        )
        .unwrap();
    }

    fn used_event(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj::<u16>(GuestAddress(used_event_addr(self.avail)))
            .unwrap()
    }
}

fn used_event_addr(avail: u64) -> u64 {
    avail + 4 + 2 * u64::from(QSIZE)
}

fn avail_event_addr(used: u64) -> u64 {
    used + 4 + 8 * u64::from(QSIZE)
}

/// vring_need_event from the virtio spec.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Byte ranges of guest memory the device may write now.
struct Allowed(Vec<(u64, u64)>);

impl Allowed {
    /// The rest of guest memory: sorted, disjoint (start, end) ranges.
    fn complement(&self) -> Vec<(usize, usize)> {
        let mut r: Vec<(usize, usize)> = self
            .0
            .iter()
            .map(|&(a, l)| (a as usize, (a + l) as usize))
            .collect();
        r.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for (a, e) in r {
            if a > at {
                out.push((at, a));
            }
            at = at.max(e);
        }
        if at < MEM_SIZE {
            out.push((at, MEM_SIZE));
        }
        out
    }
}

/// How the guest lays out its receive buffers.
#[derive(Clone, Copy, Debug)]
enum RxShape {
    /// VIRTIO_NET_F_MRG_RXBUF: one descriptor per buffer.
    Mergeable,
    /// No MRG_RXBUF, guest TSO: header descriptor plus 17 pages.
    Big,
    /// No MRG_RXBUF, no offloads: one MTU-sized descriptor.
    Small,
}

struct Model<'a> {
    mem: &'a GuestMemoryMmap,
    rng: Rng,
    heap: Heap,
    rx: DriverQueue,
    tx: DriverQueue,
    shape: RxShape,
    acked: u64,
    indirect: bool,
    /// Malformed chains and oversized frames on purpose.
    hostile: bool,
    host: UnixDatagram,
    irq: Arc<Interrupt>,
    rx_kick: vmm_sys_util::eventfd::EventFd,
    tx_kick: vmm_sys_util::eventfd::EventFd,
    /// Frames the host sent, not yet seen by the guest.
    in_flight: VecDeque<Vec<u8>>,
    /// Frames the guest queued, not yet seen by the host.
    tx_expected: VecDeque<Vec<u8>>,
    /// Guest memory before and after the device ran (reused every step).
    before: Vec<u8>,
    now: Vec<u8>,
    delivered: u64,
    sent: u64,
    dropped: u64,
    interrupts: u64,
}

impl Model<'_> {
    fn has(&self, bit: u32) -> bool {
        self.acked & feature(bit) != 0
    }

    /// Copies all guest memory into `into` (reused: fresh 4 MiB vectors
    /// per step would cost more than the test itself).
    fn snapshot(&self, into: &mut Vec<u8>) {
        into.resize(MEM_SIZE, 0);
        self.mem.read_slice(into, GuestAddress(0)).unwrap();
    }

    /// The largest frame (with header) the host may send the guest.
    fn max_rx_frame(&self) -> usize {
        let tso = self.has(VIRTIO_NET_F_GUEST_TSO4) || self.has(VIRTIO_NET_F_GUEST_TSO6);
        if tso && self.has(VIRTIO_NET_F_GUEST_CSUM) {
            MAX_BUFFER_LEN
        } else {
            VNET_HDR_LEN + MTU_FRAME
        }
    }

    fn random_frame(&mut self, max: usize, tx: bool) -> Vec<u8> {
        let len = match self.rng.range(0, 9) {
            0..=3 => self.rng.range(ETH_HLEN as u64, 128) as usize,
            4..=6 => VNET_HDR_LEN + MTU_FRAME.min(max - VNET_HDR_LEN),
            _ => self.rng.range((VNET_HDR_LEN + ETH_HLEN) as u64, max as u64) as usize,
        }
        .clamp(VNET_HDR_LEN + ETH_HLEN, max);
        let mut f: Vec<u8> = (0..len).map(|_| self.rng.next() as u8).collect();
        // A header the other side accepts: flags and GSO type within what
        // was negotiated for this direction.
        let (csum, tso4, tso6, ecn) = if tx {
            (
                VIRTIO_NET_F_CSUM,
                VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_F_HOST_ECN,
            )
        } else {
            (
                VIRTIO_NET_F_GUEST_CSUM,
                VIRTIO_NET_F_GUEST_TSO4,
                VIRTIO_NET_F_GUEST_TSO6,
                VIRTIO_NET_F_GUEST_ECN,
            )
        };
        f[0] = if self.has(csum) && self.rng.chance(50) {
            VIRTIO_NET_HDR_F_NEEDS_CSUM
        } else if !tx && self.rng.chance(30) {
            2 // DATA_VALID
        } else {
            0
        };
        f[1] = VIRTIO_NET_HDR_GSO_NONE;
        if f[0] == VIRTIO_NET_HDR_F_NEEDS_CSUM && len > VNET_HDR_LEN + MTU_FRAME {
            if self.has(tso4) {
                f[1] = VIRTIO_NET_HDR_GSO_TCPV4;
            } else if self.has(tso6) {
                f[1] = VIRTIO_NET_HDR_GSO_TCPV6;
            }
            if f[1] != 0 && self.has(ecn) && self.rng.chance(20) {
                f[1] |= VIRTIO_NET_HDR_GSO_ECN;
            }
        }
        f
    }

    /// The guest refills its receive ring, as try_fill_recv does.
    fn refill_rx(&mut self) {
        let want = self.rng.range(0, u64::from(QSIZE) / 2);
        for _ in 0..want {
            let bad = self.hostile && self.rng.chance(4);
            let (segs, allocs) = match (self.shape, bad) {
                (_, true) => {
                    // Readable descriptor, out of memory, or (mergeable) a
                    // buffer too small for the header.
                    let a = match self.heap.alloc(256) {
                        Some(a) => a,
                        None => break,
                    };
                    // A buffer too small for the header is only malformed
                    // with mergeable buffers; otherwise it just drops frames.
                    let kinds = if matches!(self.shape, RxShape::Mergeable) {
                        2
                    } else {
                        1
                    };
                    let seg = match self.rng.range(0, kinds) {
                        0 => (a, 256, false),
                        1 => (MEM_SIZE as u64 - 16, 256, true),
                        _ => (a, 4, true),
                    };
                    (vec![seg], vec![(a, 256)])
                }
                (RxShape::Mergeable, false) => {
                    let len = match self.rng.range(0, 3) {
                        0 => self.rng.range(VNET_HDR_LEN as u64, 256),
                        1 => 1536,
                        _ => self.rng.range(1024, 8192),
                    };
                    let Some(a) = self.heap.alloc(len) else { break };
                    (vec![(a, len as u32, true)], vec![(a, len)])
                }
                (RxShape::Big, false) => {
                    let mut segs = Vec::new();
                    let mut allocs = Vec::new();
                    for (i, len) in [VNET_HDR_LEN as u64, 4096 - 16]
                        .into_iter()
                        .chain(std::iter::repeat_n(4096, 17))
                        .enumerate()
                    {
                        match self.heap.alloc(len) {
                            Some(a) => {
                                segs.push((a, len as u32, true));
                                allocs.push((a, len));
                            }
                            None => {
                                let _ = i;
                                break;
                            }
                        }
                    }
                    if segs.len() < 19 {
                        for (a, l) in allocs {
                            self.heap.free(a, l);
                        }
                        break;
                    }
                    (segs, allocs)
                }
                (RxShape::Small, false) => {
                    let len = (VNET_HDR_LEN + MTU_FRAME + 4) as u64;
                    let Some(a) = self.heap.alloc(len) else { break };
                    (vec![(a, len as u32, true)], vec![(a, len)])
                }
            };
            // Linux puts big-packet chains in indirect tables when it may.
            let indirect = self.indirect && segs.len() > 1 && self.rng.chance(70)
                || self.indirect && self.rng.chance(10);
            let fresh = allocs.clone();
            if self
                .rx
                .post(self.mem, &mut self.heap, segs, allocs, indirect, bad)
                .is_none()
            {
                for (a, l) in fresh {
                    self.heap.free(a, l);
                }
                break;
            }
        }
        if self.rx.needs_kick(self.mem) {
            self.rx_kick.write(1).unwrap();
        }
    }

    /// The guest queues frames for transmission (start_xmit).
    fn queue_tx(&mut self) {
        let n = self.rng.range(0, 6);
        for _ in 0..n {
            let frame = self.random_frame(MAX_BUFFER_LEN, true);
            // Header alone first (as Linux does without any_header_sg), then
            // pieces of at most a page or two.
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < frame.len() {
                let step = if at == 0 && self.rng.chance(50) {
                    VNET_HDR_LEN
                } else {
                    self.rng.range(1, 8192) as usize
                };
                let end = (at + step).min(frame.len());
                pieces.push(&frame[at..end]);
                at = end;
            }
            let mut segs = Vec::new();
            let mut allocs = Vec::new();
            let mut ok = true;
            for p in &pieces {
                match self.heap.alloc(p.len() as u64) {
                    Some(a) => {
                        self.mem.write_slice(p, GuestAddress(a)).unwrap();
                        segs.push((a, p.len() as u32, false));
                        allocs.push((a, p.len() as u64));
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            let indirect =
                self.indirect && (segs.len() > 1 || self.rng.chance(10)) && self.rng.chance(80);
            let fresh = allocs.clone();
            if !ok
                || (!indirect && segs.len() > usize::from(QSIZE))
                || self
                    .tx
                    .post(self.mem, &mut self.heap, segs, allocs, indirect, false)
                    .is_none()
            {
                for (a, l) in fresh {
                    self.heap.free(a, l);
                }
                break;
            }
            self.tx_expected.push_back(frame);
        }
        if self.tx.needs_kick(self.mem) {
            self.tx_kick.write(1).unwrap();
        }
    }

    /// The host sends the guest frames while its socket takes them.
    fn host_sends(&mut self) {
        let n = self.rng.range(0, 12);
        for _ in 0..n {
            let max = if self.hostile && self.rng.chance(5) {
                MAX_BUFFER_LEN
            } else {
                self.max_rx_frame()
            };
            let f = self.random_frame(max, false);
            match self.host.send(&f) {
                Ok(_) => {
                    self.in_flight.push_back(f);
                    self.sent += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("host send: {e}"),
            }
        }
    }

    /// Checks the memory the device touched since the last look, and
    /// returns the new used entries of both queues.
    fn check_device_writes(&mut self) -> (Vec<Used>, Vec<Used>) {
        let mut now = std::mem::take(&mut self.now);
        self.snapshot(&mut now);
        let before = &self.before;
        let rx_used = self.rx.peek_used(self.mem);
        let tx_used = self.tx.peek_used(self.mem);
        let mut allowed = Allowed(vec![
            (RX_RINGS.2, 4 + 8 * u64::from(QSIZE) + 2),
            (TX_RINGS.2, 4 + 8 * u64::from(QSIZE) + 2),
        ]);
        for &(head, len) in &rx_used {
            let p = &self.rx.posted[&(head as u16)];
            let mut left = u64::from(len);
            for &(a, l, w) in &p.segs {
                if left == 0 {
                    break;
                }
                assert!(w || p.bad, "device used a readable receive descriptor");
                let n = left.min(u64::from(l));
                allowed.0.push((a, n));
                left -= n;
            }
            assert_eq!(
                left, 0,
                "used length {len} of receive chain {head} exceeds its writable bytes ({:?})",
                p.segs
            );
        }
        for &(_, len) in &tx_used {
            assert_eq!(len, 0, "the device claims to have written a transmit chain");
        }
        for (start, end) in allowed.complement() {
            let (b, n) = (&before[start..end], &now[start..end]);
            if b != n {
                let j = b.iter().zip(n).position(|(x, y)| x != y).unwrap_or(0);
                panic!(
                    "the device wrote guest memory at {:#x} ({:#04x} -> {:#04x}), outside every \
                     buffer it was given and outside the used rings; rx used {rx_used:?}",
                    start + j,
                    b[j],
                    n[j]
                );
            }
        }
        self.now = now;
        (rx_used, tx_used)
    }

    /// The guest's NAPI poll: consume used entries, check them, re-enable
    /// interrupts.
    fn guest_consumes(&mut self, rx_used: &[(u32, u32)], tx_used: &[(u32, u32)]) {
        let mut i = 0;
        while i < rx_used.len() {
            let (head, len) = rx_used[i];
            let p = self.rx.complete(&mut self.heap, head);
            if p.bad || len == 0 {
                assert_eq!(len, 0, "a malformed receive chain came back with data");
                i += 1;
                continue;
            }
            let mut data = read_chain(self.mem, &p.segs, len);
            let mut n_bufs = 1;
            if matches!(self.shape, RxShape::Mergeable) {
                n_bufs = u16::from_le_bytes([data[10], data[11]]) as usize;
                assert!(n_bufs >= 1, "num_buffers 0");
                for k in 1..n_bufs {
                    let (h, l) = *rx_used
                        .get(i + k)
                        .expect("a frame's later buffers come in the same pass");
                    let q = self.rx.complete(&mut self.heap, h);
                    assert!(!q.bad && l > 0, "frame continued into an empty buffer");
                    data.extend(read_chain(self.mem, &q.segs, l));
                }
            }
            // The frame must be the next one the host sent, or a later one
            // if the device dropped some (counted below).
            loop {
                let Some(mut want) = self.in_flight.pop_front() else {
                    panic!(
                        "the guest got a frame the host never sent ({} bytes)",
                        data.len()
                    );
                };
                set_num_buffers(&mut want, n_bufs as u16);
                if !matches!(self.shape, RxShape::Mergeable) {
                    // num_buffers is only defined with MRG_RXBUF; the device
                    // may leave it as the TAP wrote it (we compare the rest).
                    want[10..12].copy_from_slice(&data[10..12]);
                }
                if want == data {
                    break;
                }
                self.dropped += 1;
            }
            self.delivered += 1;
            i += n_bufs;
        }
        for &(head, _) in tx_used {
            self.tx.complete(&mut self.heap, head);
        }
        self.rx.enable_interrupts(self.mem);
        // Transmit completions are wanted late (start_xmit's
        // virtqueue_enable_cb_delayed asks at 3/4 of what is outstanding).
        let outstanding = self.tx.posted.len() as u64;
        let later = if outstanding > 0 && self.rng.chance(50) {
            self.rng.range(0, outstanding) as u16
        } else {
            0
        };
        self.tx.enable_interrupts_after(self.mem, later);
    }

    /// The host takes what the guest sent; returns how many frames.
    fn host_receives(&mut self) -> usize {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 16];
        let mut got = 0;
        loop {
            match self.host.recv(&mut buf) {
                Ok(n) => {
                    got += 1;
                    let want = self
                        .tx_expected
                        .pop_front()
                        .expect("the host got a frame the guest never sent");
                    assert_eq!(buf[..n], want[..], "transmitted frame changed on the way");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("host recv: {e}"),
            }
        }
    }
}

fn read_chain(mem: &GuestMemoryMmap, segs: &[Seg], len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut left = len as usize;
    for &(a, l, _) in segs {
        let n = left.min(l as usize);
        let mut b = vec![0u8; n];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        out.extend(b);
        left -= n;
        if left == 0 {
            break;
        }
    }
    out
}

/// Runs one seeded scenario with `features` negotiated; returns
/// (frames delivered, frames dropped, interrupts).
fn run(seed: u64, steps: usize, shape: RxShape, features: u64, hostile: bool) -> (u64, u64, u64) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut rng = Rng(seed | 1);
    let event_idx = features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
    // Start near the u16 wrap of the ring indexes half of the time.
    let start = if rng.chance(50) {
        u16::MAX - rng.range(0, 300) as u16
    } else {
        rng.range(0, 1000) as u16
    };
    let rx = DriverQueue::new(&mem, RX_RINGS, start, event_idx);
    let tx = DriverQueue::new(&mem, TX_RINGS, start.wrapping_add(7), event_idx);
    let (a, host) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let mut net = Net::with_backend(
        "prop0".into(),
        MacAddr([2, 0, 0, 0, 0, 1]),
        Arc::new(SockIo(a)),
    )
    .unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    let mut events = EventManager::<NetHandler>::new().unwrap();
    let handler = events.add_subscriber(net.event_handler().unwrap());
    let acked = feature(VIRTIO_F_VERSION_1) | features;
    net.activate(
        mem.clone(),
        acked,
        vec![rx.queue(start), tx.queue(start.wrapping_add(7))],
        irq.clone(),
    )
    .unwrap();
    let mut m = Model {
        mem: &mem,
        rng,
        heap: Heap::new(),
        rx,
        tx,
        shape,
        acked,
        indirect: features & feature(VIRTIO_F_RING_INDIRECT_DESC) != 0,
        hostile,
        host,
        irq,
        rx_kick: net.queue_events()[RX_QUEUE].try_clone().unwrap(),
        tx_kick: net.queue_events()[TX_QUEUE].try_clone().unwrap(),
        in_flight: VecDeque::new(),
        tx_expected: VecDeque::new(),
        before: Vec::new(),
        now: Vec::new(),
        delivered: 0,
        sent: 0,
        dropped: 0,
        interrupts: 0,
    };
    m.rx.enable_interrupts(&mem);
    m.tx.enable_interrupts(&mem);
    for step in 0..steps {
        match m.rng.range(0, 3) {
            0 => m.refill_rx(),
            1 => m.queue_tx(),
            _ => m.host_sends(),
        }
        // The VMM's event loop, until it has nothing left to do.
        let rx_event = m.rx.used_event(&mem);
        let tx_event = m.tx.used_event(&mem);
        let rx_old = m.rx.last_used;
        let tx_old = m.tx.last_used;
        // Guest memory as the driver left it: the device may change only
        // what check_device_writes allows.
        let mut before = std::mem::take(&mut m.before);
        m.snapshot(&mut before);
        m.before = before;
        // The VMM's event loop until it is idle, the host taking what the
        // guest sends meanwhile (a full socket pauses transmission).
        let mut passes = 0;
        loop {
            while events.run_with_timeout(0).unwrap() > 0 {
                passes += 1;
                assert!(passes < 5000, "the event loop never goes idle (busy loop)");
            }
            if m.host_receives() == 0 {
                break;
            }
        }
        let (rx_used, tx_used) = m.check_device_writes();
        // Interrupt owed: the driver asked (used_event) for one at an entry
        // the device has now used.
        let owed = |event: u16, old: u16, new: u16| {
            new != old && (!event_idx || need_event(event, new, old))
        };
        let rx_new = rx_old.wrapping_add(rx_used.len() as u16);
        let tx_new = tx_old.wrapping_add(tx_used.len() as u16);
        let signalled = m.irq.eventfd().read().is_ok();
        if signalled {
            m.interrupts += 1;
        }
        if owed(rx_event, rx_old, rx_new) || owed(tx_event, tx_old, tx_new) {
            assert!(
                signalled,
                "step {step}: used entries the driver asked to be interrupted for, and no \
                 interrupt (rx {rx_old}->{rx_new} event {rx_event}, tx {tx_old}->{tx_new} \
                 event {tx_event})"
            );
        }
        m.guest_consumes(&rx_used, &tx_used);
        // Liveness: the next frame waits only if the guest truly has no
        // room for it (and a malformed chain or an oversized frame may be
        // the one dropped meanwhile, in hostile runs).
        if !hostile {
            if let Some(next) = m.in_flight.front() {
                let room: u64 =
                    m.rx.posted
                        .values()
                        .map(|p| p.segs.iter().map(|s| u64::from(s.1)).sum::<u64>())
                        .max_by(|a, b| a.cmp(b))
                        .unwrap_or(0);
                let total: u64 =
                    m.rx.posted
                        .values()
                        .map(|p| p.segs.iter().map(|s| u64::from(s.1)).sum::<u64>())
                        .sum();
                let fits = match shape {
                    RxShape::Mergeable => total >= next.len() as u64,
                    _ => room >= next.len() as u64,
                };
                assert!(
                    !fits,
                    "step {step}: a {}-byte frame waits though the guest has posted room for \
                     it ({total} bytes in {} chains): a stall",
                    next.len(),
                    m.rx.posted.len()
                );
            }
            assert!(
                m.tx.posted.is_empty(),
                "step {step}: transmit chains left in the ring after the device went idle"
            );
        }
    }
    let s = events
        .subscriber_mut(handler)
        .unwrap()
        .stats()
        .expect("the device is active");
    if !hostile {
        assert_eq!(s.rx_dropped, 0, "frames dropped in a run that allows none");
        assert_eq!(m.dropped, 0);
    }
    assert_eq!(
        s.rx_frames, m.delivered,
        "device and guest disagree on frames"
    );
    (m.delivered, m.dropped, m.interrupts)
}

fn seeds() -> (u64, usize) {
    let seed = std::env::var("KVMINI_NET_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0017);
    let steps = std::env::var("KVMINI_NET_PROPTEST_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    (seed, steps)
}

/// What Linux's virtio-net negotiates with this device.
fn linux_features() -> u64 {
    [
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_F_RING_INDIRECT_DESC,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
    ]
    .iter()
    .map(|&b| feature(b))
    .sum()
}

fn check(name: &str, shape: RxShape, features: u64, hostile: bool) {
    let (seed, steps) = seeds();
    for round in 0..4u64 {
        let s = seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let r = std::panic::catch_unwind(|| run(s, steps, shape, features, hostile));
        match r {
            Ok((delivered, _, _)) => {
                assert!(
                    delivered > 0 || steps < 20 || hostile,
                    "{name}: seed {s}: no frame delivered in {steps} steps"
                )
            }
            Err(e) => {
                eprintln!(
                    "{name}: failed with KVMINI_NET_PROPTEST_SEED={s} KVMINI_NET_PROPTEST_STEPS={steps}"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
}

#[test]
fn linux_negotiation_writes_only_inside_its_buffers() {
    check("linux", RxShape::Mergeable, linux_features(), false);
}

#[test]
fn without_event_idx_or_indirect() {
    let f = linux_features()
        & !feature(VIRTIO_F_RING_EVENT_IDX)
        & !feature(VIRTIO_F_RING_INDIRECT_DESC);
    check("plain rings", RxShape::Mergeable, f, false);
}

#[test]
fn big_packet_chains_without_mergeable_buffers() {
    let f = linux_features() & !feature(VIRTIO_NET_F_MRG_RXBUF);
    check("big packets", RxShape::Big, f, false);
}

#[test]
fn small_buffers_without_offloads() {
    let f = feature(VIRTIO_F_RING_EVENT_IDX) | feature(VIRTIO_NET_F_MAC);
    check("small buffers", RxShape::Small, f, false);
}

#[test]
fn hostile_guest_and_host_cannot_make_it_write_elsewhere() {
    check(
        "hostile mergeable",
        RxShape::Mergeable,
        linux_features(),
        true,
    );
    let f = linux_features() & !feature(VIRTIO_NET_F_MRG_RXBUF);
    check("hostile big", RxShape::Big, f, true);
}

/// Issue 17: a frame spread over several mergeable buffers must appear in
/// the used ring all at once. The "guest" is a second thread that polls
/// the used index while the device delivers frames, as the guest's NAPI
/// poll does on its vCPU while kvmini's event loop runs on another host
/// CPU; each time the index moves it checks that it ends on a frame
/// boundary (the first buffer's `num_buffers` entries all visible). With
/// the index published after each buffer, the guest saw frames cut short
/// and dropped them (Linux: "rx error: N buffers out of M missing"), then
/// took the rest of each for frames of their own.
#[test]
fn a_frame_over_several_buffers_is_published_whole() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const BUF_LEN: u32 = 4096;
    /// 15 buffers of 4 KiB.
    const FRAME: usize = 60_000;
    let frames = usize::from(QSIZE) * BUF_LEN as usize / FRAME;
    let mut partial_seen = 0u32;
    let mut whole_seen = 0u32;
    for round in 0..8u16 {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let start = round.wrapping_mul(9000);
        let mut rx = DriverQueue::new(&mem, RX_RINGS, start, true);
        let tx = DriverQueue::new(&mem, TX_RINGS, start, true);
        let mut heap = Heap::new();
        let mut bufs = HashMap::new();
        for _ in 0..QSIZE {
            let a = heap.alloc(u64::from(BUF_LEN)).unwrap();
            let head = rx
                .post(
                    &mem,
                    &mut heap,
                    vec![(a, BUF_LEN, true)],
                    vec![],
                    false,
                    false,
                )
                .unwrap();
            bufs.insert(u32::from(head), a);
        }
        let (a, host) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut net = Net::with_backend(
            "whole0".into(),
            MacAddr([2, 0, 0, 0, 0, 2]),
            Arc::new(SockIo(a)),
        )
        .unwrap();
        let mut handler = net.event_handler().unwrap();
        net.activate(
            mem.clone(),
            feature(VIRTIO_F_VERSION_1)
                | feature(VIRTIO_NET_F_MRG_RXBUF)
                | feature(VIRTIO_F_RING_EVENT_IDX),
            vec![rx.queue(start), tx.queue(start)],
            Arc::new(Interrupt::new().unwrap()),
        )
        .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let guest = {
            let (mem, done) = (mem.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut last, mut partial, mut whole) = (start, 0u32, 0u32);
                let mut last_look = false;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let idx = u16::from_le(
                        mem.load::<u16>(GuestAddress(RX_RINGS.2 + 2), Ordering::Acquire)
                            .unwrap(),
                    );
                    if idx != last {
                        // Walk the frames from the first entry.
                        let mut at = start;
                        while at != idx && idx.wrapping_sub(at) <= QSIZE {
                            let slot = RX_RINGS.2 + 4 + 8 * u64::from(at % QSIZE);
                            let id = mem.read_obj::<u32>(GuestAddress(slot)).unwrap();
                            let mut hdr = [0u8; VNET_HDR_LEN];
                            mem.read_slice(&mut hdr, GuestAddress(bufs[&id])).unwrap();
                            at = at.wrapping_add(u16::from_le_bytes([hdr[10], hdr[11]]).max(1));
                        }
                        if at == idx {
                            whole += 1;
                        } else {
                            partial += 1;
                        }
                        last = idx;
                    }
                    if last_look {
                        return (partial, whole);
                    }
                    last_look = finished;
                    std::hint::spin_loop();
                }
            })
        };
        let mut sent = 0;
        while sent < frames {
            let mut f = vec![0u8; VNET_HDR_LEN];
            f.extend((0..FRAME - VNET_HDR_LEN).map(|i| (i % 251) as u8));
            match host.send(&f) {
                Ok(_) => sent += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            handler.process_rx();
        }
        handler.process_rx();
        done.store(true, Ordering::Release);
        let (partial, whole) = guest.join().unwrap();
        partial_seen += partial;
        whole_seen += whole;
        let s = handler.stats().unwrap();
        assert_eq!(s.rx_frames, frames as u64, "round {round}: {s:?}");
        assert_eq!(rx.peek_used(&mem).len(), frames * 15, "round {round}");
    }
    assert_eq!(
        partial_seen, 0,
        "the guest saw the used index stop inside a frame {partial_seen} times \
         (and a whole number of frames {whole_seen} times)"
    );
    assert!(whole_seen > 0);
}
