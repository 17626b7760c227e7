//! The i8042 keyboard controller, only as far as the guest's CPU reset
//! (`reboot=k` writes 0xfe to port 0x64). vm-superio does the decoding.

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

/// First port of the i8042 (data port 0x60; command/status is 0x64).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

pub struct I8042<T: Trigger> {
    inner: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    pub fn new(reset: T) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Port 0x61 (offset 1) is the PC speaker / NMI status port, which
        // Linux polls while calibrating; everything reads as zero.
        data.fill(0);
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(off, *b) {
                log::error!("i8042: failed to signal the reset: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_triggers() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(4, &[0x00]);
        assert!(evt.read().is_err(), "no reset for other commands");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut b = [0xffu8];
        dev.read(4, &mut b);
        assert_eq!(b, [0]);
    }
}
