//! The drain loop against a driver that never stops adding chains.

use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::test_guest::{Flooder, FLOOD_QUEUE_SIZE};

#[test]
fn one_call_serves_one_batch_however_fast_the_driver_adds() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vq = MockSplitQueue::new(&mem, 256);
    vq.add_desc_chains(
        &[RawDescriptor::from(SplitDescriptor::new(
            0x8_0000, 16, 0, 0,
        ))],
        0,
    )
    .unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_size(FLOOD_QUEUE_SIZE);
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let guest_kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let flood = Flooder::start(
        mem.clone(),
        vq.avail_addr(),
        vq.used_addr(),
        FLOOD_QUEUE_SIZE,
        0,
        guest_kick,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while flood.posted() < 1000 {
        assert!(Instant::now() < deadline, "the test guest does not post");
        let _ = drain(&mut q, &mem, &kick, |_| Step::Used(0)).unwrap();
    }
    // The guest keeps posting; each call still ends after one batch and
    // re-arms the queue for the rest.
    for _ in 0..100 {
        let _ = kick.read();
        let start = Instant::now();
        let d = drain(&mut q, &mem, &kick, |_| Step::Used(0)).unwrap();
        assert!(d.served <= BATCH);
        if d.stop == Stop::Budget {
            assert_eq!(kick.read().unwrap(), 1);
        }
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}

#[test]
fn not_now_puts_the_chain_back_and_pause_keeps_the_rest() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vq = MockSplitQueue::new(&mem, 16);
    let descs: Vec<RawDescriptor> = (0..3)
        .map(|i| RawDescriptor::from(SplitDescriptor::new(0x8_0000 + 0x100 * i, 16, 0, 0)))
        .collect();
    vq.add_desc_chains(&descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    let d = drain(&mut q, &mem, &kick, |_| Step::NotNow).unwrap();
    assert_eq!((d.stop, d.served, d.interrupt), (Stop::Paused, 0, false));
    assert_eq!(q.next_avail(), 0, "the chain went back");
    let d = drain(&mut q, &mem, &kick, |_| Step::UsedThenPause(4)).unwrap();
    assert_eq!((d.stop, d.served), (Stop::Paused, 1));
    let d = drain(&mut q, &mem, &kick, |_| Step::Used(0)).unwrap();
    assert_eq!((d.stop, d.served), (Stop::Empty, 2));
    assert!(kick.read().is_err(), "nothing left: no re-arm");
    // Exactly a batch and nothing more: done, not re-armed.
    let d = drain_budget(&mut q, &mem, &kick, 0, |_| Step::Used(0)).unwrap();
    assert_eq!(d.stop, Stop::Empty);
}
