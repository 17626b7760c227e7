//! The i8042 keyboard controller: vm-superio's device provides the CPU
//! reset (`reboot=k` writes 0xfe to port 0x64, and the VM stops). vm-superio
//! does not answer the controller's other commands, and Linux's i8042 probe
//! then waits ~1.3 s for replies that never come; so this adapter answers
//! the few commands the probe sends (read/write the control register and
//! the self-tests) and reports no keyboard or mouse behind the controller.
//! kvmini's default command line also carries `i8042.noaux i8042.nomux
//! i8042.nopnp i8042.dumbkbd`, which skip the remaining probes.

use vm_superio::{I8042Device, Trigger};

use crate::devices::bus::BusDevice;

/// First port of the i8042 (data port 0x60; command/status is 0x64).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_RESET_CPU: u8 = 0xfe;

/// Status register: output buffer full; the system flag (set once the
/// controller passed its self-test, as firmware leaves it); and the keylock
/// bit, which is active low (set = keyboard not locked).
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_KEYLOCK_OFF: u8 = 0x10;

const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
/// Aux (mouse) interface test: "clock line stuck low", i.e. no mouse.
const AUX_TEST_FAIL: u8 = 0x01;
/// Control register as firmware leaves it: keyboard interrupt on, system
/// flag, translation on.
const DEFAULT_CTR: u8 = 0x45;

pub struct I8042<T: Trigger> {
    reset: I8042Device<T>,
    ctr: u8,
    output: Option<u8>,
    expect_ctr: bool,
}

impl<T: Trigger> I8042<T> {
    pub fn new(reset: T) -> Self {
        Self {
            reset: I8042Device::new(reset),
            ctr: DEFAULT_CTR,
            output: None,
            expect_ctr: false,
        }
    }

    fn command(&mut self, cmd: u8) {
        self.expect_ctr = false;
        match cmd {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.expect_ctr = true,
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_KBD_TEST => self.output = Some(KBD_TEST_OK),
            CMD_AUX_TEST => self.output = Some(AUX_TEST_FAIL),
            CMD_RESET_CPU => {
                if let Err(e) = self.reset.write(COMMAND as u8, cmd) {
                    log::error!("i8042: failed to signal the reset: {e:?}");
                }
            }
            // Enable/disable ports, pulse lines, ...: accepted, no reply.
            _ => log::trace!("i8042: command {cmd:#x} ignored"),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let [b] = data else { return };
        *b = match offset {
            DATA => self.output.take().unwrap_or(0),
            COMMAND => {
                SB_SYSTEM
                    | SB_KEYLOCK_OFF
                    | if self.output.is_some() {
                        SB_OUT_FULL
                    } else {
                        0
                    }
            }
            // Port 0x61 (PC speaker / NMI status), polled by Linux: zero.
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [b] = data else { return };
        match offset {
            COMMAND => self.command(*b),
            DATA if self.expect_ctr => {
                self.ctr = *b;
                self.expect_ctr = false;
            }
            // Bytes for the keyboard: there is none, so no reply.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::EventFdTrigger;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn dev() -> (I8042<EventFdTrigger>, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        (I8042::new(EventFdTrigger(evt.try_clone().unwrap())), evt)
    }

    fn read(d: &mut I8042<EventFdTrigger>, offset: u64) -> u8 {
        let mut b = [0xffu8];
        d.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_triggers() {
        let (mut d, evt) = dev();
        d.write(COMMAND, &[0xad]);
        assert!(evt.read().is_err(), "no reset for other commands");
        d.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn control_register_round_trip() {
        let (mut d, _) = dev();
        assert_eq!(read(&mut d, COMMAND), SB_SYSTEM | SB_KEYLOCK_OFF);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, SB_OUT_FULL);
        assert_eq!(read(&mut d, DATA), DEFAULT_CTR);
        assert_eq!(read(&mut d, COMMAND) & SB_OUT_FULL, 0, "reading empties it");
        d.write(COMMAND, &[CMD_WRITE_CTR]);
        d.write(DATA, &[0x30]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), 0x30);
        // A data byte without a preceding write-CTR command changes nothing.
        d.write(DATA, &[0x99]);
        d.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), 0x30);
    }

    #[test]
    fn self_tests_answer() {
        let (mut d, _) = dev();
        for (cmd, want) in [
            (CMD_SELF_TEST, SELF_TEST_OK),
            (CMD_KBD_TEST, KBD_TEST_OK),
            (CMD_AUX_TEST, AUX_TEST_FAIL),
        ] {
            d.write(COMMAND, &[cmd]);
            assert_eq!(read(&mut d, DATA), want);
        }
        assert_eq!(read(&mut d, 1), 0, "port 0x61 reads zero");
        let mut wide = [0xffu8; 2];
        d.read(DATA, &mut wide);
        assert_eq!(wide, [0, 0]);
    }
}
