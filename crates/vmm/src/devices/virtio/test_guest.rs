//! A guest driver for tests that floods a virtqueue: a thread that keeps
//! every free ring slot filled with the same descriptor chain and kicks
//! the queue, as fast as the device serves it (as a hostile guest's
//! driver could), until stopped.
//!
//! Flood a queue of [`FLOOD_QUEUE_SIZE`] built on a `MockSplitQueue` of
//! 256: virtio-queue 0.18's mock places its used ring `len` bytes (not
//! `2 * len`) after the start of its avail ring, so with every slot in use
//! the used ring's header overwrites avail slots `len/2` and up. Half the
//! mock's length keeps the rings apart.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// The size to give a flooded queue on a `MockSplitQueue` of 256.
pub const FLOOD_QUEUE_SIZE: u16 = 128;

pub struct Flooder {
    stop: Arc<AtomicBool>,
    /// Chains made available so far.
    pub posted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flooder {
    /// Floods the queue whose avail and used rings are at `avail` and
    /// `used` (`size` entries) with chain `head`, kicking `kick`.
    pub fn start(
        mem: GuestMemoryMmap,
        avail: GuestAddress,
        used: GuestAddress,
        size: u16,
        head: u16,
        kick: EventFd,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let posted = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), posted.clone());
        let thread = std::thread::spawn(move || {
            let idx_at = |ring: GuestAddress| GuestAddress(ring.0 + 2);
            while !s.load(Ordering::Relaxed) {
                let used_idx: u16 = mem.load(idx_at(used), Ordering::Acquire).unwrap();
                let mut avail_idx: u16 = mem.load(idx_at(avail), Ordering::Acquire).unwrap();
                let mut added = 0;
                while avail_idx.wrapping_sub(used_idx) < size {
                    let slot = GuestAddress(avail.0 + 4 + 2 * u64::from(avail_idx % size));
                    mem.write_obj(head, slot).unwrap();
                    avail_idx = avail_idx.wrapping_add(1);
                    added += 1;
                }
                if added == 0 {
                    // The ring is full: the device is behind. Do not spin
                    // on the test machine's few cores.
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    continue;
                }
                mem.store(avail_idx, idx_at(avail), Ordering::Release)
                    .unwrap();
                p.fetch_add(added, Ordering::Relaxed);
                let _ = kick.write(1);
            }
        });
        Self {
            stop,
            posted,
            thread: Some(thread),
        }
    }

    pub fn posted(&self) -> u64 {
        self.posted.load(Ordering::Relaxed)
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
