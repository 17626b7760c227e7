//! The one queue-draining loop every virtio device uses, as virtio-queue
//! documents it: notifications off, serve the available chains,
//! notifications back on and re-check, then tell the caller whether the
//! driver wants an interrupt.
//!
//! It is also where fairness lives: one call serves at most [`BATCH`]
//! chains, however fast the driver adds more. When the budget is spent the
//! loop leaves notifications off and re-arms the queue's own eventfd, so
//! the thread serving it comes back to the queue after everything else
//! that is ready (host signals, other devices, a stop request) has had its
//! turn. A guest that keeps a queue full costs its own throughput, never
//! the VMM's control.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Chains served per call before the queue yields to the rest of its
/// thread's events. A queue holds at most 256; a guest re-posting as fast
/// as we serve would otherwise keep one call going forever.
pub const BATCH: usize = 64;

/// What the device did with one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Served: `len` bytes written into the chain; go on.
    Used(u32),
    /// Served, but the device cannot take more now (its backend is full):
    /// the rest stay available, notifications stay off, and the device
    /// resumes by itself when it can.
    UsedThenPause(u32),
    /// Not served: the chain goes back to the available ring untouched (a
    /// full output buffer, a rate limit), the rest stay available and
    /// notifications stay off; the device resumes by itself.
    NotNow,
}

/// Why a call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// No chain left; notifications are on.
    Empty,
    /// The device paused ([`Step::UsedThenPause`] or [`Step::NotNow`]).
    Paused,
    /// [`BATCH`] chains served and more are waiting: the queue's eventfd was
    /// written, so its thread serves it again after its other events.
    Budget,
}

/// The outcome of one [`drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// The driver must be interrupted (chains were used and it wants to
    /// know).
    pub interrupt: bool,
    pub stop: Stop,
    /// Chains used in this call.
    pub served: usize,
}

/// Serves up to [`BATCH`] available chains of `queue` with `handle`, and
/// re-arms `kick` (the queue's notification eventfd) when more are
/// waiting. An `Err` means the queue itself is corrupt (the device then
/// needs a reset); bad chains are `handle`'s business.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    kick: &EventFd,
    handle: F,
) -> Result<Drained, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Step,
{
    drain_budget(queue, mem, kick, BATCH, handle)
}

/// [`drain`] with an explicit budget (the tests use small ones).
pub fn drain_budget<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    kick: &EventFd,
    budget: usize,
    mut handle: F,
) -> Result<Drained, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> Step,
{
    let mut served = 0usize;
    let stop = 'serve: loop {
        queue.disable_notification(mem)?;
        loop {
            if served >= budget {
                if !has_available(queue, mem)? {
                    // Exactly the budget and nothing more: done.
                    break;
                }
                if let Err(e) = kick.write(1) {
                    // Cannot happen short of the counter overflowing; the
                    // driver's next kick resumes the queue then.
                    log::debug!("virtio queue: cannot re-arm: {e}");
                    queue.enable_notification(mem)?;
                }
                break 'serve Stop::Budget;
            }
            let Some(chain) = queue.iter(mem)?.next() else {
                break;
            };
            let head = chain.head_index();
            match handle(chain) {
                Step::Used(len) => {
                    queue.add_used(mem, head, len)?;
                    served += 1;
                }
                Step::UsedThenPause(len) => {
                    queue.add_used(mem, head, len)?;
                    served += 1;
                    break 'serve Stop::Paused;
                }
                Step::NotNow => {
                    queue.go_to_previous_position();
                    break 'serve Stop::Paused;
                }
            }
        }
        if !queue.enable_notification(mem)? {
            break Stop::Empty;
        }
    };
    let interrupt = served > 0 && needs_interrupt(queue, mem)?;
    Ok(Drained {
        interrupt,
        stop,
        served,
    })
}

/// Whether the driver has made chains available that are not served yet.
fn has_available(queue: &Queue, mem: &GuestMemoryMmap) -> Result<bool, virtio_queue::Error> {
    let avail = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire)?;
    Ok(avail.0 != queue.next_avail())
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

#[cfg(test)]
mod tests;
