//! What devices tell the VMM about the guest: that it runs ACPI, that it
//! powered off or reset, that its panic driver is ready or its kernel
//! panicked. The VMM decides what each means for the run
//! (`vmm::guest_state`); devices only report what the guest did to them.

/// Something the guest did to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest's ACPI interpreter started (the DSDT's `_INI` wrote the
    /// probe port).
    AcpiRunning,
    /// The guest entered S5 through the sleep control register.
    PowerOff,
    /// The guest wrote the reset value to the reset register.
    Reset,
    /// The guest's pvpanic driver probed the device (read its port).
    PanicDriverReady,
    /// The guest's kernel panicked (pvpanic "panicked" event).
    Panicked,
}

/// Receives the devices' reports; shared by every device that reports.
pub trait GuestEvents: Send + Sync {
    fn report(&self, event: GuestEvent);
}

#[cfg(test)]
pub mod testing {
    use super::*;
    use std::sync::Mutex;

    /// Records every report, for device tests.
    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<GuestEvent>>);

    impl GuestEvents for Recorder {
        fn report(&self, event: GuestEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Recorder {
        pub fn take(&self) -> Vec<GuestEvent> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }
}
