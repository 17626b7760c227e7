//! Guest memory and split virtqueues built from fuzzer input, and the
//! checks every queue target makes after the device has run.
//!
//! # Guest memory
//!
//! Three regions: two adjacent 64 KiB ones at 0 and 0x1_0000 (a buffer may
//! span both), a 4 KiB hole, and 4 KiB at 0x2_1000; it ends at
//! [`MEM_END`]. Before each input every byte is set to a canary that
//! depends on its address ([`canary`]), so a byte the device copies
//! elsewhere shows up too.
//!
//! Queue `i` has its control block at `i * 0x4000`: descriptor table at
//! +0, available ring at +0x1000, used ring at +0x2000, and +0x3000 holds
//! the input's indirect descriptors. Data buffers normally live at
//! [`DATA_BASE`] and above (the range reaches into the hole and past the
//! end of memory); raw addresses can point anywhere, rings included.
//!
//! # Queue encoding ([`QueueSpec::parse`])
//!
//! `size_log2 u8` (size `1 << (v % 9)`, capped per device), `start u16`
//! (the driver's and device's ring positions: next_avail, next_used and
//! used.idx all start there, so wrap-around at 65535 is reachable),
//! `avail_flags u16`, `used_event u16`, `n_heads u8` then `min(n, size)`
//! heads as `u16` (available ring entries from `start` on), `published u8`
//! (how many of them avail.idx exposes at first), `raw_idx u8` (odd: a raw
//! `u16` avail.idx follows, which may lie about the count), `n_desc u8`
//! then `min(n, size)` descriptors (the rest of the table is zero), `n_ind
//! u8` then that many descriptors written at +0x3000.
//!
//! A descriptor is 11 bytes: `flags u8` (NEXT 1, WRITE 2, INDIRECT 4),
//! `next u8`, `mode u8`, `a u32`, `len u32`; `mode % 5` picks the address
//! ([`decode_addr`]): data area, this queue's indirect area, `a` raw,
//! `u64::MAX - a`, or `a << 32`.
//!
//! # Checks ([`Layout::check`])
//!
//! Before the device runs, every chain the available ring can name is
//! walked with virtio-queue itself (so the walk is the device's own).
//! Unless the chains could change while the device runs (a writable
//! descriptor over a descriptor table, ring or indirect table, or an
//! indirect table over a ring: the checks would then be guessing),
//! afterwards:
//! - every guest byte that changed lies in a device-writable descriptor of
//!   one of those chains, or in a used ring;
//! - the used ring holds no more entries than the driver made available,
//!   each names a head from the available ring, and its length is at most
//!   the writable bytes of that head's chain.

use std::cell::RefCell;
use std::collections::BTreeMap;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::input::{Encoder, Input};

/// The guest's RAM regions (start, size).
pub const REGIONS: [(u64, usize); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x2_1000, 0x1000)];
/// End of guest memory (exclusive).
pub const MEM_END: u64 = 0x2_2000;
/// Size of one queue's control block.
pub const CTRL_SIZE: u64 = 0x4000;
pub const AVAIL_OFF: u64 = 0x1000;
pub const USED_OFF: u64 = 0x2000;
pub const INDIRECT_OFF: u64 = 0x3000;
/// Size of the indirect area: 256 descriptors.
pub const INDIRECT_SIZE: u64 = 0x1000;
/// Where data buffers live, after the control blocks of two queues.
pub const DATA_BASE: u64 = 2 * CTRL_SIZE;
/// Data addresses cover the hole and 4 KiB past the end of memory.
pub const DATA_SPAN: u64 = MEM_END + 0x1000 - DATA_BASE;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// The canary byte at `addr`.
pub fn canary(addr: u64) -> u8 {
    (addr as u8).wrapping_mul(0x9d) ^ ((addr >> 8) as u8) ^ 0xa5
}

/// Control block of queue `i`.
pub const fn ctrl(i: u64) -> u64 {
    i * CTRL_SIZE
}

/// A guest address from a descriptor's or poke's `mode` and `a`; `ctrl`
/// is the control block of the queue it belongs to.
pub fn decode_addr(mode: u8, a: u32, ctrl: u64) -> u64 {
    let a64 = u64::from(a);
    match mode % 5 {
        0 => DATA_BASE + a64 % DATA_SPAN,
        1 => ctrl + INDIRECT_OFF + a64 % INDIRECT_SIZE,
        2 => a64,
        3 => u64::MAX - a64,
        _ => a64 << 32,
    }
}

/// Where a seed puts a buffer (the inverse of [`decode_addr`]).
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    /// Offset in the data area.
    Data(u32),
    /// Offset in the queue's indirect area.
    Indirect(u32),
    Raw(u32),
    FromTop(u32),
    High(u32),
}

impl Addr {
    fn encode(self) -> (u8, u32) {
        match self {
            Self::Data(a) => (0, a),
            Self::Indirect(a) => (1, a),
            Self::Raw(a) => (2, a),
            Self::FromTop(a) => (3, a),
            Self::High(a) => (4, a),
        }
    }
}

/// A descriptor as a seed writes it.
#[derive(Clone, Copy, Debug)]
pub struct SeedDesc {
    pub flags: u16,
    pub next: u8,
    pub addr: Addr,
    pub len: u32,
}

impl SeedDesc {
    pub fn new(addr: Addr, len: u32, flags: u16, next: u8) -> Self {
        Self {
            flags,
            next,
            addr,
            len,
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        let (mode, a) = self.addr.encode();
        e.u8(self.flags as u8)
            .u8(self.next)
            .u8(mode)
            .u32(a)
            .u32(self.len);
    }
}

/// A queue as a seed describes it; [`QueueSpec::parse`] reads it back.
#[derive(Clone, Debug, Default)]
pub struct SeedQueue {
    pub size_log2: u8,
    pub start: u16,
    pub avail_flags: u16,
    pub used_event: u16,
    pub heads: Vec<u16>,
    pub published: u8,
    pub raw_idx: Option<u16>,
    pub table: Vec<SeedDesc>,
    pub indirect: Vec<SeedDesc>,
}

impl SeedQueue {
    /// A queue of `1 << size_log2` entries whose table is `table` and whose
    /// available ring offers `heads`, all published.
    pub fn new(size_log2: u8, table: Vec<SeedDesc>, heads: Vec<u16>) -> Self {
        Self {
            size_log2,
            published: heads.len() as u8,
            heads,
            table,
            ..Default::default()
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        e.u8(self.size_log2)
            .u16(self.start)
            .u16(self.avail_flags)
            .u16(self.used_event)
            .u8(self.heads.len() as u8);
        for &h in &self.heads {
            e.u16(h);
        }
        e.u8(self.published);
        match self.raw_idx {
            Some(i) => e.u8(1).u16(i),
            None => e.u8(0),
        };
        e.u8(self.table.len() as u8);
        for d in &self.table {
            d.encode(e);
        }
        e.u8(self.indirect.len() as u8);
        for d in &self.indirect {
            d.encode(e);
        }
    }
}

/// Writes into guest memory before the device starts: request headers,
/// frames, whatever the buffers should hold. `n u8`, then per poke `mode
/// u8`, `a u32` (as for descriptors, in queue 0's terms), `len u16` and up
/// to `len` bytes.
pub fn parse_pokes(inp: &mut Input) -> Vec<(u64, Vec<u8>)> {
    let n = inp.u8();
    (0..n).flat_map(|_| parse_one_poke(inp)).collect()
}

/// One poke, without the count.
pub fn parse_one_poke(inp: &mut Input) -> Vec<(u64, Vec<u8>)> {
    let (mode, a) = (inp.u8(), inp.u32());
    let len = usize::from(inp.u16());
    vec![(decode_addr(mode, a, ctrl(0)), inp.bytes(len).to_vec())]
}

pub fn encode_pokes(e: &mut Encoder, pokes: &[(Addr, &[u8])]) {
    e.u8(pokes.len() as u8);
    for (addr, bytes) in pokes {
        let (mode, a) = addr.encode();
        e.u8(mode).u32(a).u16(bytes.len() as u16).bytes(bytes);
    }
}

fn read_desc(inp: &mut Input, ctrl: u64) -> Descriptor {
    let flags = u16::from(inp.u8());
    let next = u16::from(inp.u8());
    let mode = inp.u8();
    let a = inp.u32();
    let len = inp.u32();
    Descriptor::new(decode_addr(mode, a, ctrl), len, flags, next)
}

/// A split virtqueue decoded from the input (see the module docs).
#[derive(Debug)]
pub struct QueueSpec {
    pub ctrl: u64,
    pub size: u16,
    pub start: u16,
    pub avail_flags: u16,
    pub used_event: u16,
    pub heads: Vec<u16>,
    pub published: u16,
    pub raw_idx: Option<u16>,
    pub table: Vec<Descriptor>,
    pub indirect: Vec<Descriptor>,
    pub event_idx: bool,
}

impl QueueSpec {
    /// Reads queue number `index` (its control block) of at most
    /// `max_size` entries.
    pub fn parse(inp: &mut Input, index: u64, max_size: u16) -> Self {
        let ctrl = ctrl(index);
        let size = (1u16 << (inp.u8() % 9)).min(max_size);
        let start = inp.u16();
        let avail_flags = inp.u16();
        let used_event = inp.u16();
        let n = usize::from(inp.u8()).min(usize::from(size));
        let heads: Vec<u16> = (0..n).map(|_| inp.u16()).collect();
        let published = u16::from(inp.u8()).min(n as u16);
        let raw_idx = inp.bool().then(|| inp.u16());
        let n = usize::from(inp.u8()).min(usize::from(size));
        let table = (0..n).map(|_| read_desc(inp, ctrl)).collect();
        let n = inp.u8();
        let indirect = (0..n).map(|_| read_desc(inp, ctrl)).collect();
        Self {
            ctrl,
            size,
            start,
            avail_flags,
            used_event,
            heads,
            published,
            raw_idx,
            table,
            indirect,
            event_idx: false,
        }
    }

    pub fn desc_table(&self) -> u64 {
        self.ctrl
    }

    pub fn avail(&self) -> u64 {
        self.ctrl + AVAIL_OFF
    }

    pub fn used(&self) -> u64 {
        self.ctrl + USED_OFF
    }

    fn ring_len(&self, elem: u64) -> u64 {
        6 + elem * u64::from(self.size)
    }

    /// The avail.idx the driver shows first.
    fn first_idx(&self) -> u16 {
        self.raw_idx
            .unwrap_or(self.start.wrapping_add(self.published))
    }

    /// Writes the descriptor table, indirect area and both rings, and
    /// returns the device's ready queue.
    pub fn install(&self, mem: &GuestMemoryMmap) -> Queue {
        let zero = Descriptor::new(0, 0, 0, 0);
        for i in 0..u64::from(self.size) {
            let d = self.table.get(i as usize).copied().unwrap_or(zero);
            write(mem, self.ctrl + 16 * i, d);
        }
        for i in 0..INDIRECT_SIZE / 16 {
            let d = self.indirect.get(i as usize).copied().unwrap_or(zero);
            write(mem, self.ctrl + INDIRECT_OFF + 16 * i, d);
        }
        let avail = self.avail();
        write(mem, avail, self.avail_flags.to_le());
        write(mem, avail + 2, self.first_idx().to_le());
        for slot in 0..self.size {
            write(mem, avail + 4 + 2 * u64::from(slot), 0u16);
        }
        for (i, &h) in self.heads.iter().enumerate() {
            let slot = self.start.wrapping_add(i as u16) % self.size;
            write(mem, avail + 4 + 2 * u64::from(slot), h.to_le());
        }
        write(
            mem,
            avail + 4 + 2 * u64::from(self.size),
            self.used_event.to_le(),
        );
        let used = self.used();
        let used_zeros = vec![0u8; self.ring_len(8) as usize];
        mem.write_slice(&used_zeros, GuestAddress(used))
            .expect("used ring is in guest memory");
        write(mem, used + 2, self.start.to_le());

        let mut q = Queue::new(self.size).expect("queue sizes are powers of two");
        q.set_desc_table_address(Some(self.ctrl as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_next_avail(self.start);
        q.set_next_used(self.start);
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
        q
    }
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64, v: T) {
    mem.write_obj(v, GuestAddress(addr))
        .expect("control blocks are in guest memory");
}

/// The driver's view of one installed queue while the device runs: it
/// makes more of the available entries visible.
pub struct Driver {
    avail: u64,
    start: u16,
    size: u16,
    heads: u16,
    idx: u16,
    /// The most entries the device could have seen at once.
    pub max_offered: u16,
}

impl Driver {
    pub fn new(spec: &QueueSpec) -> Self {
        let mut d = Self {
            avail: spec.avail(),
            start: spec.start,
            size: spec.size,
            heads: spec.heads.len() as u16,
            idx: spec.first_idx(),
            max_offered: 0,
        };
        d.note();
        d
    }

    fn note(&mut self) {
        let offered = self.idx.wrapping_sub(self.start);
        if offered <= self.size {
            self.max_offered = self.max_offered.max(offered);
        }
    }

    /// Publishes up to `n` more of the queue's heads (never past them).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, n: u16) {
        let shown = self.idx.wrapping_sub(self.start);
        if shown >= self.heads {
            return;
        }
        self.idx = self.start.wrapping_add(shown + n.min(self.heads - shown));
        write(mem, self.avail + 2, self.idx.to_le());
        self.note();
    }
}

/// A half-open guest address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn new(start: u64, len: u64) -> Self {
        Self {
            start,
            end: start.saturating_add(len),
        }
    }

    pub fn overlaps(&self, o: &Range) -> bool {
        self.start < o.end && o.start < self.end && self.start < self.end && o.start < o.end
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// One chain as virtio-queue yields it.
#[derive(Clone, Debug, Default)]
pub struct Chain {
    pub descs: Vec<Descriptor>,
}

impl Chain {
    /// Bytes the device may write into this chain.
    pub fn writable_bytes(&self) -> u64 {
        self.descs
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum()
    }

    pub fn writable(&self) -> impl Iterator<Item = Range> + '_ {
        self.descs
            .iter()
            .filter(|d| d.is_write_only())
            .map(|d| Range::new(d.addr().0, u64::from(d.len())))
    }

    pub fn readable(&self) -> impl Iterator<Item = Range> + '_ {
        self.descs
            .iter()
            .filter(|d| !d.is_write_only())
            .map(|d| Range::new(d.addr().0, u64::from(d.len())))
    }

    /// The concatenated device-readable buffers, if the chain is readable
    /// only, every buffer is in guest memory and they add up to at most
    /// `max` bytes (a looping chain can name gigabytes).
    pub fn read_all(&self, mem: &GuestMemoryMmap, max: usize) -> Option<Vec<u8>> {
        let total: u64 = self.descs.iter().map(|d| u64::from(d.len())).sum();
        if total > max as u64 {
            return None;
        }
        let mut out = Vec::new();
        for d in &self.descs {
            if d.is_write_only() {
                return None;
            }
            let len = d.len() as usize;
            let at = out.len();
            out.resize(at + len, 0);
            mem.read_slice(&mut out[at..], d.addr()).ok()?;
        }
        Some(out)
    }
}

/// An installed queue and every chain its available ring can name.
pub struct QueueInfo {
    pub spec: QueueSpec,
    /// Chains by head index, for every value in the available ring.
    pub chains: BTreeMap<u16, Chain>,
    /// Indirect tables the descriptor table points to.
    pub tables: Vec<Range>,
}

impl QueueInfo {
    /// Walks the chain of every head in `spec`'s available ring with
    /// virtio-queue (through a copy of `queue`), before the device runs.
    pub fn new(mem: &GuestMemoryMmap, spec: QueueSpec, queue: &Queue) -> Self {
        let avail = spec.avail();
        let slot_addr = avail + 4 + 2 * u64::from(spec.start % spec.size);
        let saved: (u16, u16) = (read(mem, avail + 2), read(mem, slot_addr));
        let mut heads: Vec<u16> = (0..spec.size)
            .map(|s| read::<u16>(mem, avail + 4 + 2 * u64::from(s)))
            .map(u16::from_le)
            .collect();
        heads.sort_unstable();
        heads.dedup();
        let mut chains = BTreeMap::new();
        for h in heads {
            write(mem, slot_addr, h.to_le());
            write(mem, avail + 2, spec.start.wrapping_add(1).to_le());
            let mut q = Queue::try_from(queue.state()).expect("queue state is valid");
            let chain = q
                .iter(mem)
                .ok()
                .and_then(|mut it| it.next())
                .map(|c| Chain { descs: c.collect() })
                .unwrap_or_default();
            chains.insert(h, chain);
        }
        write(mem, avail + 2, saved.0);
        write(mem, slot_addr, saved.1);
        let tables = (0..u64::from(spec.size))
            .map(|i| read::<Descriptor>(mem, spec.desc_table() + 16 * i))
            .filter(|d| d.refers_to_indirect_table())
            .map(|d| Range::new(d.addr().0, u64::from(d.len())))
            .collect();
        Self {
            spec,
            chains,
            tables,
        }
    }

    pub fn used_ring(&self) -> Range {
        Range::new(self.spec.used(), self.spec.ring_len(8))
    }

    pub fn avail_ring(&self) -> Range {
        Range::new(self.spec.avail(), self.spec.ring_len(2))
    }

    fn control(&self) -> impl Iterator<Item = Range> + '_ {
        [
            Range::new(self.spec.desc_table(), 16 * u64::from(self.spec.size)),
            self.avail_ring(),
            self.used_ring(),
        ]
        .into_iter()
        .chain(self.tables.iter().copied())
    }

    pub fn writable(&self) -> impl Iterator<Item = Range> + '_ {
        self.chains.values().flat_map(Chain::writable)
    }

    /// The used entries the device added: (head, len), oldest first; at
    /// most a ring's worth (older ones were overwritten).
    pub fn used_entries(&self, mem: &GuestMemoryMmap) -> (u16, Vec<(u32, u32)>) {
        let used = self.spec.used();
        let idx = u16::from_le(read(mem, used + 2));
        let count = idx.wrapping_sub(self.spec.start);
        let shown = count.min(self.spec.size);
        let entries = (count - shown..count)
            .map(|i| {
                let slot = self.spec.start.wrapping_add(i) % self.spec.size;
                let at = used + 4 + 8 * u64::from(slot);
                (u32::from_le(read(mem, at)), u32::from_le(read(mem, at + 4)))
            })
            .collect();
        (count, entries)
    }
}

pub fn read<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64) -> T {
    mem.read_obj(GuestAddress(addr))
        .expect("control blocks are in guest memory")
}

/// Every queue of a device, and the memory as it was before the device ran.
pub struct Layout {
    pub queues: Vec<QueueInfo>,
    before: Vec<Vec<u8>>,
    /// The device cannot change its own control structures, so the checks
    /// below are exact.
    pub strict: bool,
}

impl Layout {
    /// Call after everything is in guest memory and before the device runs.
    pub fn new(mem: &GuestMemoryMmap, queues: Vec<QueueInfo>) -> Self {
        let control = distinct(queues.iter().flat_map(QueueInfo::control));
        let writable = distinct(queues.iter().flat_map(QueueInfo::writable));
        // Rings the device or the harness change while the device runs.
        let rings: Vec<Range> = queues
            .iter()
            .flat_map(|q| [q.used_ring(), q.avail_ring()])
            .collect();
        let tables: Vec<Range> = queues.iter().flat_map(|q| q.tables.clone()).collect();
        let strict = !writable
            .iter()
            .any(|w| control.iter().any(|c| w.overlaps(c)))
            && !tables.iter().any(|t| rings.iter().any(|r| t.overlaps(r)));
        Self {
            queues,
            before: snapshot(mem),
            strict,
        }
    }

    /// The generic checks of the module docs; a device that only reads
    /// buffers (`writes_buffers` false) may change nothing but used rings.
    /// Panics (a finding) when one fails.
    pub fn check(&self, mem: &GuestMemoryMmap, writes_buffers: bool) {
        if !self.strict {
            return;
        }
        // Used rings, and avail.idx, which the harness's driver moves.
        let mut allowed: Vec<Range> = self
            .queues
            .iter()
            .flat_map(|q| [q.used_ring(), Range::new(q.spec.avail() + 2, 2)])
            .collect();
        if writes_buffers {
            allowed.extend(self.queues.iter().flat_map(QueueInfo::writable));
        }
        let allowed = distinct(allowed);
        for ((&(start, _), was), now) in REGIONS.iter().zip(&self.before).zip(snapshot(mem)) {
            assert_changes_within(
                start,
                was,
                &now,
                &allowed,
                "the device (outside its writable buffers and used rings)",
            );
        }
        for (qi, q) in self.queues.iter().enumerate() {
            let (count, entries) = q.used_entries(mem);
            assert!(
                count <= q.spec.size,
                "queue {qi}: {count} used entries for a ring of {}",
                q.spec.size
            );
            for (id, len) in entries {
                let chain = u16::try_from(id)
                    .ok()
                    .and_then(|h| q.chains.get(&h))
                    .unwrap_or_else(|| {
                        panic!("queue {qi}: used entry for head {id}, never made available")
                    });
                assert!(
                    u64::from(len) <= chain.writable_bytes(),
                    "queue {qi}: used length {len} for head {id} exceeds the chain's {} \
                     writable bytes",
                    chain.writable_bytes()
                );
            }
        }
    }

    /// Checks that no more used entries were added than the driver offered.
    pub fn check_offered(&self, mem: &GuestMemoryMmap, queue: usize, driver: &Driver) {
        if !self.strict {
            return;
        }
        let (count, _) = self.queues[queue].used_entries(mem);
        assert!(
            count <= driver.max_offered,
            "queue {queue}: {count} used entries, the driver offered at most {}",
            driver.max_offered
        );
    }
}

/// What a queue target did with an input, for the harness's own tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The checks were exact ([`Layout::strict`]).
    pub strict: bool,
    /// Used entries the device added, per queue.
    pub used: Vec<u16>,
    /// Target-specific: frames sent (net), bytes printed (console).
    pub out: u64,
}

impl Layout {
    pub fn report(&self, mem: &GuestMemoryMmap, out: u64) -> Report {
        Report {
            strict: self.strict,
            used: self.queues.iter().map(|q| q.used_entries(mem).0).collect(),
            out,
        }
    }
}

/// The ranges, sorted, each once (looping chains repeat descriptors).
pub fn distinct(ranges: impl IntoIterator<Item = Range>) -> Vec<Range> {
    let mut v: Vec<Range> = ranges.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A copy of every region.
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    REGIONS
        .iter()
        .map(|&(start, size)| {
            let mut v = vec![0u8; size];
            mem.read_slice(&mut v, GuestAddress(start))
                .expect("regions are in guest memory");
            v
        })
        .collect()
}

/// Asserts that every byte where `now` differs from `was` (copies of guest
/// memory from `base` on) lies in one of `allowed`; `who` names the
/// writer. Compares in blocks and looks at single bytes only in changed
/// blocks outside `allowed`: per-byte loops are slow under coverage
/// instrumentation.
pub fn assert_changes_within(base: u64, was: &[u8], now: &[u8], allowed: &[Range], who: &str) {
    const BLOCK: usize = 256;
    for (c, (x, y)) in was.chunks(BLOCK).zip(now.chunks(BLOCK)).enumerate() {
        let start = base + (c * BLOCK) as u64;
        if x == y
            || allowed
                .iter()
                .any(|r| r.start <= start && start + x.len() as u64 <= r.end)
        {
            continue;
        }
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            let addr = start + i as u64;
            assert!(
                p == q || allowed.iter().any(|r| r.contains(addr)),
                "{who} wrote {q:#04x} over {p:#04x} at {addr:#x}, outside {allowed:x?}"
            );
        }
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    canary: Vec<Vec<u8>>,
}

thread_local! {
    static GUEST: RefCell<Option<Guest>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's guest memory, every byte set to its canary.
pub fn with_memory<R>(f: impl FnOnce(&GuestMemoryMmap) -> R) -> R {
    GUEST.with(|g| {
        let mut g = g.borrow_mut();
        let g = g.get_or_insert_with(|| {
            let ranges: Vec<(GuestAddress, usize)> =
                REGIONS.iter().map(|&(s, n)| (GuestAddress(s), n)).collect();
            Guest {
                mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory can be mapped"),
                canary: REGIONS
                    .iter()
                    .map(|&(s, n)| (s..s + n as u64).map(canary).collect())
                    .collect(),
            }
        });
        for (&(start, _), bytes) in REGIONS.iter().zip(&g.canary) {
            g.mem
                .write_slice(bytes, GuestAddress(start))
                .expect("regions are in guest memory");
        }
        f(&g.mem)
    })
}

/// Reads this thread's guest memory as the last input left it (for the
/// harness's own tests).
pub fn peek(addr: u64, len: usize) -> Vec<u8> {
    GUEST.with(|g| {
        let mut out = vec![0u8; len];
        if let Some(g) = g.borrow().as_ref() {
            let _ = g.mem.read(&mut out, GuestAddress(addr));
        }
        out
    })
}

/// Writes the pokes; a poke that leaves guest memory writes what fits.
pub fn apply_pokes(mem: &GuestMemoryMmap, pokes: &[(u64, Vec<u8>)]) {
    for (addr, bytes) in pokes {
        let _ = mem.write(bytes, GuestAddress(*addr));
    }
}
