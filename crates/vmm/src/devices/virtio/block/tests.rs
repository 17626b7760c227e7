//! virtio-blk tests: requests built by hand in a MockSplitQueue inside a
//! GuestMemoryMmap, a temporary image file, no /dev/kvm.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::coalesce;
use super::device::*;
use super::request::*;
use super::RateLimit;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::{self, MmioTransport};
use crate::devices::virtio::queue::Stop;
use crate::devices::virtio::{
    feature, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
    VIRTIO_MMIO_INT_VRING, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

const MEM_SIZE: usize = 0x100_0000;
const HDR: u64 = 0x10_0000;
const STATUS: u64 = 0x10_1000;
const DATA: u64 = 0x20_0000;
const SECTORS: u64 = 64;
/// Queue size of the tests' mock queue.
const QS: u16 = 256;

fn all_features() -> u64 {
    feature(VIRTIO_F_VERSION_1)
        | feature(VIRTIO_BLK_F_DISCARD)
        | feature(VIRTIO_BLK_F_WRITE_ZEROES)
        | feature(VIRTIO_BLK_F_FLUSH)
}

fn image(sectors: u64) -> TempFile {
    let f = TempFile::new().unwrap();
    let pattern: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    f.as_file().write_all_at(&pattern, 0).unwrap();
    f
}

fn open(path: &Path, readonly: bool) -> Block {
    Block::new(&BlockConfig {
        path: path.into(),
        readonly,
        limit: RateLimit::default(),
    })
    .unwrap()
}

// A descriptor: (guest address, length, device-writable).
use crate::testutil::Desc as D;

struct Env<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    block: Block,
    handler: BlockHandler,
    irq: Arc<Interrupt>,
    next_desc: u16,
}

/// Makes a chain of `descs` available in `vq` from descriptor `*next` on
/// (or from 0 if it would not fit before the end of the table; with NEXT
/// links), and moves `*next` past it.
fn push_chain(vq: &MockSplitQueue<GuestMemoryMmap>, next: &mut u16, descs: &[D]) {
    // A chain does not wrap around the end of the table.
    if usize::from(*next) + descs.len() > usize::from(QS) {
        *next = 0;
    }
    let start = *next;
    let raw = crate::testutil::desc_chain(start, descs);
    vq.add_desc_chains(&raw, start).unwrap();
    *next = (start + descs.len() as u16) % QS;
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

impl<'a> Env<'a> {
    fn new(mem: &'a GuestMemoryMmap, block: Block, features: u64) -> Self {
        let vq = MockSplitQueue::new(mem, QS);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(features & feature(VIRTIO_F_RING_EVENT_IDX) != 0);
        let mut block = block;
        let handler = block.event_handler().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        block
            .activate(mem.clone(), features, vec![q], irq.clone())
            .unwrap();
        // Activation kicks the queue once; consume that.
        block.queue_events()[0].read().unwrap();
        Self {
            mem,
            vq,
            block,
            handler,
            irq,
            next_desc: 0,
        }
    }

    /// Makes a chain of `descs` available (with NEXT links) without running it.
    fn push(&mut self, descs: &[D]) {
        push_chain(&self.vq, &mut self.next_desc, descs);
    }

    fn header(&self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    /// Runs one request; returns (status byte, used length).
    fn run(&mut self, descs: &[D]) -> (u8, u32) {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.push(descs);
        self.handler.process();
        let used = self.vq.used();
        let idx = used.idx().load();
        let elem = used
            .ring()
            .ref_at(usize::from(idx.wrapping_sub(1) % QS))
            .unwrap()
            .load();
        let status = self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
        (status, elem.len())
    }

    fn request(&mut self, kind: u32, sector: u64, data: &[D]) -> (u8, u32) {
        self.header(kind, sector);
        let mut descs = vec![(HDR, 16, false)];
        descs.extend_from_slice(data);
        descs.push((STATUS, 1, true));
        self.run(&descs)
    }

    fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }
}

fn ranges_at(mem: &GuestMemoryMmap, addr: u64, ranges: &[(u64, u32, u32)]) -> u32 {
    for (i, &(sector, n, flags)) in ranges.iter().enumerate() {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&n.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&s, GuestAddress(addr + 16 * i as u64))
            .unwrap();
    }
    16 * ranges.len() as u32
}

fn read_file(f: &TempFile, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    f.as_file().read_exact_at(&mut v, offset).unwrap();
    v
}

#[test]
fn features_and_config_space() {
    let f = image(SECTORS);
    let b = open(f.as_path(), false);
    let feats = b.avail_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_F_RING_EVENT_IDX,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_WRITE_ZEROES,
    ] {
        assert_ne!(feats & feature(bit), 0, "bit {bit}");
    }
    assert_eq!(feats & feature(VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        feats & feature(VIRTIO_BLK_F_DISCARD) != 0,
        b.disk().supports_discard()
    );
    let mut cap = [0u8; 8];
    b.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let mut w = [0u8; 4];
    b.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    b.read_config(8, &mut w);
    assert_eq!(u32::from_le_bytes(w), SIZE_MAX);
    // Past the end reads as zero, never panics.
    let mut tail = [0xffu8; 8];
    b.read_config(56, &mut tail);
    assert_eq!(&tail[4..], &[0; 4]);
    b.read_config(u64::MAX, &mut tail);
    assert_eq!(b.queue_max_sizes(), &[QUEUE_SIZE]);
    drop(b);

    let ro = open(f.as_path(), true);
    let feats = ro.avail_features();
    assert_ne!(feats & feature(VIRTIO_BLK_F_RO), 0);
    assert_eq!(feats & feature(VIRTIO_BLK_F_WRITE_ZEROES), 0);
    assert_eq!(feats & feature(VIRTIO_BLK_F_DISCARD), 0);
}

#[test]
fn open_errors() {
    let err = |path: &Path, ro| {
        Block::new(&BlockConfig {
            path: path.into(),
            readonly: ro,
            limit: RateLimit::default(),
        })
        .err()
        .unwrap()
        .to_string()
    };
    let dir = TempFile::new().unwrap();
    let missing = dir.as_path().with_extension("nope");
    assert!(
        err(&missing, false).contains("does not exist"),
        "{}",
        err(&missing, false)
    );
    assert!(err(Path::new("/tmp"), true).contains("not a regular file or block device"));
    let odd = TempFile::new().unwrap();
    odd.as_file().set_len(1000).unwrap();
    assert_eq!(
        err(odd.as_path(), false),
        format!(
            "size of disk image {} (1000 bytes) is not a multiple of 512",
            odd.as_path().display()
        )
    );

    let f = image(8);
    let held = open(f.as_path(), false);
    let locked = format!(
        "disk image {} is in use by another process (locked)",
        f.as_path().display()
    );
    assert_eq!(err(f.as_path(), false), locked);
    assert_eq!(err(f.as_path(), true), locked);
    drop(held);
    let r1 = open(f.as_path(), true);
    let _r2 = open(f.as_path(), true);
    assert_eq!(err(f.as_path(), false), locked);
    drop(r1);
}

#[test]
fn write_then_read_split_across_descriptors() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    let data: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    // Scattered: 512 + 1024 + 512 bytes at unrelated addresses.
    let parts = [
        (DATA, 0..512),
        (DATA + 0x5000, 512..1536),
        (DATA + 0x3000, 1536..2048),
    ];
    for (addr, r) in parts.clone() {
        mem.write_slice(&data[r], GuestAddress(addr)).unwrap();
    }
    let descs: Vec<D> = parts
        .iter()
        .map(|(a, r)| (*a, r.len() as u32, false))
        .collect();
    assert_eq!(
        env.request(VIRTIO_BLK_T_OUT, 3, &descs),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(read_file(&f, 3 * 512, 2048), data);
    // Neighbours untouched.
    assert_eq!(read_file(&f, 2 * 512, 1), vec![2 ^ 0x5a]);
    assert_eq!(read_file(&f, 7 * 512, 1), vec![7 ^ 0x5a]);

    let out = DATA + 0x10_0000;
    let descs: Vec<D> = [(out, 1024), (out + 0x8000, 512), (out + 0x4000, 512)]
        .iter()
        .map(|&(a, l)| (a, l, true))
        .collect();
    assert_eq!(
        env.request(VIRTIO_BLK_T_IN, 3, &descs),
        (VIRTIO_BLK_S_OK, 2049)
    );
    let mut back = vec![0u8; 2048];
    mem.read_slice(&mut back[..1024], GuestAddress(out))
        .unwrap();
    mem.read_slice(&mut back[1024..1536], GuestAddress(out + 0x8000))
        .unwrap();
    mem.read_slice(&mut back[1536..], GuestAddress(out + 0x4000))
        .unwrap();
    assert_eq!(back, data);

    // The last sector is readable; one past it is not.
    assert_eq!(
        env.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[(DATA, 512, true)])
            .0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        env.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[(DATA, 1024, true)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(
        env.request(VIRTIO_BLK_T_IN, SECTORS, &[(DATA, 512, true)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        env.request(VIRTIO_BLK_T_OUT, u64::MAX, &[(DATA, 512, false)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(env.used_idx(), 6);
}

#[test]
fn read_only_disk_refuses_writes() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), true), all_features());
    let before = read_file(&f, 0, 1024);
    mem.write_slice(&[0xee; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(
        env.request(VIRTIO_BLK_T_OUT, 0, &[(DATA, 1024, false)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    assert_eq!(read_file(&f, 0, 1024), before);
    // Not offered on a read-only disk, whatever the driver claims.
    let n = ranges_at(&mem, DATA, &[(0, 2, 0)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, n, false)])
            .0,
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(read_file(&f, 0, 1024), before);
    // Reads and flushes still work.
    assert_eq!(
        env.request(VIRTIO_BLK_T_IN, 0, &[(DATA, 512, true)]).0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(env.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, VIRTIO_BLK_S_OK);
}

#[test]
fn flush_and_get_id() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    let syncs = env.block.disk().sync_counter();
    assert_eq!(
        env.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "FLUSH did not reach fdatasync"
    );

    let (status, len) = env.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, true)]);
    assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, env.block.disk().id());
    let meta = fs::metadata(f.as_path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    let text = std::str::from_utf8(&id).unwrap();
    assert_eq!(
        u64::from_str_radix(&text[8..], 16).unwrap(),
        meta.ino() & 0xffff_ffff_ffff
    );
    // Split over two buffers, the second longer than needed.
    mem.write_slice(&[0; 64], GuestAddress(DATA)).unwrap();
    let (status, len) = env.request(
        VIRTIO_BLK_T_GET_ID,
        0,
        &[(DATA, 8, true), (DATA + 0x100, 32, true)],
    );
    assert_eq!((status, len), (VIRTIO_BLK_S_OK, 21));
    let mut a = [0u8; 8];
    let mut b = [0u8; 12];
    mem.read_slice(&mut a, GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut b, GuestAddress(DATA + 0x100)).unwrap();
    assert_eq!([&a[..], &b[..]].concat(), id);
    // GET_ID into a read-only buffer is malformed.
    assert_eq!(
        env.request(VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
}

#[test]
fn discard_and_write_zeroes() {
    let f = image(SECTORS);
    let mem = memory();
    let block = open(f.as_path(), false);
    assert!(block.disk().supports_discard(), "ext4/tmpfs punch holes");
    let mut env = Env::new(&mem, block, all_features());
    let size = fs::metadata(f.as_path()).unwrap().len();

    let n = ranges_at(&mem, DATA, &[(1, 2, 0), (10, 1, 0)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n, false)]),
        (VIRTIO_BLK_S_OK, 1)
    );
    assert_eq!(read_file(&f, 512, 1024), vec![0; 1024]);
    assert_eq!(read_file(&f, 10 * 512, 512), vec![0; 512]);
    assert_eq!(read_file(&f, 0, 1), vec![0x5a]);
    assert_eq!(read_file(&f, 3 * 512, 1), vec![3 ^ 0x5a]);

    let n = ranges_at(
        &mem,
        DATA,
        &[(20, 3, 0), (30, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)],
    );
    assert_eq!(
        env.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, n, false)])
            .0,
        VIRTIO_BLK_S_OK
    );
    assert_eq!(read_file(&f, 20 * 512, 3 * 512), vec![0; 1536]);
    assert_eq!(read_file(&f, 30 * 512, 512), vec![0; 512]);
    assert_eq!(read_file(&f, 23 * 512, 1), vec![23 ^ 0x5a]);
    assert_eq!(fs::metadata(f.as_path()).unwrap().len(), size);

    // Unmap on discard and reserved flags: UNSUPP. Past the end: IOERR.
    let n = ranges_at(&mem, DATA, &[(0, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n, false)]).0,
        VIRTIO_BLK_S_UNSUPP
    );
    let n = ranges_at(&mem, DATA, &[(0, 1, 4)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, n, false)])
            .0,
        VIRTIO_BLK_S_UNSUPP
    );
    let n = ranges_at(&mem, DATA, &[(SECTORS - 1, 2, 0)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
    let n = ranges_at(&mem, DATA, &[(u64::MAX, 2, 0)]);
    assert_eq!(
        env.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[(DATA, n, false)])
            .0,
        VIRTIO_BLK_S_IOERR
    );
    // Not a whole segment; too many segments.
    assert_eq!(
        env.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, 15, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
    let many: Vec<_> = (0..=MAX_DISCARD_SEG as u64).map(|i| (i, 1, 0)).collect();
    let n = ranges_at(&mem, DATA, &many);
    assert_eq!(
        env.request(VIRTIO_BLK_T_DISCARD, 0, &[(DATA, n, false)]).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(read_file(&f, 40 * 512, 1), vec![40 ^ 0x5a]);
}

#[test]
fn unnegotiated_or_unknown_requests_are_unsupported() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), feature(VIRTIO_F_VERSION_1));
    let n = ranges_at(&mem, DATA, &[(0, 1, 0)]);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 2, 99] {
        assert_eq!(
            env.request(kind, 0, &[(DATA, n, false)]),
            (VIRTIO_BLK_S_UNSUPP, 1),
            "type {kind}"
        );
    }
    assert_eq!(read_file(&f, 0, 1), vec![0x5a]);
}

#[test]
fn malformed_chains_fail_or_are_skipped() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    let before = read_file(&f, 0, SECTORS as usize * 512);
    env.header(VIRTIO_BLK_T_IN, 0);
    let oob = MEM_SIZE as u64 - 256;
    let ioerr = (VIRTIO_BLK_S_IOERR, 1);
    // Status only: no header.
    assert_eq!(env.run(&[(STATUS, 1, true)]), ioerr);
    // Header writable, too short, too long, outside guest memory.
    assert_eq!(
        env.run(&[(HDR, 16, true), (DATA, 512, true), (STATUS, 1, true)]),
        ioerr
    );
    assert_eq!(
        env.run(&[(HDR, 8, false), (DATA, 512, true), (STATUS, 1, true)]),
        ioerr
    );
    assert_eq!(env.run(&[(HDR, 528, false), (STATUS, 1, true)]), ioerr);
    assert_eq!(
        env.run(&[
            (MEM_SIZE as u64 - 8, 16, false),
            (DATA, 512, true),
            (STATUS, 1, true)
        ]),
        ioerr
    );
    // IN: no data, read-only data, partial sector, buffer beyond memory.
    assert_eq!(env.run(&[(HDR, 16, false), (STATUS, 1, true)]), ioerr);
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]),
        ioerr
    );
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 511, true), (STATUS, 1, true)]),
        ioerr
    );
    assert_eq!(
        env.run(&[
            (HDR, 16, false),
            (DATA, 256, true),
            (DATA + 512, 512, true),
            (STATUS, 1, true)
        ]),
        ioerr
    );
    assert_eq!(
        env.run(&[(HDR, 16, false), (oob, 512, true), (STATUS, 1, true)]),
        ioerr
    );
    assert_eq!(
        env.run(&[
            (HDR, 16, false),
            (u64::MAX - 100, 512, true),
            (STATUS, 1, true)
        ]),
        ioerr
    );
    // OUT with writable data.
    env.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
        ioerr
    );
    // A segment larger than SIZE_MAX.
    assert_eq!(
        env.run(&[
            (HDR, 16, false),
            (DATA, SIZE_MAX + 512, false),
            (STATUS, 1, true)
        ]),
        ioerr
    );

    // No usable status: skipped with a zero-length used entry.
    let used = env.used_idx();
    assert_eq!(env.run(&[(HDR, 16, false), (DATA, 512, false)]).1, 0);
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 0, true)])
            .1,
        0
    );
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 512, false), (oob + 256, 1, true)])
            .1,
        0
    );
    assert_eq!(env.used_idx(), used + 3);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    assert_eq!(read_file(&f, 0, SECTORS as usize * 512), before);

    // The device still works afterwards.
    env.header(VIRTIO_BLK_T_IN, 1);
    assert_eq!(
        env.run(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]),
        (VIRTIO_BLK_S_OK, 513)
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 1 ^ 0x5a);
}

#[test]
fn batches_notify_once_and_respect_event_idx() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    for _ in 0..3 {
        env.header(VIRTIO_BLK_T_FLUSH, 0);
        env.push(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    env.handler.process();
    assert_eq!(env.used_idx(), 3);
    assert_eq!(
        env.irq.eventfd().read().unwrap(),
        1,
        "one interrupt per batch"
    );
    assert_eq!(env.irq.status(), VIRTIO_MMIO_INT_VRING);
    // Notifications are enabled again after the batch (used->flags == 0).
    assert_eq!(mem.read_obj::<u16>(env.vq.used_addr()).unwrap(), 0);
    // A spurious kick with nothing to do raises nothing.
    env.handler.process();
    assert!(env.irq.eventfd().read().is_err());

    // The driver suppresses interrupts (VRING_AVAIL_F_NO_INTERRUPT).
    mem.write_obj(1u16, env.vq.avail_addr()).unwrap();
    env.push(&[(HDR, 16, false), (STATUS, 1, true)]);
    env.handler.process();
    assert_eq!(env.used_idx(), 4);
    assert!(env.irq.eventfd().read().is_err());
}

/// One read request of sector 1 (the tests share one header and status).
const READ: [D; 3] = [(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)];

#[test]
fn coalescing_window_serves_what_the_guest_posts_meanwhile() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    env.header(VIRTIO_BLK_T_IN, 1);
    // Requests one at a time (queue depth 1): never held.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1));
        env.push(&READ);
        env.handler
            .process_with(|w| panic!("held {w:?} at queue depth 1"));
        assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    }
    // Two waiting (depth): windows are on, but no pace is known yet.
    env.push(&READ);
    env.push(&READ);
    env.handler
        .process_with(|w| panic!("held {w:?} with no pace known"));
    assert_eq!(env.irq.eventfd().read().unwrap(), 1);

    // 1 ms later: held for MAX_WINDOW (half the pace, at most 200 us), and
    // the two requests the guest posts meanwhile (with their kick) are
    // served before the one interrupt.
    std::thread::sleep(Duration::from_millis(1));
    env.push(&READ);
    let before = env.used_idx();
    let kick = env.block.queue_events()[0].try_clone().unwrap();
    let (vq, next) = (&env.vq, &mut env.next_desc);
    let mut window = None;
    let stop = env.handler.process_with(|w| {
        window = Some(w);
        push_chain(vq, next, &READ);
        push_chain(vq, next, &READ);
        kick.write(1).unwrap();
    });
    assert_eq!(stop, Some(Stop::Empty));
    assert_eq!(window, Some(coalesce::MAX_WINDOW));
    assert_eq!(env.used_idx().wrapping_sub(before), 3, "all three served");
    assert_eq!(
        env.irq.eventfd().read().unwrap(),
        1,
        "one interrupt for three"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 1 ^ 0x5a);
    assert!(
        kick.read().is_err(),
        "the kick of the requests served after the window is consumed"
    );

    // Windows that catch nothing: past the tolerated misses in a row,
    // single requests are not held any more...
    for _ in 0..=coalesce::MISSES_TOLERATED {
        std::thread::sleep(Duration::from_millis(1));
        env.push(&READ);
        let mut held = false;
        env.handler.process_with(|_| held = true);
        assert!(held);
        assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    }
    std::thread::sleep(Duration::from_millis(1));
    env.push(&READ);
    env.handler
        .process_with(|w| panic!("held {w:?} after the misses"));
    assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    // ...and windows that ended without a catch let one batch of two pass
    // before they start again.
    std::thread::sleep(Duration::from_millis(1));
    env.push(&READ);
    env.push(&READ);
    env.handler
        .process_with(|w| panic!("held {w:?} right after windows that caught nothing"));
    std::thread::sleep(Duration::from_millis(1));
    env.push(&READ);
    env.push(&READ);
    let mut held = false;
    env.handler.process_with(|_| held = true);
    assert!(held, "held again once two requests waited");

    // More than a batch's worth posted in the window: the second pass stops
    // at the budget and re-arms the kick (read before that pass, so the
    // re-arm is not swallowed), and the rest is served on the next call.
    std::thread::sleep(Duration::from_millis(1));
    env.push(&READ);
    let before = env.used_idx();
    let (vq, next) = (&env.vq, &mut env.next_desc);
    let stop = env.handler.process_with(|_| {
        for _ in 0..crate::devices::virtio::queue::BATCH + 10 {
            push_chain(vq, next, &READ);
        }
        kick.write(1).unwrap();
    });
    assert_eq!(stop, Some(Stop::Budget));
    assert_eq!(
        usize::from(env.used_idx().wrapping_sub(before)),
        1 + crate::devices::virtio::queue::BATCH
    );
    assert_eq!(kick.read().unwrap(), 1, "the queue re-armed itself");
    env.handler.process_with(|_| {});
    assert_eq!(
        usize::from(env.used_idx().wrapping_sub(before)),
        1 + crate::devices::virtio::queue::BATCH + 10
    );
}

#[test]
fn no_window_without_an_interrupt_to_hold() {
    let f = image(SECTORS);
    let mem = memory();
    let feats = all_features() | feature(VIRTIO_F_RING_EVENT_IDX);
    let mut env = Env::new(&mem, open(f.as_path(), false), feats);
    env.header(VIRTIO_BLK_T_IN, 1);
    // The driver wants no interrupt before the used index passes 1000.
    let used_event = GuestAddress(env.vq.avail_addr().0 + 4 + 2 * u64::from(QS));
    mem.write_obj(1000u16, used_event).unwrap();
    // Two at a time (depth, at a steady pace): held, were an interrupt due.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1));
        env.push(&READ);
        env.push(&READ);
        env.handler
            .process_with(|w| panic!("held {w:?} with no interrupt due"));
    }
    assert_eq!(env.used_idx(), 8);
    assert!(env.irq.eventfd().read().is_err());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let f = image(SECTORS);
    let mem = memory();
    let feats = all_features() | feature(VIRTIO_F_RING_EVENT_IDX);
    let mut env = Env::new(&mem, open(f.as_path(), false), feats);
    // used_event (after the avail ring) = 1: interrupt only once the used
    // index moves past 1.
    let used_event = GuestAddress(env.vq.avail_addr().0 + 4 + 2 * u64::from(QS));
    mem.write_obj(1u16, used_event).unwrap();
    env.header(VIRTIO_BLK_T_FLUSH, 0);
    env.push(&[(HDR, 16, false), (STATUS, 1, true)]);
    env.handler.process();
    assert_eq!(env.used_idx(), 1);
    assert!(
        env.irq.eventfd().read().is_err(),
        "used_idx 1 <= used_event"
    );
    env.push(&[(HDR, 16, false), (STATUS, 1, true)]);
    env.handler.process();
    assert_eq!(env.used_idx(), 2);
    assert_eq!(env.irq.eventfd().read().unwrap(), 1);
    // With EVENT_IDX the device publishes avail_event instead of flags.
    let avail_event = GuestAddress(env.vq.used_addr().0 + 4 + 8 * u64::from(QS));
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
}

#[test]
fn corrupt_avail_index_needs_reset_without_panicking() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    // avail.idx further ahead of next_avail than the queue is long.
    mem.write_obj(QS + 1, GuestAddress(env.vq.avail_addr().0 + 2))
        .unwrap();
    env.handler.process();
    assert!(env.irq.needs_reset());
    assert_eq!(env.used_idx(), 0);
    env.handler.process();
    // Reset clears it; activation works again.
    env.block.reset();
    let q: Queue = MockSplitQueue::new(&mem, QS).create_queue().unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    env.block
        .activate(mem.clone(), all_features(), vec![q], irq)
        .unwrap();
}

#[test]
fn activation_rules() {
    let f = image(SECTORS);
    let mem = memory();
    let mut b = open(f.as_path(), false);
    let irq = Arc::new(Interrupt::new().unwrap());
    assert!(matches!(
        b.activate(mem.clone(), 0, vec![], irq.clone()),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    let q = || {
        MockSplitQueue::new(&mem, QS)
            .create_queue::<Queue>()
            .unwrap()
    };
    b.activate(mem.clone(), 0, vec![q()], irq.clone()).unwrap();
    assert!(matches!(
        b.activate(mem.clone(), 0, vec![q()], irq.clone()),
        Err(ActivateError::AlreadyActive)
    ));
    b.reset();
    b.activate(mem.clone(), 0, vec![q()], irq).unwrap();
}

#[test]
fn event_manager_drives_the_queue() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let f = image(SECTORS);
    let mem = memory();
    let vq = MockSplitQueue::new(&mem, QS);
    let mut block = open(f.as_path(), false);
    let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
    events.add_subscriber(Box::new(block.event_handler().unwrap()));
    // Not active yet: kicks are drained and ignored.
    block.queue_events()[0].write(1).unwrap();
    assert_eq!(events.run_with_timeout(0).unwrap(), 1);

    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    let descs = [
        (HDR, 16, 0),
        (DATA, 512, VRING_DESC_F_WRITE),
        (STATUS, 1, VRING_DESC_F_WRITE),
    ];
    let raw: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, fl))| {
            let next = if i < 2 { VRING_DESC_F_NEXT } else { 0 };
            RawDescriptor::from(SplitDescriptor::new(a, l, fl | next, i as u16 + 1))
        })
        .collect();
    vq.add_desc_chains(&raw, 0).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    block
        .activate(
            mem.clone(),
            all_features(),
            vec![vq.create_queue().unwrap()],
            irq.clone(),
        )
        .unwrap();
    // Activation kicked the queue: the pending request is served.
    assert_eq!(events.run_with_timeout(100).unwrap(), 1);
    assert_eq!(vq.used().idx().load(), 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x5a);
    assert_eq!(irq.eventfd().read().unwrap(), 1);
}

#[test]
fn through_the_mmio_transport() {
    let f = image(SECTORS);
    let mem = memory();
    let block = open(f.as_path(), true);
    let mut t = MmioTransport::new(Box::new(block), mem).unwrap();
    let mut w = [0u8; 4];
    t.read(mmio::REG_DEVICE_ID, &mut w);
    assert_eq!(u32::from_le_bytes(w), 2);
    t.write(mmio::REG_DEVICE_FEATURES_SEL, &0u32.to_le_bytes());
    t.read(mmio::REG_DEVICE_FEATURES, &mut w);
    assert_ne!(u32::from_le_bytes(w) & (1 << VIRTIO_BLK_F_RO), 0);
    let mut lo = [0u8; 4];
    let mut hi = [0u8; 4];
    t.read(mmio::REG_CONFIG, &mut lo);
    t.read(mmio::REG_CONFIG + 4, &mut hi);
    assert_eq!(u32::from_le_bytes(lo), SECTORS as u32);
    assert_eq!(u32::from_le_bytes(hi), 0);
    assert_eq!(t.ioeventfds(GuestAddress(0xd000_0000)).len(), 1);
}

#[test]
fn data_is_flushed_on_drop() {
    use std::sync::atomic::Ordering;
    // A writable disk that took a write is synced (fdatasync) when the
    // device goes away, without the guest ever asking for a flush.
    let f = image(8);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        env.request(VIRTIO_BLK_T_OUT, 1, &[(DATA, 512, false)]).0,
        VIRTIO_BLK_S_OK
    );
    let syncs = env.block.disk().sync_counter();
    assert_eq!(syncs.load(Ordering::Relaxed), 0, "synced before the drop");
    drop(env);
    assert_eq!(syncs.load(Ordering::Relaxed), 1, "not synced on drop");
    assert_eq!(read_file(&f, 512, 512), vec![0xab; 512]);

    // Never activated: synced on drop all the same.
    let block = open(f.as_path(), false);
    let syncs = block.disk().sync_counter();
    drop(block);
    assert_eq!(
        syncs.load(Ordering::Relaxed),
        1,
        "idle disk not synced on drop"
    );

    // Read-only: nothing to sync, and no error on drop.
    let block = open(f.as_path(), true);
    let syncs = block.disk().sync_counter();
    drop(block);
    assert_eq!(syncs.load(Ordering::Relaxed), 0, "read-only disk synced");
}

fn open_limited(path: &Path, limit: RateLimit) -> Block {
    Block::new(&BlockConfig {
        path: path.into(),
        readonly: false,
        limit,
    })
    .unwrap()
}

#[test]
fn a_flood_is_served_in_batches_that_rearm_the_queue() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    // 200 flushes: more than one batch.
    env.header(VIRTIO_BLK_T_FLUSH, 0);
    for _ in 0..200 {
        env.push(&[(HDR, 16, false), (STATUS, 1, true)]);
    }
    assert_eq!(env.handler.process(), Some(Stop::Budget));
    assert_eq!(
        usize::from(env.used_idx()),
        crate::devices::virtio::queue::BATCH
    );
    assert_eq!(
        env.block.queue_events()[0].read().unwrap(),
        1,
        "the queue re-armed its own eventfd"
    );
    while env.handler.process() == Some(Stop::Budget) {}
    assert_eq!(env.used_idx(), 200);
}

#[test]
fn nothing_is_served_once_the_vm_is_stopping() {
    let f = image(SECTORS);
    let mem = memory();
    let mut env = Env::new(&mem, open(f.as_path(), false), all_features());
    env.handler
        .stop_flag()
        .store(true, std::sync::atomic::Ordering::SeqCst);
    env.header(VIRTIO_BLK_T_IN, 0);
    env.push(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert_eq!(env.handler.process(), Some(Stop::Paused));
    assert_eq!(env.used_idx(), 0);
}

#[test]
fn iops_limit_throttles_and_its_timer_resumes_the_queue() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::time::{Duration, Instant};
    let f = image(SECTORS);
    let mem = memory();
    let limit = RateLimit {
        ops: Some(4),
        bytes: None,
    };
    let mut block = open_limited(f.as_path(), limit);
    let vq = MockSplitQueue::new(&mem, QS);
    let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
    events.add_subscriber(Box::new(block.event_handler().unwrap()));
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    // Six flushes at 4 per second: 4 now (the bucket starts full), the
    // rest as it refills (a quarter second each), never spinning.
    let raw: Vec<RawDescriptor> = (0..6u16)
        .flat_map(|i| {
            [
                RawDescriptor::from(SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT, 2 * i + 1)),
                RawDescriptor::from(SplitDescriptor::new(STATUS, 1, VRING_DESC_F_WRITE, 0)),
            ]
        })
        .collect();
    vq.add_desc_chains(&raw, 0).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    block
        .activate(
            mem.clone(),
            all_features(),
            vec![vq.create_queue().unwrap()],
            irq,
        )
        .unwrap();
    let start = Instant::now();
    events.run_with_timeout(100).unwrap();
    assert_eq!(vq.used().idx().load(), 4);
    let mut wakeups = 0;
    while vq.used().idx().load() < 6 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "throttled for good"
        );
        wakeups += events.run_with_timeout(1000).unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert!(
        wakeups <= 4,
        "woken {wakeups} times: the timer, not polling"
    );
}

#[test]
fn bandwidth_limit_counts_data_bytes() {
    let f = image(SECTORS);
    let mem = memory();
    // 1 KiB/s: one 1 KiB read drains the bucket, the next one waits.
    let limit = RateLimit {
        ops: None,
        bytes: Some(1024),
    };
    let mut env = Env::new(&mem, open_limited(f.as_path(), limit), all_features());
    env.header(VIRTIO_BLK_T_IN, 0);
    env.push(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
    env.push(&[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)]);
    assert_eq!(env.handler.process(), Some(Stop::Paused));
    assert_eq!(env.used_idx(), 1);
    assert_eq!(env.handler.throttled(), 1);
}
