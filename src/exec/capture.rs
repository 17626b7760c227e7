//! Host-side writers for `kvmini exec`: the tail of the guest console (shown
//! when the VM fails), a tee into a console file, the little status
//! channel the guest init reports on, and the bounded spool file the
//! guest's share changes arrive in.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
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

#[derive(Debug)]
pub enum CaptureError {
    /// The guest sent more than the limit (bytes).
    TooBig(u64),
    /// The spool file could not be written.
    Write(PathBuf, io::Error),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooBig(limit) => write!(
                f,
                "the guest sent more than {limit} bytes of changes to the shares (more than \
                 their images hold): refused, nothing was copied back"
            ),
            Self::Write(p, e) => write!(
                f,
                "cannot store the guest's changes to the shares in '{}': {e}; nothing was \
                 copied back (check the free space of TMPDIR)",
                p.display()
            ),
        }
    }
}

impl std::error::Error for CaptureError {}

/// What the guest sends on the share port: kept in a file, at most `limit`
/// bytes. Past that (or after a write error) the file is emptied and the
/// rest is read and dropped, so the guest never blocks on a full port.
#[derive(Clone)]
pub struct Spool(Arc<Mutex<SpoolState>>);

struct SpoolState {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limit: u64,
    fault: Option<CaptureError>,
}

impl Spool {
    /// Creates `path`, which must not exist yet.
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        let file = File::options().write(true).create_new(true).open(path)?;
        Ok(Self(Arc::new(Mutex::new(SpoolState {
            path: path.to_path_buf(),
            file: Some(file),
            written: 0,
            limit,
            fault: None,
        }))))
    }

    /// The bytes kept, or why the spool is unusable.
    pub fn finish(&self) -> Result<u64, CaptureError> {
        let s = lock(&self.0);
        match &s.fault {
            Some(CaptureError::TooBig(n)) => Err(CaptureError::TooBig(*n)),
            Some(CaptureError::Write(p, e)) => Err(CaptureError::Write(
                p.clone(),
                io::Error::new(e.kind(), e.to_string()),
            )),
            None => Ok(s.written),
        }
    }
}

impl SpoolState {
    fn stop(&mut self, fault: CaptureError) {
        if let Some(f) = self.file.take() {
            // Give the space back now; the file is not used any more.
            let _ = f.set_len(0);
        }
        self.fault.get_or_insert(fault);
    }
}

impl Write for Spool {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut s = lock(&self.0);
        if s.fault.is_some() {
            return Ok(data.len());
        }
        if s.written + data.len() as u64 > s.limit {
            let limit = s.limit;
            s.stop(CaptureError::TooBig(limit));
            return Ok(data.len());
        }
        let result = match &mut s.file {
            Some(f) => f.write_all(data),
            None => Ok(()),
        };
        match result {
            Ok(()) => s.written += data.len() as u64,
            Err(e) => {
                let path = s.path.clone();
                s.stop(CaptureError::Write(path, e));
            }
        }
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

    #[test]
    fn spool_keeps_up_to_the_limit_then_refuses() {
        let t = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let p = t.as_path().join("spool");
        let mut s = Spool::create(&p, 10).unwrap();
        assert!(
            Spool::create(&p, 10).is_err(),
            "an existing file is not reused"
        );
        s.write_all(b"0123456789").unwrap();
        assert_eq!(s.finish().unwrap(), 10);
        assert_eq!(std::fs::read(&p).unwrap(), b"0123456789");
        // One byte more: the guest is not blocked, but the spool is refused
        // and emptied, whatever comes after.
        assert_eq!(s.write(b"x").unwrap(), 1);
        s.write_all(&[0u8; 100_000]).unwrap();
        let e = s.finish().unwrap_err();
        assert!(e.to_string().contains("more than 10 bytes"), "{e}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    }
}
