//! The one queue-draining loop every virtio device uses, as virtio-queue
//! documents it: notifications off, serve every available chain,
//! notifications back on and re-check, then tell the caller whether the
//! driver wants an interrupt.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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

/// Without EVENT_IDX the driver may set VRING_AVAIL_F_NO_INTERRUPT, which
/// virtio-queue does not look at.
fn interrupts_suppressed(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
    !queue.event_idx_enabled()
        && mem
            .read_obj::<u16>(GuestAddress(queue.avail_ring()))
            .is_ok_and(|flags| u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT != 0)
}
