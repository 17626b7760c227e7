//! Watches the guest console for two kernel messages a VMM cannot see
//! otherwise:
//! - a panic: with `panic=1` a panicking Linux reboots, which would look
//!   like a clean exit; the VMM checks this watch when the guest resets;
//! - a power-off or halt ("reboot: Power down", "... Power off not
//!   available", "... System halted"): without ACPI, a Linux `poweroff`
//!   ends in a halt loop that never exits to the VMM; the watch calls
//!   `on_power_off`.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::bus::lock;

const MARKER: &[u8] = b"Kernel panic - not syncing";
/// What Linux prints when it powers off or halts for good: with a power-off
/// driver, without one (no ACPI: it halts instead), and on `halt`.
const POWER_DOWN: [&[u8]; 3] = [
    b"reboot: Power down",
    b"reboot: Power off not available",
    b"reboot: System halted",
];
/// How much of the panic line is kept for the error message.
const MAX_LINE: usize = 200;

/// The panic line, once seen (shared with the VMM).
pub type PanicLine = Arc<Mutex<Option<String>>>;

/// A console writer that forwards everything and watches for the kernel's
/// panic marker, byte by byte (the guest writes one byte per port access).
pub struct ConsoleWatch<W: Write> {
    inner: W,
    matched: usize,
    power_matched: [usize; POWER_DOWN.len()],
    /// A power-off message started; stop the VM at the end of its line, so
    /// the console shows the whole line.
    power_off_pending: bool,
    on_power_off: Box<dyn FnMut() + Send>,
    line: Option<Vec<u8>>,
    seen: PanicLine,
}

impl<W: Write> ConsoleWatch<W> {
    pub fn new(inner: W, on_power_off: Box<dyn FnMut() + Send>) -> (Self, PanicLine) {
        let seen = PanicLine::default();
        let watch = Self {
            inner,
            matched: 0,
            power_matched: [0; POWER_DOWN.len()],
            power_off_pending: false,
            on_power_off,
            line: None,
            seen: seen.clone(),
        };
        (watch, seen)
    }

    fn observe(&mut self, b: u8) {
        for (matched, marker) in self.power_matched.iter_mut().zip(POWER_DOWN) {
            self.power_off_pending |= advance(matched, marker, b);
        }
        if self.power_off_pending && b == b'\n' {
            self.power_off_pending = false;
            (self.on_power_off)();
        }
        if let Some(line) = &mut self.line {
            if b == b'\n' || b == b'\r' || line.len() >= MAX_LINE {
                let text = String::from_utf8_lossy(line).into_owned();
                *lock(&self.seen) = Some(text);
                self.line = None;
            } else {
                line.push(b);
            }
            return;
        }
        if advance(&mut self.matched, MARKER, b) {
            self.line = Some(MARKER.to_vec());
            // Record at once too, in case the line never ends.
            *lock(&self.seen) = Some(String::from_utf8_lossy(MARKER).into_owned());
        }
    }
}

/// Feeds one byte to a matcher for `marker`; true when it completes. The
/// markers have no repeated prefix, so restarting on a mismatch is exact.
fn advance(matched: &mut usize, marker: &[u8], b: u8) -> bool {
    if b == marker[*matched] {
        *matched += 1;
        if *matched == marker.len() {
            *matched = 0;
            return true;
        }
    } else {
        *matched = usize::from(b == marker[0]);
    }
    false
}

impl<W: Write> Write for ConsoleWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        buf.iter().for_each(|&b| self.observe(b));
        // The console is best effort: a closed stdout must not stop the VM
        // (nor hide a panic from the watch above).
        match self.inner.write_all(buf) {
            Ok(()) | Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_the_panic_line_split_across_writes() {
        let (mut w, seen) = ConsoleWatch::new(Vec::new(), Box::new(|| {}));
        for chunk in [
            &b"ok\r\n[ 1.0] Kernel pan"[..],
            b"ic - not ",
            b"syncing: VFS: boom\r\nmore",
        ] {
            for &b in chunk {
                w.write_all(&[b]).unwrap();
            }
        }
        assert_eq!(
            seen.lock().unwrap().as_deref(),
            Some("Kernel panic - not syncing: VFS: boom")
        );
        assert!(w.inner.ends_with(b"boom\r\nmore"));
    }

    #[test]
    fn no_false_alarm() {
        let (mut w, seen) = ConsoleWatch::new(io::sink(), Box::new(|| panic!("no power-off")));
        w.write_all(b"Kernel Kernel panic - not syncin\nKernel panic? no")
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), None);
        w.write_all(b"KKernel panic - not syncing").unwrap();
        assert!(seen.lock().unwrap().is_some());
    }

    #[test]
    fn sees_the_power_down() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let (mut w, _) = ConsoleWatch::new(
            io::sink(),
            Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            }),
        );
        w.write_all(b"[ 2.0] reboot: Power dow\n[ 2.1] reboot: Power")
            .unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 0);
        w.write_all(b" down").unwrap();
        assert_eq!(
            count.load(Ordering::SeqCst),
            0,
            "waits for the end of the line"
        );
        w.write_all(b"\r\n").unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        w.write_all(b"[ 6.9] reboot: Power off not available: System halted instead\r\n")
            .unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
        w.write_all(b"[ 7.0] reboot: System halted\r\n").unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }
}
