//! Legacy PC devices: the 16550 serial console, the i8042 reset line, the
//! CMOS RTC and the pvpanic port.

pub mod i8042;
pub mod pvpanic;
pub mod rtc;
pub mod serial;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An eventfd used as a vm-superio [`Trigger`]: writing it raises the
/// interrupt (through an irqfd) or wakes whoever polls it.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}
