//! Host-side writers for `kvmini exec`: the tail of the guest console (shown
//! when the VM fails), a tee into a console file, and the little status
//! channel the guest init reports on.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::bus::lock;

/// Keeps the last `cap` bytes written to it.
#[derive(Clone)]
pub struct Tail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    cap: usize,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Arc::new(Mutex::new(VecDeque::with_capacity(cap))),
            cap,
        }
    }

    /// The last `n` non-empty lines, without carriage returns.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let bytes: Vec<u8> = lock(&self.buf).iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }
}

impl Write for Tail {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = lock(&self.buf);
        let data_tail = &data[data.len().saturating_sub(self.cap)..];
        let overflow = (b.len() + data_tail.len()).saturating_sub(self.cap);
        b.drain(..overflow);
        b.extend(data_tail);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes to the tail and to a file; a failing file does not stop the tail.
pub struct Tee(pub Tail, pub Option<File>);

impl Write for Tee {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.write_all(data)?;
        if let Some(f) = &mut self.1 {
            if let Err(e) = f.write_all(data) {
                log::warn!("console file: {e}; no longer written");
                self.1 = None;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the guest init said on the status channel.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// The command ran and exited with this status.
    Exit(u8),
    /// The init could not run the command (bad rootfs, mount failure, ...).
    Error(String),
}

/// The status channel: small, so it is capped (the guest is untrusted).
#[derive(Clone, Default)]
pub struct StatusChannel(Arc<Mutex<Vec<u8>>>);

const STATUS_CAP: usize = 4096;

impl StatusChannel {
    /// The first complete report line, if any: `exit N` or `error MESSAGE`.
    pub fn status(&self) -> Option<Status> {
        let bytes = lock(&self.0).clone();
        let text = String::from_utf8_lossy(&bytes);
        let line = text.split_inclusive('\n').next()?.strip_suffix('\n')?;
        let line = line.trim_end_matches('\r');
        if let Some(n) = line.strip_prefix("exit ") {
            return n.trim().parse().ok().map(Status::Exit);
        }
        line.strip_prefix("error ")
            .map(|m| Status::Error(m.trim().to_string()))
    }
}

impl Write for StatusChannel {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut b = lock(&self.0);
        let room = STATUS_CAP.saturating_sub(b.len());
        b.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail::new(16);
        t.write_all(b"first line\r\n").unwrap();
        t.write_all(b"second\r\n\r\nthird\n").unwrap();
        assert_eq!(t.last_lines(2), ["second", "third"]);
        t.write_all(&[b'x'; 100]).unwrap();
        assert_eq!(t.last_lines(5), ["x".repeat(16)]);
    }

    #[test]
    fn status_lines() {
        let mut s = StatusChannel::default();
        assert_eq!(s.status(), None);
        s.write_all(b"exit 4").unwrap();
        assert_eq!(s.status(), None, "incomplete line");
        s.write_all(b"2\n").unwrap();
        assert_eq!(s.status(), Some(Status::Exit(42)));
        let mut s = StatusChannel::default();
        s.write_all(b"error cannot mount /dev/vdb\n").unwrap();
        assert_eq!(
            s.status(),
            Some(Status::Error("cannot mount /dev/vdb".into()))
        );
        let mut s = StatusChannel::default();
        s.write_all(b"exit 300\n").unwrap();
        assert_eq!(s.status(), None, "not a status");
        let mut s = StatusChannel::default();
        s.write_all(&vec![b'a'; 10_000]).unwrap();
        assert_eq!(lock(&s.0).len(), STATUS_CAP);
    }
}
