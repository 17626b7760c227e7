//! The one queue-draining loop every virtio device uses, as virtio-queue
//! documents it: notifications off, serve every available chain,
//! notifications back on and re-check, then tell the caller whether the
//! driver wants an interrupt. Also: used-ring entries published as one
//! batch ([`add_used_batch`]), for a received frame that spans buffers.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{DescriptorChain, Error, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Size of the used ring's header (flags, idx) and of one element (id, len).
const USED_HEADER: u64 = 4;
const USED_ELEMENT: u64 = 8;

/// Serves every available chain of `queue` with `handle`, which returns the
/// number of bytes it wrote into the chain. Returns whether the driver must
/// be interrupted. An `Err` means the queue itself is corrupt (the device
/// then needs a reset); bad chains are `handle`'s business.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: F,
) -> Result<bool, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    drain_while(queue, mem, |chain| (handle(chain), true))
}

/// [`drain`] for a device that may have to pause: `handle` returns the
/// bytes it wrote and whether to go on. After a `false` the chain is still
/// completed, the rest stay available and notifications stay off: the
/// device resumes by itself (e.g. when its backend can take more) and calls
/// this again.
pub fn drain_while<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: F,
) -> Result<bool, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> (u32, bool),
{
    let mut used = false;
    'serve: loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = queue.iter(mem)?.next() {
            let head = chain.head_index();
            let (len, go_on) = handle(chain);
            queue.add_used(mem, head, len)?;
            used = true;
            if !go_on {
                break 'serve;
            }
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used && needs_interrupt(queue, mem)?)
}

/// Whether the driver wants an interrupt for the chains added to the used
/// ring since the last call (EVENT_IDX, or VRING_AVAIL_F_NO_INTERRUPT).
pub fn needs_interrupt(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<bool, virtio_queue::Error> {
    Ok(queue.needs_notification(mem)? && !interrupts_suppressed(queue, mem))
}

/// Adds `entries` (head index, bytes written) to the used ring as one
/// batch: every element first, then the used index once, so the driver
/// never sees part of the batch. virtio-queue's `add_used` publishes the
/// index after each element; for a received frame spread over several
/// mergeable buffers that lets the driver see its first buffers before the
/// rest. Linux's virtio-net then fetches the buffers `num_buffers` promises,
/// counts the ones not yet visible as missing (`rx_length_errors`), drops
/// the frame, and later takes the rest of it for frames of their own, their
/// payload read as virtio-net headers (issue 17). QEMU, vhost and
/// Firecracker publish a frame's buffers together.
///
/// Entries added this way are not counted by `Queue::needs_notification`;
/// ask [`needs_interrupt_since`] instead.
pub fn add_used_batch(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    entries: &[(u16, u32)],
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let start = queue.next_used();
    if entries.iter().any(|&(head, _)| head >= size) {
        return Err(Error::InvalidDescriptorIndex);
    }
    let mut next = start;
    for &(head, len) in entries {
        let slot = u64::from(next % size);
        let at = ring
            .checked_add(USED_HEADER + slot * USED_ELEMENT)
            .ok_or(Error::AddressOverflow)?;
        // struct virtq_used_elem { le32 id; le32 len; }
        let elem = (u64::from(len) << 32) | u64::from(head);
        mem.write_obj(elem.to_le(), at)
            .map_err(Error::GuestMemory)?;
        next = next.wrapping_add(1);
    }
    let idx = ring.checked_add(2).ok_or(Error::AddressOverflow)?;
    // The elements (and the data they describe) before the index.
    fence(Ordering::Release);
    mem.store(next.to_le(), idx, Ordering::Release)
        .map_err(Error::GuestMemory)?;
    queue.set_next_used(next);
    Ok(())
}

/// Whether the driver wants an interrupt for the used entries added since
/// the queue's used index was `old` (EVENT_IDX's `used_event`, or
/// VRING_AVAIL_F_NO_INTERRUPT). The counterpart of [`add_used_batch`].
pub fn needs_interrupt_since(
    queue: &Queue,
    mem: &GuestMemoryMmap,
    old: u16,
) -> Result<bool, Error> {
    let new = queue.next_used();
    if new == old {
        return Ok(false);
    }
    // The used index must be visible before `used_event` is read: the
    // driver writes `used_event`, then reads the used index.
    fence(Ordering::SeqCst);
    if !queue.event_idx_enabled() {
        return Ok(!interrupts_suppressed(queue, mem));
    }
    let at = GuestAddress(queue.avail_ring())
        .checked_add(4 + 2 * u64::from(queue.size()))
        .ok_or(Error::AddressOverflow)?;
    let event = u16::from_le(
        mem.load::<u16>(at, Ordering::Acquire)
            .map_err(Error::GuestMemory)?,
    );
    // vring_need_event(): did the index pass `event` in (old, new]?
    Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
}

/// Without EVENT_IDX the driver may set VRING_AVAIL_F_NO_INTERRUPT, which
/// virtio-queue does not look at.
fn interrupts_suppressed(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
    !queue.event_idx_enabled()
        && mem
            .read_obj::<u16>(GuestAddress(queue.avail_ring()))
            .is_ok_and(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    /// A ready 16-entry queue laid out by hand (virtio-queue's mock puts
    /// its used ring over the end of the avail ring).
    fn setup() -> (GuestMemoryMmap, Queue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(0), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(true);
        q.set_ready(true);
        (mem, q)
    }

    fn used(mem: &GuestMemoryMmap) -> (u16, Vec<(u32, u32)>) {
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let entries = (0..u64::from(idx))
            .map(|i| {
                let at = USED + 4 + 8 * i;
                (
                    mem.read_obj(GuestAddress(at)).unwrap(),
                    mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect();
        (idx, entries)
    }

    #[test]
    fn a_batch_is_published_with_one_index_update() {
        let (mem, mut q) = setup();
        add_used_batch(&mut q, &mem, &[(3, 100), (4, 200), (9, 7)]).unwrap();
        assert_eq!(used(&mem), (3, vec![(3, 100), (4, 200), (9, 7)]));
        assert_eq!(q.next_used(), 3);
        // Nothing to publish: nothing written.
        add_used_batch(&mut q, &mem, &[]).unwrap();
        assert_eq!(q.next_used(), 3);
        // A head outside the queue is refused and the index stays.
        assert!(add_used_batch(&mut q, &mem, &[(5, 1), (16, 1)]).is_err());
        assert_eq!((used(&mem).0, q.next_used()), (3, 3));
    }

    #[test]
    fn interrupts_follow_used_event_across_batches() {
        let (mem, mut q) = setup();
        let used_event = GuestAddress(AVAIL + 4 + 2 * 16);
        // The driver wants an interrupt once entry 2 is used.
        mem.write_obj(2u16, used_event).unwrap();
        add_used_batch(&mut q, &mem, &[(0, 1), (1, 1)]).unwrap();
        assert!(!needs_interrupt_since(&q, &mem, 0).unwrap());
        add_used_batch(&mut q, &mem, &[(2, 1), (3, 1)]).unwrap();
        assert!(needs_interrupt_since(&q, &mem, 2).unwrap());
        // Nothing new since the last look: no interrupt.
        assert!(!needs_interrupt_since(&q, &mem, 4).unwrap());
        // Without EVENT_IDX: always, unless the driver said NO_INTERRUPT.
        q.set_event_idx(false);
        add_used_batch(&mut q, &mem, &[(4, 1)]).unwrap();
        assert!(needs_interrupt_since(&q, &mem, 4).unwrap());
        mem.write_obj(1u16, GuestAddress(AVAIL)).unwrap();
        assert!(!needs_interrupt_since(&q, &mem, 4).unwrap());
    }
}
