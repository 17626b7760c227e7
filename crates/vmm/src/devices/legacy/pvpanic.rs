//! pvpanic, QEMU's ISA flavour (`QEMU0001` in the DSDT, one port at
//! [`PVPANIC_PORT`](crate::arch::x86_64::layout::PVPANIC_PORT)): Linux's
//! pvpanic driver reads the port when it probes (the events the device
//! supports) and writes "panicked" from its panic notifier. A read is the
//! proof that the guest has the driver, after which the VMM trusts this
//! device, not the console text, to say whether the guest panicked.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::devices::events::{GuestEvent, GuestEvents};

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// A crash kernel was loaded after a panic (kdump): not a stop.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    events: Arc<dyn GuestEvents>,
    probed: bool,
}

impl PvPanic {
    pub fn new(events: Arc<dyn GuestEvents>) -> Self {
        Self {
            events,
            probed: false,
        }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
        if !self.probed {
            self.probed = true;
            self.events.report(GuestEvent::PanicDriverReady);
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value & PVPANIC_PANICKED != 0 {
            self.events.report(GuestEvent::Panicked);
        } else if value & PVPANIC_CRASH_LOADED != 0 {
            log::info!("the guest panicked and loaded its crash kernel (pvpanic)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::events::testing::Recorder;

    #[test]
    fn probe_read_then_panic_write() {
        let rec = Arc::new(Recorder::default());
        let mut dev = PvPanic::new(rec.clone());
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, [PVPANIC_PANICKED | PVPANIC_CRASH_LOADED]);
        dev.read(0, &mut b);
        assert_eq!(
            rec.take(),
            vec![GuestEvent::PanicDriverReady],
            "reported once"
        );
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(rec.take(), vec![]);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(rec.take(), vec![GuestEvent::Panicked]);
        dev.write(0, &[]);
        assert_eq!(rec.take(), vec![]);
    }
}
