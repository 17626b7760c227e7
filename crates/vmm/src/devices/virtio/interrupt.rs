//! The interrupt line of one virtio-mmio device: an eventfd the VMM wires to
//! an irqfd, plus the InterruptStatus register the driver reads and acks.
//! Shared (in an `Arc`) by the transport (vCPU threads) and the device's
//! queue handler (event-loop thread), so it is lock-free.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

#[derive(Debug)]
pub struct Interrupt {
    evt: EventFd,
    status: AtomicU32,
    needs_reset: AtomicBool,
}

impl Interrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK)?,
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        })
    }

    /// The eventfd to register with KVM as an irqfd on the device's GSI.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Tells the driver that used buffers are available.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver that the config space (or the status) changed.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device hit an error it cannot recover from on its own: the
    /// transport reports DEVICE_NEEDS_RESET and the driver is told through a
    /// config-change interrupt.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        if let Err(e) = self.signal_config_change() {
            log::warn!("virtio: cannot raise the config interrupt: {e}");
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Device reset: no pending interrupt, no error.
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bits_and_ack() {
        let irq = Interrupt::new().unwrap();
        irq.signal_used_queue().unwrap();
        irq.signal_config_change().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.set_needs_reset();
        assert!(irq.needs_reset());
        irq.reset();
        assert_eq!(irq.status(), 0);
        assert!(!irq.needs_reset());
    }
}
