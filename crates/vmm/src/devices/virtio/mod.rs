//! Virtio devices over one MMIO transport ([`mmio::MmioTransport`]).
//!
//! A device implements [`VirtioDevice`]: it describes itself (type, features,
//! queues, config space) and is handed its validated queues when the driver
//! sets DRIVER_OK. Queue processing happens on the event-loop thread, in a
//! per-device event subscriber listening on the device's queue eventfds, which
//! the VMM also registers as KVM ioeventfds on the QueueNotify register.
//!
//! The constants below are the few spec values kvmini needs (virtio 1.2,
//! sections 2.1, 4.2.2 and 6); the `virtio-bindings` crate is only an indirect
//! dependency, so it cannot be named here.

pub mod block;
pub mod console;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue;
#[cfg(test)]
pub mod test_guest;

use std::fmt;
use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::Interrupt;

/// Device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

/// Reserved (device-independent) feature bits (virtio 1.2, 6).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Interrupt status bits (virtio 1.2, 4.2.2).
pub const VIRTIO_MMIO_INT_VRING: u32 = 1;
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 2;

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// The feature bit `bit` as a mask.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// Why a device could not be activated; the transport then sets
/// DEVICE_NEEDS_RESET and the driver has to reset the device.
#[derive(Debug)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the
    /// device declared.
    QueueCount { expected: usize, got: usize },
    /// The device was already running.
    AlreadyActive,
    /// Kicking the queue handler failed.
    Io(io::Error),
    /// The device's backend refused the negotiated setup.
    Backend(String),
}

impl fmt::Display for ActivateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueCount { expected, got } => {
                write!(f, "expected {expected} queues, got {got}")
            }
            Self::AlreadyActive => write!(f, "device is already active"),
            Self::Io(e) => write!(f, "cannot start the queue handler: {e}"),
            Self::Backend(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ActivateError {}

/// What every virtio device offers its transport. The transport owns the
/// register protocol and queue configuration; the device owns the data path.
pub trait VirtioDevice: Send {
    /// Virtio device ID ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;

    /// Feature bits the device offers, including [`VIRTIO_F_VERSION_1`].
    fn avail_features(&self) -> u64;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// One notification eventfd per queue, in queue order. The transport
    /// signals them on QueueNotify writes; the VMM may register them as
    /// ioeventfds instead; the device's event handler listens on them.
    fn queue_events(&self) -> &[EventFd];

    /// Reads the device config space; `offset` is relative to its start.
    /// Bytes beyond the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space. Read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio: ignoring write of {} bytes at config offset {offset:#x}",
            data.len()
        );
    }

    /// Starts the data path with the queues the driver set up (already
    /// validated) and the features it accepted.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;

    /// Stops the data path; the device may be activated again afterwards.
    fn reset(&mut self);
}
