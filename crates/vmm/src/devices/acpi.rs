//! kvmini's ACPI power block, the port range the FADT and DSDT point at
//! (layout in `arch::x86_64::acpi::port`): the sleep control and status
//! registers (S5 = power-off), the reset register, the probe port the
//! DSDT's `_INI` writes when the guest's ACPI interpreter starts, and the
//! Generic Event Device's event register, behind whose interrupt the power
//! button sits.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::acpi::{port, GED_POWER_BUTTON, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::devices::bus::BusDevice;
use crate::devices::events::{GuestEvent, GuestEvents};

pub struct AcpiPower {
    events: Arc<dyn GuestEvents>,
    /// GED events not yet read by the guest's `_EVT`.
    ged_pending: u8,
    /// The GED's interrupt (an irqfd).
    ged_irq: EventFd,
}

impl AcpiPower {
    pub fn new(events: Arc<dyn GuestEvents>, ged_irq: EventFd) -> Self {
        Self {
            events,
            ged_pending: 0,
            ged_irq,
        }
    }

    /// Presses the power button: the GED interrupt makes the guest run
    /// `_EVT`, which notifies the power button device.
    pub fn press_power_button(&mut self) -> io::Result<()> {
        self.ged_pending |= GED_POWER_BUTTON;
        self.ged_irq.write(1)
    }

    fn sleep(&self, value: u8) {
        if value & SLEEP_ENABLE == 0 {
            return;
        }
        match (value >> 2) & 0x7 {
            S5_SLEEP_TYPE => self.events.report(GuestEvent::PowerOff),
            other => log::warn!(
                "the guest asked for sleep type {other}, which kvmini does not offer; ignored"
            ),
        }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(port::GED_EVENT), Some(b)) = (u16::try_from(offset), data.first_mut()) {
            *b = std::mem::take(&mut self.ged_pending);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match u16::try_from(offset) {
            Ok(port::SLEEP_CONTROL) => self.sleep(value),
            Ok(port::RESET) if value == RESET_VALUE => self.events.report(GuestEvent::Reset),
            Ok(port::ACPI_PROBE) => self.events.report(GuestEvent::AcpiRunning),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::events::testing::Recorder;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn device() -> (AcpiPower, Arc<Recorder>, EventFd) {
        let rec = Arc::new(Recorder::default());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = AcpiPower::new(rec.clone(), irq.try_clone().unwrap());
        (dev, rec, irq)
    }

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let (mut d, rec, _) = device();
        // What Linux's acpi_hw_extended_sleep writes for _S5_ = 5.
        d.write(u64::from(port::SLEEP_CONTROL), &[SLEEP_ENABLE | (5 << 2)]);
        assert_eq!(rec.take(), vec![GuestEvent::PowerOff]);
        d.write(u64::from(port::SLEEP_CONTROL), &[5 << 2]);
        d.write(u64::from(port::SLEEP_CONTROL), &[SLEEP_ENABLE | (3 << 2)]);
        assert_eq!(rec.take(), vec![], "no SLP_EN, or not S5");
        d.write(u64::from(port::RESET), &[RESET_VALUE + 1]);
        assert_eq!(rec.take(), vec![]);
        d.write(u64::from(port::RESET), &[RESET_VALUE]);
        assert_eq!(rec.take(), vec![GuestEvent::Reset]);
        d.write(u64::from(port::ACPI_PROBE), &[1]);
        assert_eq!(rec.take(), vec![GuestEvent::AcpiRunning]);
        let mut b = [0xffu8];
        d.read(u64::from(port::SLEEP_STATUS), &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn power_button_raises_the_ged_interrupt_once_per_press() {
        let (mut d, rec, irq) = device();
        let mut b = [0xffu8];
        d.read(u64::from(port::GED_EVENT), &mut b);
        assert_eq!(b, [0], "nothing pending");
        assert!(irq.read().is_err());
        d.press_power_button().unwrap();
        assert_eq!(irq.read().unwrap(), 1);
        d.read(u64::from(port::GED_EVENT), &mut b);
        assert_eq!(b, [GED_POWER_BUTTON]);
        d.read(u64::from(port::GED_EVENT), &mut b);
        assert_eq!(b, [0], "the read cleared it");
        assert_eq!(rec.take(), vec![]);
    }
}
