//! The seed corpus: valid and near-valid inputs for every target, written
//! with the targets' own encoders. `cargo run --example gen_corpus`
//! writes them to `corpus/<target>/<name>`; `tests/corpus.rs` fails when
//! the committed files and this list disagree.

use std::mem::size_of;

use kvmini::devices::virtio::block::request::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use kvmini::devices::virtio::mmio::*;
use kvmini::devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
};
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EI_CLASS, ELFCLASS64, EM_X86_64, PT_LOAD};
use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use crate::guest::{
    ctrl, encode_pokes, Addr, SeedDesc, SeedQueue, AVAIL_OFF, DATA_BASE, USED_OFF,
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT as N, VRING_DESC_F_WRITE as W,
};
use crate::input::Encoder;

/// (target, file name, bytes).
pub type Seed = (&'static str, String, Vec<u8>);

pub fn seeds() -> Vec<Seed> {
    let mut all = Vec::new();
    for (name, bytes) in block() {
        all.push(("block", name.to_string(), bytes));
    }
    for (name, bytes) in net() {
        all.push(("net", name.to_string(), bytes));
    }
    for (name, bytes) in console() {
        all.push(("console", name.to_string(), bytes));
    }
    for (name, bytes) in mmio() {
        all.push(("mmio", name.to_string(), bytes));
    }
    for (name, bytes) in kernel() {
        all.push(("kernel", name.to_string(), bytes));
    }
    for (name, bytes) in share() {
        all.push(("share", name.to_string(), bytes));
    }
    all
}

fn d(addr: Addr, len: u32, flags: u16, next: u8) -> SeedDesc {
    SeedDesc::new(addr, len, flags, next)
}

/// A chain of `descs` (address, length, flags without NEXT) at table
/// index `at`, linked in order.
fn chain(at: u8, descs: &[(Addr, u32, u16)]) -> Vec<SeedDesc> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(a, len, flags))| {
            let last = i + 1 == descs.len();
            let next = if last { 0 } else { at + i as u8 + 1 };
            d(a, len, if last { flags } else { flags | N }, next)
        })
        .collect()
}

// ---- block ----

const HDR: Addr = Addr::Data(0);
const STATUS: Addr = Addr::Data(0x10);
const BUF: Addr = Addr::Data(0x1000);
const RANGES: Addr = Addr::Data(0x2000);

fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

fn blk_range(sector: u64, n: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&n.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn block_input(flags: u8, q: &SeedQueue, pokes: &[(Addr, &[u8])], ops: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(flags);
    q.encode(&mut e);
    encode_pokes(&mut e, pokes);
    e.bytes(ops);
    e.finish()
}

/// One request: header, `data`, status; a 16-entry queue.
fn blk_request(flags: u8, kind: u32, sector: u64, data: &[(Addr, u32, u16)]) -> Vec<u8> {
    let mut descs = vec![(HDR, 16, 0)];
    descs.extend_from_slice(data);
    descs.push((STATUS, 1, W));
    let q = SeedQueue::new(4, chain(0, &descs), vec![0]);
    let hdr = blk_header(kind, sector);
    block_input(flags, &q, &[(HDR, &hdr)], &[])
}

fn block() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = vec![
        ("in", blk_request(0, VIRTIO_BLK_T_IN, 3, &[(BUF, 1024, W)])),
        (
            "in_two_segments_event_idx",
            blk_request(
                2,
                VIRTIO_BLK_T_IN,
                0,
                &[(BUF, 512, W), (Addr::Data(0x3000), 1536, W)],
            ),
        ),
        (
            "in_across_regions",
            blk_request(0, VIRTIO_BLK_T_IN, 1, &[(Addr::Data(0x7e00), 1024, W)]),
        ),
        (
            "in_into_hole",
            blk_request(0, VIRTIO_BLK_T_IN, 1, &[(Addr::Data(0x17e00), 1024, W)]),
        ),
        (
            "in_past_end_of_disk",
            blk_request(0, VIRTIO_BLK_T_IN, 63, &[(BUF, 1024, W)]),
        ),
        (
            "in_unaligned",
            blk_request(0, VIRTIO_BLK_T_IN, 0, &[(BUF, 500, W)]),
        ),
        (
            "in_readable_buffer",
            blk_request(0, VIRTIO_BLK_T_IN, 0, &[(BUF, 512, 0)]),
        ),
        (
            "out",
            blk_request(0, VIRTIO_BLK_T_OUT, 5, &[(BUF, 1024, 0)]),
        ),
        (
            "out_readonly",
            blk_request(1, VIRTIO_BLK_T_OUT, 5, &[(BUF, 512, 0)]),
        ),
        ("flush", blk_request(0, VIRTIO_BLK_T_FLUSH, 0, &[])),
        (
            "get_id",
            blk_request(0, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 64, W)]),
        ),
        (
            "get_id_short",
            blk_request(0, VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 7, W), (STATUS, 0, W)]),
        ),
        ("bad_type", blk_request(0, 99, 0, &[(BUF, 512, W)])),
    ];
    for (name, flags, kind, range) in [
        ("discard", 4, VIRTIO_BLK_T_DISCARD, blk_range(2, 4, 0)),
        (
            "discard_not_acked",
            0,
            VIRTIO_BLK_T_DISCARD,
            blk_range(2, 4, 0),
        ),
        (
            "write_zeroes",
            8,
            VIRTIO_BLK_T_WRITE_ZEROES,
            blk_range(60, 4, 0),
        ),
        (
            "write_zeroes_unmap",
            8 | 4,
            VIRTIO_BLK_T_WRITE_ZEROES,
            blk_range(0, 64, 1),
        ),
        (
            "write_zeroes_bad_flags",
            8,
            VIRTIO_BLK_T_WRITE_ZEROES,
            blk_range(0, 1, 6),
        ),
    ] {
        let descs = [(HDR, 16, 0), (RANGES, 16, 0), (STATUS, 1, W)];
        let q = SeedQueue::new(4, chain(0, &descs), vec![0]);
        let hdr = blk_header(kind, 0);
        v.push((
            name,
            block_input(flags, &q, &[(HDR, &hdr), (RANGES, &range)], &[]),
        ));
    }
    // An indirect table holding the whole request.
    let hdr = blk_header(VIRTIO_BLK_T_IN, 2);
    let mut q = SeedQueue::new(
        4,
        vec![d(Addr::Indirect(0), 48, VRING_DESC_F_INDIRECT, 0)],
        vec![0],
    );
    q.indirect = chain(0, &[(HDR, 16, 0), (BUF, 512, W), (STATUS, 1, W)]);
    v.push(("indirect", block_input(0, &q, &[(HDR, &hdr)], &[])));
    // Nested indirect tables are refused.
    let mut q2 = q.clone();
    q2.indirect[0] = d(Addr::Indirect(0), 48, VRING_DESC_F_INDIRECT, 0);
    v.push(("indirect_nested", block_input(0, &q2, &[(HDR, &hdr)], &[])));
    // Two requests, the second published later, ring positions wrapping.
    let mut table = chain(0, &[(HDR, 16, 0), (BUF, 1024, W), (STATUS, 1, W)]);
    table.extend(chain(
        3,
        &[(Addr::Data(0x20), 16, 0), (Addr::Data(0x30), 1, W)],
    ));
    let mut q = SeedQueue::new(3, table, vec![0, 3]);
    q.start = 0xffff;
    q.published = 1;
    let flush = blk_header(VIRTIO_BLK_T_FLUSH, 0);
    v.push((
        "two_requests_wrapping",
        block_input(
            2,
            &q,
            &[(HDR, &hdr), (Addr::Data(0x20), &flush)],
            &[0, 1, 0],
        ),
    ));
    // Near-valid queues: a loop, a lying avail.idx, a head out of range.
    let q = SeedQueue::new(4, vec![d(HDR, 16, N, 0)], vec![0]);
    v.push(("loop", block_input(0, &q, &[(HDR, &hdr)], &[])));
    let mut q = SeedQueue::new(4, chain(0, &[(HDR, 16, 0), (STATUS, 1, W)]), vec![0]);
    q.raw_idx = Some(300);
    v.push((
        "avail_idx_too_far",
        block_input(0, &q, &[(HDR, &flush)], &[]),
    ));
    let q = SeedQueue::new(4, chain(0, &[(HDR, 16, 0), (STATUS, 1, W)]), vec![200]);
    v.push((
        "head_out_of_range",
        block_input(0, &q, &[(HDR, &flush)], &[]),
    ));
    let q = SeedQueue::new(
        4,
        chain(0, &[(HDR, 16, 0), (Addr::Raw(0x2000), 1, W)]),
        vec![0],
    );
    v.push((
        "status_in_used_ring",
        block_input(0, &q, &[(HDR, &flush)], &[]),
    ));
    v
}

// ---- net ----

const RX_BUF: Addr = Addr::Data(0x1000);
const TX_HDR: Addr = Addr::Data(0x8000);
const TX_FRAME: Addr = Addr::Data(0x8100);

fn net_input(
    bits: u16,
    rx: &SeedQueue,
    tx: &SeedQueue,
    pokes: &[(Addr, &[u8])],
    ops: &[u8],
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u16(bits);
    rx.encode(&mut e);
    tx.encode(&mut e);
    encode_pokes(&mut e, pokes);
    e.bytes(ops);
    e.finish()
}

/// Op 0: a frame of `len` bytes arrives, starting with `head`.
fn frame_op(len: u16, head: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(0).u16(len).u8(head.len() as u8).bytes(head);
    e.finish()
}

/// `n` receive buffers of `len` bytes, one per chain.
fn rx_queue(n: u8, len: u32) -> SeedQueue {
    let table = (0..n)
        .map(|i| d(Addr::Data(0x1000 + u32::from(i) * 0x800), len, W, 0))
        .collect();
    SeedQueue::new(4, table, (0..u16::from(n)).collect())
}

fn tx_queue(frame_len: u32) -> SeedQueue {
    SeedQueue::new(
        4,
        chain(0, &[(TX_HDR, 12, 0), (TX_FRAME, frame_len, 0)]),
        vec![0],
    )
}

fn net() -> Vec<(&'static str, Vec<u8>)> {
    const EVENT_IDX: u16 = 1;
    const MRG: u16 = 2;
    const CSUM: u16 = 4;
    const HOST_TSO4: u16 = 1 << 7;
    let empty = SeedQueue::new(4, vec![], vec![]);
    let hdr = [0u8; 12];
    let mut csum_hdr = [0u8; 12];
    csum_hdr[0] = 1;
    let mut tso_hdr = [0u8; 12];
    tso_hdr[1] = 1;
    let eth: Vec<u8> = (0..60u8).collect();
    let tx_pokes: [(Addr, &[u8]); 2] = [(TX_HDR, &hdr), (TX_FRAME, &eth)];
    let mut v = vec![
        (
            "rx_one_frame",
            net_input(0, &rx_queue(2, 2048), &empty, &[], &frame_op(100, &hdr)),
        ),
        (
            "rx_mergeable",
            net_input(
                MRG | EVENT_IDX,
                &rx_queue(4, 64),
                &empty,
                &[],
                &frame_op(150, &hdr),
            ),
        ),
        (
            "rx_too_big_for_buffers",
            net_input(0, &rx_queue(2, 64), &empty, &[], &frame_op(1500, &hdr)),
        ),
        (
            "rx_runt_and_no_buffers",
            net_input(
                0,
                &rx_queue(0, 64),
                &empty,
                &[],
                &[frame_op(10, &[]), frame_op(100, &hdr)].concat(),
            ),
        ),
        (
            "tx_one_frame",
            net_input(0, &empty, &tx_queue(60), &tx_pokes, &[2]),
        ),
        (
            "tx_csum",
            net_input(
                CSUM,
                &empty,
                &tx_queue(60),
                &[(TX_HDR, &csum_hdr), (TX_FRAME, &eth)],
                &[2],
            ),
        ),
        (
            "tx_gso_not_acked",
            net_input(
                0,
                &empty,
                &tx_queue(60),
                &[(TX_HDR, &tso_hdr), (TX_FRAME, &eth)],
                &[2],
            ),
        ),
        (
            "tx_gso_acked",
            net_input(
                CSUM | HOST_TSO4,
                &empty,
                &tx_queue(60),
                &[(TX_HDR, &tso_hdr), (TX_FRAME, &eth)],
                &[2],
            ),
        ),
        (
            "tx_blocked_then_sent",
            net_input(0, &empty, &tx_queue(60), &tx_pokes, &[6, 2, 5, 2]),
        ),
        (
            "tx_tap_fails",
            net_input(0, &empty, &tx_queue(60), &tx_pokes, &[7, 2]),
        ),
        (
            "tx_too_short",
            net_input(0, &empty, &tx_queue(4), &tx_pokes, &[2]),
        ),
    ];
    // Receive buffers that are device-readable, and an indirect transmit chain.
    let bad_rx = SeedQueue::new(4, vec![d(RX_BUF, 2048, 0, 0)], vec![0]);
    v.push((
        "rx_readable_buffer",
        net_input(0, &bad_rx, &empty, &[], &frame_op(100, &hdr)),
    ));
    let mut tx = SeedQueue::new(
        4,
        vec![d(Addr::Indirect(0), 32, VRING_DESC_F_INDIRECT, 0)],
        vec![0],
    );
    tx.indirect = chain(0, &[(TX_HDR, 12, 0), (TX_FRAME, 60, 0)]);
    v.push(("tx_indirect", net_input(0, &empty, &tx, &tx_pokes, &[2])));
    // Both ways, buffers published one at a time.
    let mut rx = rx_queue(2, 2048);
    rx.published = 0;
    v.push((
        "both_ways",
        net_input(
            EVENT_IDX,
            &rx,
            &tx_queue(60),
            &tx_pokes,
            &[frame_op(200, &hdr), vec![3, 1, 2, 3, 1]].concat(),
        ),
    ));
    v
}

// ---- console ----

fn console_input(broken: bool, q: &SeedQueue, pokes: &[(Addr, &[u8])], ops: &[u8]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(u8::from(broken));
    q.encode(&mut e);
    encode_pokes(&mut e, pokes);
    e.bytes(ops);
    e.finish()
}

fn console() -> Vec<(&'static str, Vec<u8>)> {
    let a = Addr::Data(0x100);
    let b = Addr::Data(0x200);
    let text: [(Addr, &[u8]); 2] = [(a, b"hello, "), (b, b"world\n")];
    let mut table = chain(0, &[(a, 7, 0), (b, 6, 0)]);
    table.extend(chain(2, &[(b, 6, 0)]));
    let two = SeedQueue::new(3, table.clone(), vec![0, 2]);
    let mut later = two.clone();
    later.published = 0;
    let mut ind = SeedQueue::new(
        3,
        vec![d(Addr::Indirect(0), 32, VRING_DESC_F_INDIRECT, 0)],
        vec![0],
    );
    ind.indirect = chain(0, &[(a, 7, 0), (b, 6, 0)]);
    let bad = SeedQueue::new(
        3,
        vec![
            d(a, 7, W, 0),
            d(Addr::Data(0x19f00), 0x200, 0, 0),
            d(b, 6, 0, 0),
        ],
        vec![0, 1, 2],
    );
    let looped = SeedQueue::new(3, vec![d(a, 7, N, 0)], vec![0]);
    vec![
        ("two_chains", console_input(false, &two, &text, &[])),
        (
            "published_later",
            console_input(false, &later, &text, &[1, 0, 2, 0]),
        ),
        ("broken_writer", console_input(true, &two, &text, &[])),
        ("indirect", console_input(false, &ind, &text, &[])),
        ("bad_chains", console_input(false, &bad, &text, &[])),
        ("loop", console_input(false, &looped, &text, &[])),
    ]
}

// ---- mmio ----

struct Mmio(Encoder);

impl Mmio {
    fn new(device: u8) -> Self {
        let mut e = Encoder::new();
        e.u8(device);
        Self(e)
    }
    fn wr(&mut self, off: u64, v: u32) -> &mut Self {
        self.0.u8(2).u8((off / 4) as u8).u32(v);
        self
    }
    fn rd(&mut self, off: u64) -> &mut Self {
        self.0.u8(3).u8((off / 4) as u8);
        self
    }
    fn read(&mut self, off: u16, size: u8) -> &mut Self {
        self.0.u8(0).u16(off).u8(size);
        self
    }
    fn write(&mut self, off: u16, bytes: &[u8]) -> &mut Self {
        self.0.u8(1).u16(off).u8(bytes.len() as u8).bytes(bytes);
        self
    }
    fn poke(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        self.0
            .u8(4)
            .u8(2)
            .u32(addr as u32)
            .u16(bytes.len() as u16)
            .bytes(bytes);
        self
    }
    fn process(&mut self) -> &mut Self {
        self.0.u8(5);
        self
    }
    fn frame(&mut self, len: u16, head: &[u8]) -> &mut Self {
        self.0.u8(6).u16(len).u8(head.len() as u8).bytes(head);
        self
    }
    fn queue(&mut self, sel: u8, size_log2: u8) -> &mut Self {
        self.0.u8(7).u8(sel).u8(size_log2);
        self
    }
    fn handshake(&mut self, features: u64) -> &mut Self {
        let a = STATUS_ACKNOWLEDGE;
        let ad = a | STATUS_DRIVER;
        self.rd(REG_MAGIC)
            .rd(REG_VERSION)
            .rd(REG_DEVICE_ID)
            .rd(REG_VENDOR_ID)
            .wr(REG_STATUS, a)
            .wr(REG_STATUS, ad)
            .wr(REG_DEVICE_FEATURES_SEL, 0)
            .rd(REG_DEVICE_FEATURES)
            .wr(REG_DEVICE_FEATURES_SEL, 1)
            .rd(REG_DEVICE_FEATURES)
            .wr(REG_DRIVER_FEATURES_SEL, 0)
            .wr(REG_DRIVER_FEATURES, features as u32)
            .wr(REG_DRIVER_FEATURES_SEL, 1)
            .wr(REG_DRIVER_FEATURES, (features >> 32) as u32)
            .wr(REG_STATUS, ad | STATUS_FEATURES_OK)
            .rd(REG_STATUS)
    }
    fn driver_ok(&mut self) -> &mut Self {
        self.wr(
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        )
        .rd(REG_STATUS)
    }
    /// A raw descriptor at table index `i` of queue `q`.
    fn desc(&mut self, q: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) -> &mut Self {
        let mut b = addr.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        self.poke(ctrl(q) + 16 * i, &b)
    }
    /// Makes head 0 of queue `q` (of `size` entries) available: avail.idx
    /// 1, used_event 0, and a zeroed used ring, as a driver sets them up.
    fn avail(&mut self, q: u64, size: usize) -> &mut Self {
        let mut ring = vec![0u8; 6 + 2 * size];
        ring[2] = 1;
        self.poke(ctrl(q) + AVAIL_OFF, &ring)
            .poke(ctrl(q) + USED_OFF, &vec![0u8; 6 + 8 * size])
    }
    fn finish(&mut self) -> Vec<u8> {
        self.0.finish()
    }
}

const VERSION_1: u64 = 1 << 32;

fn mmio() -> Vec<(&'static str, Vec<u8>)> {
    let hdr = blk_header(VIRTIO_BLK_T_IN, 1);
    let block = Mmio::new(0)
        .handshake(VERSION_1 | (1 << 29))
        .queue(0, 4)
        .rd(REG_QUEUE_NUM_MAX)
        .rd(REG_QUEUE_READY)
        .driver_ok()
        .poke(DATA_BASE, &hdr)
        .desc(0, 0, DATA_BASE, 16, N, 1)
        .desc(0, 1, DATA_BASE + 0x1000, 512, N | W, 2)
        .desc(0, 2, DATA_BASE + 0x10, 1, W, 0)
        .avail(0, 16)
        .wr(REG_QUEUE_NOTIFY, 0)
        .process()
        .rd(REG_INTERRUPT_STATUS)
        .wr(REG_INTERRUPT_ACK, 1)
        .read(0x100, 8)
        .read(0x100 + 56, 8)
        .wr(REG_STATUS, 0)
        .finish();
    let eth: Vec<u8> = (0..60u8).collect();
    let net = Mmio::new(1)
        .handshake(VERSION_1 | (1 << 15))
        .queue(0, 4)
        .queue(1, 4)
        .driver_ok()
        .desc(0, 0, DATA_BASE + 0x1000, 2048, W, 0)
        .avail(0, 16)
        .poke(DATA_BASE + 0x2000, &[0; 12])
        .poke(DATA_BASE + 0x2100, &eth)
        .desc(1, 0, DATA_BASE + 0x2000, 12, N, 1)
        .desc(1, 1, DATA_BASE + 0x2100, 60, 0, 0)
        .avail(1, 16)
        .frame(100, &[0; 12])
        .wr(REG_QUEUE_NOTIFY, 1)
        .process()
        .read(0x100, 8)
        .write(0x100, &[1, 2])
        .rd(REG_CONFIG_GENERATION)
        .finish();
    let console = Mmio::new(2)
        .handshake(VERSION_1)
        .queue(0, 2)
        .queue(1, 2)
        .driver_ok()
        .poke(DATA_BASE, b"hi\n")
        .desc(1, 0, DATA_BASE, 3, 0, 0)
        .avail(1, 4)
        .process()
        .read(0x100, 4)
        .finish();
    let a = STATUS_ACKNOWLEDGE;
    let ad = a | STATUS_DRIVER;
    let out_of_order = Mmio::new(0)
        .wr(REG_STATUS, ad)
        .wr(REG_STATUS, a)
        .wr(REG_STATUS, a | STATUS_FEATURES_OK)
        .wr(REG_DRIVER_FEATURES, 1)
        .queue(0, 4)
        .wr(REG_QUEUE_NOTIFY, 0)
        .wr(REG_STATUS, a | STATUS_FAILED)
        .wr(REG_STATUS, ad | STATUS_FAILED)
        .rd(REG_STATUS)
        .finish();
    let unoffered = Mmio::new(1)
        .wr(REG_STATUS, a)
        .wr(REG_STATUS, ad)
        .wr(REG_DRIVER_FEATURES_SEL, 2)
        .wr(REG_DRIVER_FEATURES, 1)
        .handshake(VERSION_1 | (1 << 3))
        .wr(REG_STATUS, 0)
        .handshake(1)
        .finish();
    let rings_outside = Mmio::new(2)
        .handshake(VERSION_1)
        .queue(0, 4)
        .queue(1, 8)
        .wr(REG_QUEUE_READY, 0)
        .wr(REG_QUEUE_DEVICE_HIGH, 1)
        .wr(REG_QUEUE_READY, 1)
        .driver_ok()
        .wr(REG_QUEUE_NOTIFY, 1)
        .process()
        .rd(REG_INTERRUPT_STATUS)
        .finish();
    let odd_accesses = Mmio::new(0)
        .read(0, 2)
        .read(1, 4)
        .read(0, 8)
        .read(0xffc, 4)
        .read(0x13a, 8)
        .write(REG_STATUS as u16, &[1])
        .write(REG_STATUS as u16 + 2, &[1, 0, 0, 0])
        .write(0x104, &[0xff; 8])
        .wr(REG_QUEUE_SEL, 7)
        .rd(REG_QUEUE_NUM_MAX)
        .rd(0x0f0)
        .finish();
    vec![
        ("block_request", block),
        ("net_both_ways", net),
        ("console_output", console),
        ("status_out_of_order", out_of_order),
        ("unoffered_features", unoffered),
        ("rings_outside_memory", rings_outside),
        ("odd_accesses", odd_accesses),
    ]
}

// ---- kernel ----

const MIB: u64 = 1 << 20;

/// An x86_64 ELF with one PT_LOAD segment per (paddr, data, memsz).
fn elf(entry: u64, segments: &[(u64, &[u8], u64)], class: u8) -> Vec<u8> {
    let phoff = size_of::<Elf64_Ehdr>() as u64;
    let mut data_off = phoff + (size_of::<Elf64_Phdr>() * segments.len()) as u64;
    let mut ehdr = Elf64_Ehdr::default();
    ehdr.e_ident[..4].copy_from_slice(b"\x7fELF");
    ehdr.e_ident[EI_CLASS] = class;
    ehdr.e_ident[5] = 1;
    ehdr.e_ident[6] = 1;
    ehdr.e_type = 2;
    ehdr.e_machine = EM_X86_64;
    ehdr.e_version = 1;
    ehdr.e_entry = entry;
    ehdr.e_phoff = phoff;
    ehdr.e_ehsize = size_of::<Elf64_Ehdr>() as u16;
    ehdr.e_phentsize = size_of::<Elf64_Phdr>() as u16;
    ehdr.e_phnum = segments.len() as u16;
    let mut out = ehdr.as_slice().to_vec();
    for &(paddr, bytes, memsz) in segments {
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 5,
            p_offset: data_off,
            p_vaddr: paddr,
            p_paddr: paddr,
            p_filesz: bytes.len() as u64,
            p_memsz: memsz,
            p_align: 0x1000,
        };
        out.extend_from_slice(phdr.as_slice());
        data_off += bytes.len() as u64;
    }
    for &(_, bytes, _) in segments {
        out.extend_from_slice(bytes);
    }
    out
}

/// A bzImage with `setup_sects` setup sectors and `payload`.
fn bzimage(setup_sects: u8, version: u16, xloadflags: u16, payload: &[u8]) -> Vec<u8> {
    let sects = if setup_sects == 0 { 4 } else { setup_sects };
    let mut img = vec![0u8; (usize::from(sects) + 1) * 512];
    let hdr = setup_header {
        setup_sects,
        boot_flag: 0xaa55,
        header: 0x5372_6448,
        version,
        loadflags: 1,
        code32_start: 0x10_0000,
        xloadflags,
        ..Default::default()
    };
    img[0x1f1..0x1f1 + size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
    img.extend_from_slice(payload);
    img
}

fn kernel() -> Vec<(&'static str, Vec<u8>)> {
    let code: Vec<u8> = (0..200u8).collect();
    let tiny = elf(MIB, &[(MIB, &code, 0x1000)], ELFCLASS64);
    let mut truncated = tiny.clone();
    truncated.truncate(tiny.len() - 50);
    vec![
        ("elf", tiny),
        (
            "elf_two_segments",
            elf(
                MIB + 0x10,
                &[(MIB, &code, 0x1000), (MIB + 0x4000, &code[..16], 0x10)],
                ELFCLASS64,
            ),
        ),
        ("elf_truncated", truncated),
        (
            "elf_below_1m",
            elf(MIB, &[(0x9_0000, &code, 0x100)], ELFCLASS64),
        ),
        (
            "elf_too_big",
            elf(MIB, &[(MIB + 0x7f00, &code, 0x1000)], ELFCLASS64),
        ),
        (
            "elf_entry_low",
            elf(0x1000, &[(MIB, &code, 0x100)], ELFCLASS64),
        ),
        ("elf_32bit", elf(MIB, &[(MIB, &code, 0x100)], 1)),
        ("bzimage", bzimage(1, 0x020f, 1, &code)),
        ("bzimage_setup_sects_0", bzimage(0, 0x020f, 1, &code)),
        ("bzimage_not_64bit", bzimage(1, 0x020f, 0, &code)),
        ("bzimage_old_protocol", bzimage(1, 0x0100, 1, &code)),
        ("bzimage_no_payload", bzimage(1, 0x020f, 1, &[])),
        (
            "bzimage_too_big",
            bzimage(1, 0x020f, 1, &vec![0x90; 0x8100]),
        ),
        ("not_a_kernel", b"MZ this is not a kernel".to_vec()),
    ]
}

/// Writes share archives header by header, as a hostile guest can (any
/// name, type, mode or link; GNU long names past 99 bytes).
struct ShareArchive(tar::Builder<Vec<u8>>);

impl ShareArchive {
    /// Share 1's upper root first, as the guest's init sends it.
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new())).entry(
            b"1/upper/",
            tar::EntryType::Directory,
            0o755,
            b"",
            b"",
        )
    }

    fn entry(
        mut self,
        name: &[u8],
        ty: tar::EntryType,
        mode: u32,
        data: &[u8],
        link: &[u8],
    ) -> Self {
        let header = |name: &[u8], ty, mode, size| {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            h.set_entry_type(ty);
            h.set_mode(mode);
            h.set_size(size);
            h.set_mtime(1_700_000_000);
            // Device 0:0, as GNU tar writes it: a character device of 0:0
            // is an overlayfs whiteout.
            h.set_device_major(0).expect("gnu header");
            h.set_device_minor(0).expect("gnu header");
            h.set_cksum();
            h
        };
        let short = if name.len() > 99 {
            let long = [name, b"\0"].concat();
            let h = header(
                b"././@LongLink",
                tar::EntryType::GNULongName,
                0,
                long.len() as u64,
            );
            self.0.append(&h, &long[..]).expect("in memory");
            &name[..99]
        } else {
            name
        };
        let h = header(short, ty, mode, data.len() as u64);
        self.0.append(&h, data).expect("in memory");
        self
    }

    fn dir(self, path: &str) -> Self {
        let name = format!("1/upper/{path}/");
        self.entry(name.as_bytes(), tar::EntryType::Directory, 0o755, b"", b"")
    }

    fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
        let name = format!("1/upper/{path}");
        self.entry(name.as_bytes(), tar::EntryType::Regular, mode, data, b"")
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        let name = format!("1/upper/{path}");
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            0o777,
            b"",
            target.as_bytes(),
        )
    }

    /// The share's manifest: `.` and `./P` for each of `paths`.
    fn manifest(self, paths: &[&str]) -> Self {
        let mut m = b".\0".to_vec();
        for p in paths {
            m.extend_from_slice(format!("./{p}\0").as_bytes());
        }
        self.entry(b"1/manifest", tar::EntryType::Regular, 0o644, &m, b"")
    }

    fn end(self) -> Vec<u8> {
        self.entry(b"end", tar::EntryType::Regular, 0o644, b"", b"")
            .unfinished()
    }

    fn unfinished(self) -> Vec<u8> {
        self.0.into_inner().expect("in memory")
    }
}

/// Archives for the share fixture of `crate::share` (a, d/, d/b, d/b2,
/// d/e/, d/root -> the canary, h (a hard link of a canary file),
/// out -> ../victim).
fn share() -> Vec<(&'static str, Vec<u8>)> {
    const ALL: [&str; 8] = ["a", "d", "d/b", "d/b2", "d/e", "d/root", "h", "out"];
    let honest = ShareArchive::new()
        .file("a", 0o644, b"changed\n")
        .dir("n")
        .file("n/new", 0o600, b"new\n")
        .symlink("n/up", "../a")
        .entry(
            b"1/upper/n/hard",
            tar::EntryType::Link,
            0o600,
            b"",
            b"1/upper/n/new",
        )
        .manifest(&[&ALL[..], &["n", "n/new", "n/up", "n/hard"]].concat())
        .end();
    let deleted = ShareArchive::new()
        .manifest(&["a", "d", "d/e", "out"])
        .end();
    let traversal = ShareArchive::new()
        .entry(
            b"1/upper/../../victim",
            tar::EntryType::Regular,
            0o644,
            b"owned",
            b"",
        )
        .manifest(&ALL)
        .end();
    let through_symlinks = ShareArchive::new()
        .file("out", 0o644, b"not the victim")
        .dir("d")
        .dir("d/root")
        .file("d/root/planted", 0o644, b"x")
        .manifest(&ALL)
        .end();
    let long_name = ShareArchive::new()
        .file(&"l".repeat(200), 0o644, b"long")
        .manifest(&ALL)
        .end();
    let special = ShareArchive::new()
        .file("suid", 0o4755, b"#!/bin/sh\n")
        .entry(b"1/upper/a", tar::EntryType::Char, 0, b"", b"")
        .entry(b"1/upper/fifo", tar::EntryType::Fifo, 0o644, b"", b"")
        .manifest(&["d", "d/b", "d/b2", "d/e", "d/root", "h", "out", "suid"])
        .end();
    let unfinished = ShareArchive::new()
        .file("a", 0o644, b"half")
        .manifest(&ALL)
        .unfinished();
    vec![
        ("honest", honest),
        ("deleted", deleted),
        ("traversal", traversal),
        ("through_symlinks", through_symlinks),
        ("long_name", long_name),
        ("special", special),
        ("unfinished", unfinished),
    ]
}
