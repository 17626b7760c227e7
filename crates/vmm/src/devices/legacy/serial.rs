//! The 16550 UART at 0x3f8 (COM1), a thin bus adapter over vm-superio's
//! `Serial`, plus the event-loop subscriber that feeds it from stdin.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::EventFdTrigger;
use crate::devices::bus::{lock, BusDevice};

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;

/// Ctrl-A, the console escape key (as in QEMU's `-nographic`).
pub const ESCAPE: u8 = 0x01;

/// Most input bytes held while the guest is not reading its UART; beyond
/// this, new input is dropped (with a warning) rather than growing memory.
const MAX_PENDING_INPUT: usize = 64 << 10;

/// Signals the input side when the guest has drained the receive FIFO, so
/// input that did not fit can be delivered without polling.
pub struct InputWake(EventFd);

impl SerialEvents for InputWake {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        let _ = self.0.write(1);
    }
}

pub type Uart = Serial<EventFdTrigger, InputWake, Box<dyn Write + Send>>;

pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// `irq` is raised (through an irqfd) when the UART interrupts; `out`
    /// receives every byte the guest transmits.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> io::Result<(Self, EventFd)> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let uart = Serial::with_events(EventFdTrigger(irq), InputWake(wake.try_clone()?), out);
        Ok((Self { uart }, wake))
    }

    /// Queues as much of `input` as the receive FIFO takes; returns how many
    /// bytes were taken.
    pub fn push_input(&mut self, input: &[u8]) -> usize {
        if input.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(input).unwrap_or_else(|e| {
            log::warn!("serial: cannot queue input: {e:?}");
            0
        })
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.uart.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.uart.write(off, *b) {
                log::debug!("serial: write failed: {e:?}");
            }
        }
    }
}

/// What the console input filter made of a chunk of keystrokes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Filtered {
    pub bytes: Vec<u8>,
    pub quit: bool,
}

/// The Ctrl-A escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, and
/// Ctrl-A followed by anything else sends both bytes.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    armed: bool,
}

impl EscapeFilter {
    pub fn feed(&mut self, input: &[u8]) -> Filtered {
        let mut out = Filtered::default();
        for &b in input {
            if self.armed {
                self.armed = false;
                match b {
                    b'x' | b'X' => {
                        out.quit = true;
                        return out;
                    }
                    ESCAPE => out.bytes.push(ESCAPE),
                    _ => out.bytes.extend_from_slice(&[ESCAPE, b]),
                }
            } else if b == ESCAPE {
                self.armed = true;
            } else {
                out.bytes.push(b);
            }
        }
        out
    }
}

/// Feeds host input (stdin) to the guest UART from the event loop.
pub struct ConsoleInput<R: Read + AsRawFd> {
    input: R,
    serial: Arc<Mutex<SerialDevice>>,
    wake: EventFd,
    pending: VecDeque<u8>,
    /// `None` when input is not a terminal: bytes pass through unfiltered.
    escape: Option<EscapeFilter>,
    on_quit: Box<dyn FnMut() + Send>,
    input_open: bool,
}

impl<R: Read + AsRawFd> ConsoleInput<R> {
    pub fn new(
        input: R,
        serial: Arc<Mutex<SerialDevice>>,
        wake: EventFd,
        interactive: bool,
        on_quit: Box<dyn FnMut() + Send>,
    ) -> Self {
        Self {
            input,
            serial,
            wake,
            pending: VecDeque::new(),
            escape: interactive.then(EscapeFilter::default),
            on_quit,
            input_open: true,
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let n = match self.input.read(&mut buf) {
            Ok(0) => {
                log::debug!("console: end of input");
                self.close_input(ops);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::warn!("console: reading input failed, input disabled: {e}");
                self.close_input(ops);
                return;
            }
        };
        let filtered = match &mut self.escape {
            Some(f) => f.feed(&buf[..n]),
            None => Filtered {
                bytes: buf[..n].to_vec(),
                quit: false,
            },
        };
        let room = MAX_PENDING_INPUT.saturating_sub(self.pending.len());
        if filtered.bytes.len() > room {
            log::warn!(
                "console: guest is not reading input; dropped {} bytes",
                filtered.bytes.len() - room
            );
        }
        self.pending.extend(filtered.bytes.iter().take(room));
        if filtered.quit {
            (self.on_quit)();
        }
    }

    fn close_input(&mut self, ops: &mut EventOps) {
        if self.input_open {
            self.input_open = false;
            let _ = ops.remove(Events::empty_raw(self.input.as_raw_fd()));
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let (front, _) = self.pending.as_slices();
        let taken = lock(&self.serial).push_input(front);
        self.pending.drain(..taken);
    }

    fn input_fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }
}

impl<R: Read + AsRawFd> MutEventSubscriber for ConsoleInput<R> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.wake.as_raw_fd() {
            let _ = self.wake.read();
        } else if events.fd() == self.input_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.read_input(ops);
            } else {
                // HUP or ERR without data: nothing more will come.
                self.close_input(ops);
            }
        }
        self.flush();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.wake, EventSet::IN)) {
            log::error!("console: cannot watch the UART: {e}");
        }
        if let Err(e) = ops.add(Events::new_raw(self.input_fd(), EventSet::IN)) {
            // Regular files cannot be polled; the guest simply gets no input.
            log::debug!("console: input not pollable ({e}); guest input disabled");
            self.input_open = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn escape_sequences() {
        let mut f = EscapeFilter::default();
        assert_eq!(f.feed(b"ab").bytes, b"ab");
        assert_eq!(f.feed(&[ESCAPE]).bytes, b"");
        assert_eq!(f.feed(&[ESCAPE]).bytes, &[ESCAPE]);
        assert_eq!(f.feed(&[ESCAPE, b'c']).bytes, &[ESCAPE, b'c']);
        let r = f.feed(&[b'z', ESCAPE, b'x', b'q']);
        assert_eq!(r.bytes, b"z");
        assert!(r.quit);
    }

    #[test]
    fn transmit_and_receive() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let (mut dev, _wake) =
            SerialDevice::new(irq.try_clone().unwrap(), Box::new(sink.clone())).unwrap();
        for &b in b"hi" {
            dev.write(0, &[b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt (IER bit 0), then feed input.
        dev.write(1, &[1]);
        assert_eq!(dev.push_input(b"ok"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, *b"o");
        // Wide accesses are not UART accesses.
        let mut w = [0u8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [0xff, 0xff]);
    }

    #[test]
    fn input_waits_for_fifo_room() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let (dev, wake) = SerialDevice::new(irq, Box::new(io::sink())).unwrap();
        let serial = Arc::new(Mutex::new(dev));
        let (rx, _tx) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut input = ConsoleInput::new(rx, serial.clone(), wake, true, Box::new(|| {}));
        let cap = lock(&serial).uart.fifo_capacity();
        input.pending.extend(std::iter::repeat_n(b'a', cap + 10));
        input.flush();
        assert_eq!(input.pending.len(), 10, "the FIFO takes what fits");
        // The guest drains the FIFO; the rest follows on the next flush.
        for _ in 0..cap {
            let mut b = [0u8];
            lock(&serial).read(0, &mut b);
            assert_eq!(b, *b"a");
        }
        input.flush();
        assert!(input.pending.is_empty());
    }
}
