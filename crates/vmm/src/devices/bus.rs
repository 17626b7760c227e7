//! An address-range bus for port I/O and MMIO. Each device sits behind its
//! own mutex, so two vCPUs touching different devices never contend.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. `offset` is relative to the base
/// address the device was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    InvalidRange { base: u64, len: u64 },
    /// The range overlaps a device already on the bus.
    Overlap { base: u64, len: u64 },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidRange { base, len } => {
                write!(f, "invalid bus range {base:#x}+{len:#x}")
            }
            Self::Overlap { base, len } => {
                write!(f, "bus range {base:#x}+{len:#x} overlaps another device")
            }
        }
    }
}

impl std::error::Error for BusError {}

type Entry = (u64, Arc<Mutex<dyn BusDevice>>);

/// Devices keyed by base address; immutable once the VM runs, shared by all
/// vCPU threads.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The device below must end before us; the one above must start after us.
        let below = self.devices.range(..end).next_back();
        if let Some((&b, &(l, _))) = below {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; returns false (leaving `data` untouched) when no
    /// device claims `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device claims `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

pub use crate::sync::lock;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, &[7]));
        assert_eq!(dev.lock().unwrap().last_write, Some((0, vec![7])));
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.write(0, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev.clone(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev.clone(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert!(bus.insert(dev.clone(), 0x110, 1).is_ok());
        assert!(bus.insert(dev.clone(), 0xf0, 0x10).is_ok());
        assert!(bus.insert(dev.clone(), 0x200, 0).is_err());
        assert!(bus.insert(dev, u64::MAX, 2).is_err());
    }
}
