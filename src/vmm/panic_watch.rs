//! Notices a guest kernel panic in the console output. With `panic=1` a
//! panicking Linux reboots, which would otherwise look like a clean exit;
//! the VMM checks this watch when the guest resets.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::bus::lock;

const MARKER: &[u8] = b"Kernel panic - not syncing";
/// How much of the panic line is kept for the error message.
const MAX_LINE: usize = 200;

/// The panic line, once seen (shared with the VMM).
pub type PanicLine = Arc<Mutex<Option<String>>>;

/// A console writer that forwards everything and watches for the kernel's
/// panic marker, byte by byte (the guest writes one byte per port access).
pub struct PanicWatch<W: Write> {
    inner: W,
    matched: usize,
    line: Option<Vec<u8>>,
    seen: PanicLine,
}

impl<W: Write> PanicWatch<W> {
    pub fn new(inner: W) -> (Self, PanicLine) {
        let seen = PanicLine::default();
        let watch = Self {
            inner,
            matched: 0,
            line: None,
            seen: seen.clone(),
        };
        (watch, seen)
    }

    fn observe(&mut self, b: u8) {
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
        if b == MARKER[self.matched] {
            self.matched += 1;
            if self.matched == MARKER.len() {
                self.matched = 0;
                self.line = Some(MARKER.to_vec());
                // Record at once too, in case the line never ends.
                *lock(&self.seen) = Some(String::from_utf8_lossy(MARKER).into_owned());
            }
        } else {
            // The marker has no repeated prefix, so restarting is exact.
            self.matched = usize::from(b == MARKER[0]);
        }
    }
}

impl<W: Write> Write for PanicWatch<W> {
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
        let (mut w, seen) = PanicWatch::new(Vec::new());
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
        let (mut w, seen) = PanicWatch::new(io::sink());
        w.write_all(b"Kernel Kernel panic - not syncin\nKernel panic? no")
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), None);
        w.write_all(b"KKernel panic - not syncing").unwrap();
        assert!(seen.lock().unwrap().is_some());
    }
}
