//! Virtio devices over one MMIO transport ([`mmio::MmioTransport`]).
//!
//! A device implements [`VirtioDevice`]: it describes itself (type, features,
//! queues, config space) and is handed its validated queues when the driver
//! sets DRIVER_OK. Queue processing happens on the event-loop thread, in a
//! per-device event subscriber listening on the device's queue eventfds, which
//! the VMM also registers as KVM ioeventfds on the QueueNotify register.
//!
//! The spec's constants come from rust-vmm's `virtio-bindings` (below), and
//! a device's config space is a byte slice the trait's default
//! [`VirtioDevice::read_config`] reads from, bounds checked once for all.

pub mod block;
pub mod console;
pub mod fs;
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

// The spec's values come from rust-vmm's virtio-bindings (generated from
// Linux's uapi headers), under the names kvmini's code uses; devices take
// theirs from there too (block/request.rs, net/device.rs, console.rs).
use virtio_bindings::{virtio_config, virtio_ids, virtio_mmio, virtio_ring};

/// Device IDs (virtio 1.2, 5).
pub const TYPE_NET: u32 = virtio_ids::VIRTIO_ID_NET;
pub const TYPE_BLOCK: u32 = virtio_ids::VIRTIO_ID_BLOCK;
pub const TYPE_CONSOLE: u32 = virtio_ids::VIRTIO_ID_CONSOLE;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
pub const STATUS_DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
pub const STATUS_DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
pub const STATUS_FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
pub const STATUS_FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;

/// Reserved (device-independent) feature bits (virtio 1.2, 6).
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
pub const VIRTIO_F_RING_EVENT_IDX: u32 = virtio_ring::VIRTIO_RING_F_EVENT_IDX;
pub const VIRTIO_F_VERSION_1: u32 = virtio_config::VIRTIO_F_VERSION_1;

/// Interrupt status bits (virtio 1.2, 4.2.2).
pub const VIRTIO_MMIO_INT_VRING: u32 = virtio_mmio::VIRTIO_MMIO_INT_VRING;
pub const VIRTIO_MMIO_INT_CONFIG: u32 = virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// Descriptor flags (virtio 1.2, 2.7.5): the descriptor's 16-bit field.
pub const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;

/// Copies `config[offset..]` into `data`; what lies beyond `config` reads
/// as zero (a guest may read any offset of the 3.8 KiB config window).
pub fn read_config_from(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(config.len());
    let end = start.saturating_add(data.len()).min(config.len());
    data[..end - start].copy_from_slice(&config[start..end]);
    if offset >= config.len() as u64 {
        log::debug!("virtio: config read past its end at {offset:#x}");
    }
}

/// The `N` queues the transport handed to `activate`, in order, or the
/// error when it handed another number; and the device's worker slot,
/// locked and empty (a second activation without a reset is refused).
pub fn activation<W, const N: usize>(
    queues: Vec<Queue>,
    worker: &std::sync::Mutex<Option<W>>,
) -> Result<([Queue; N], std::sync::MutexGuard<'_, Option<W>>), ActivateError> {
    let queues: [Queue; N] =
        queues
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::QueueCount {
                expected: N,
                got: q.len(),
            })?;
    let slot = crate::sync::lock(worker);
    if slot.is_some() {
        return Err(ActivateError::AlreadyActive);
    }
    Ok((queues, slot))
}

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

    /// The device config space, as the driver reads it.
    fn config_space(&self) -> &[u8];

    /// Reads the device config space; `offset` is relative to its start.
    /// Bytes beyond the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(self.config_space(), offset, data);
    }

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

#[cfg(test)]
mod toolkit_tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_zero_filled() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0xaau8; 3];
        read_config_from(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        read_config_from(&config, 4, &mut d);
        assert_eq!(d, [0, 0, 0]);
        read_config_from(&config, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0]);
        let mut big = [0xaau8; 64];
        read_config_from(&config, 0, &mut big);
        assert_eq!(&big[..5], &[1, 2, 3, 4, 0]);
    }

    #[test]
    fn activation_checks_queue_count_and_state() {
        let slot: std::sync::Mutex<Option<u8>> = std::sync::Mutex::new(None);
        let q = || <Queue as virtio_queue::QueueT>::new(16).unwrap();
        assert!(matches!(
            activation::<u8, 2>(vec![q()], &slot),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        let (qs, mut guard) = activation::<u8, 2>(vec![q(), q()], &slot).unwrap();
        assert_eq!(qs.len(), 2);
        *guard = Some(1);
        drop(guard);
        assert!(matches!(
            activation::<u8, 2>(vec![q(), q()], &slot),
            Err(ActivateError::AlreadyActive)
        ));
    }
}
