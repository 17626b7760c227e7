//! The `block` target: virtio-blk's request queue over a 64-sector image.
//!
//! Input: `flags u8` (bit 0 read-only disk, 1 EVENT_IDX, 2 DISCARD, 3
//! WRITE_ZEROES acked), the request queue ([`QueueSpec`], up to 256
//! entries), pokes ([`guest::parse_pokes`]: request headers, discard
//! ranges, data), then ops, one byte each until the input ends: `0` run
//! the queue, `1` publish one more available entry, `2` publish all of
//! them. The queue runs once more at the end.
//!
//! Checks: the generic ones of [`guest`]; the image keeps its size, and a
//! read-only image its bytes.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvmini::devices::virtio::block::device::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES,
};
use kvmini::devices::virtio::block::{Block, BlockConfig};
use kvmini::devices::virtio::queue::Stop;
use kvmini::devices::virtio::{
    feature, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};
use vmm_sys_util::tempfile::TempFile;

use crate::guest::{self, Driver, Layout, QueueInfo, QueueSpec, Report};
use crate::input::Input;

pub const SECTORS: u64 = 64;
const IMAGE_LEN: u64 = SECTORS * 512;

/// The disk image's bytes at the start of every input.
pub fn image_byte(offset: u64) -> u8 {
    (offset / 512) as u8 ^ (offset as u8).wrapping_mul(31) ^ 0x3c
}

thread_local! {
    static IMAGE: RefCell<Option<(File, PathBuf, Vec<u8>)>> = const { RefCell::new(None) };
}

/// Where the image lives: a tmpfs if there is one, so flushes cost nothing.
fn image_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.into()
    } else {
        std::env::temp_dir()
    }
}

/// Runs `f` with this thread's image, reset to its pattern, and a path the
/// device can open it by. The file is unlinked at once (the path is its
/// `/proc/self/fd` link), so nothing is left behind when libFuzzer exits.
pub(crate) fn with_image<R>(f: impl FnOnce(&Path, &File, &[u8]) -> R) -> R {
    IMAGE.with(|img| {
        let mut img = img.borrow_mut();
        let (file, path, pattern) = img.get_or_insert_with(|| {
            let mut tmp = TempFile::new_with_prefix(image_dir().join("kvmini-fuzz-disk."))
                .expect("cannot create the fuzz disk image");
            let file = tmp.as_file().try_clone().expect("dup the fuzz image");
            tmp.remove().expect("unlink the fuzz image");
            let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            (file, path, (0..IMAGE_LEN).map(image_byte).collect())
        });
        file.set_len(IMAGE_LEN).expect("resize the fuzz image");
        file.write_all_at(pattern, 0).expect("reset the fuzz image");
        f(path, file, pattern)
    })
}

pub fn run(data: &[u8]) {
    run_report(data);
}

/// [`run`], telling what happened.
pub fn run_report(data: &[u8]) -> Report {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let readonly = flags & 1 != 0;
    let mut spec = QueueSpec::parse(&mut inp, 0, 256);
    spec.event_idx = flags & 2 != 0;
    let pokes = guest::parse_pokes(&mut inp);

    with_image(|path, file, pattern| {
        guest::with_memory(|mem| {
            guest::apply_pokes(mem, &pokes);
            let mut block = Block::new(&BlockConfig {
                path: path.into(),
                readonly,
                limit: Default::default(),
            })
            .expect("open the fuzz image");
            let mut handler = block.event_handler().expect("block event handler");
            let mut acked = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_BLK_F_FLUSH);
            for (bit, f) in [
                (2, VIRTIO_F_RING_EVENT_IDX),
                (4, VIRTIO_BLK_F_DISCARD),
                (8, VIRTIO_BLK_F_WRITE_ZEROES),
            ] {
                if flags & bit != 0 {
                    acked |= feature(f);
                }
            }
            acked &= block.avail_features();

            let queue = spec.install(mem);
            let mut driver = Driver::new(&spec);
            let layout = Layout::new(mem, vec![QueueInfo::new(mem, spec, &queue)]);
            let irq = Arc::new(Interrupt::new().expect("eventfd"));
            block
                .activate(mem.clone(), acked, vec![queue], irq)
                .expect("activate virtio-blk");

            while !inp.is_empty() {
                match inp.u8() % 3 {
                    0 => {
                        // Without the coalescing window's sleep: nothing is
                        // posted during it here, so the effect is the same.
                        handler.process_with(|_| {});
                    }
                    1 => driver.publish(mem, 1),
                    _ => driver.publish(mem, u16::MAX),
                }
            }
            // A pass stops after a batch and re-arms itself; finish the rest.
            while handler.process_with(|_| {}) == Some(Stop::Budget) {}

            layout.check(mem, true);
            layout.check_offered(mem, 0, &driver);
            let report = layout.report(mem, 0);
            block.reset();
            drop(handler);
            drop(block);

            let len = file.metadata().expect("stat the fuzz image").len();
            assert_eq!(len, IMAGE_LEN, "the disk image changed size");
            if readonly {
                let mut now = vec![0u8; IMAGE_LEN as usize];
                file.read_exact_at(&mut now, 0)
                    .expect("read the fuzz image");
                assert!(now == pattern, "a read-only disk image was written");
            }
            report
        })
    })
}
