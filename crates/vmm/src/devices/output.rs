//! Guest output that never blocks the VMM: a bounded buffer between a
//! device (the serial port on a vCPU thread, a virtio-console on the
//! event loop) and a writer thread of its own that does the blocking
//! writes to the host (stdout, a file, a pipe nobody reads).
//!
//! Two ways to be full. The serial port is lossy: [`Output::push_lossy`]
//! keeps what fits and counts the rest as dropped (a stalled reader costs
//! the guest its console, not the host its control). A virtio-console
//! applies backpressure instead: [`Output::reserve`] says whether a whole
//! chain's worth of room is free, and when it is not the device stops
//! taking chains; the writer writes the [`Output::space_event`] eventfd
//! when room comes back, and the device resumes from it. So exec's
//! command output is never lost, and the event loop never waits.
//!
//! A sink that fails (the reader went away) is not written again: what
//! follows is consumed and discarded, so the guest never stalls on it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{Seccomp, ThreadKind};
use crate::sync::lock;
use crate::thread::{self, VmmThread};

/// Bytes the writer takes out of the buffer per write.
const WRITE_CHUNK: usize = 64 << 10;

/// The producer side of one output stream; clones share it.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    state: Mutex<State>,
    /// The writer waits here for data (or the end).
    data: Condvar,
    /// Written when room came back after [`Output::reserve`] found none.
    space: EventFd,
}

struct State {
    buf: VecDeque<u8>,
    cap: usize,
    /// Bytes refused because the buffer was full ([`Output::push_lossy`]).
    dropped: u64,
    /// Bytes discarded because the sink had failed.
    discarded: u64,
    /// The writer is waiting on [`Shared::data`].
    writer_idle: bool,
    /// A producer waits for this much room.
    want_space: Option<usize>,
    /// No more output: the writer ends once the buffer is empty.
    closing: bool,
    /// The sink failed; output is discarded from now on.
    failed: bool,
}

/// The writer thread of an [`Output`]. Dropping it ends the stream
/// without waiting (see [`Self::finish`]).
pub struct OutputWriter {
    output: Output,
    thread: Option<VmmThread<()>>,
}

impl Output {
    /// An empty buffer of `cap` bytes for the stream `name`; nothing is
    /// written until [`Self::start_writer`].
    pub fn new(name: &str, cap: usize) -> std::io::Result<Output> {
        Ok(Output {
            shared: Arc::new(Shared {
                name: name.to_string(),
                state: Mutex::new(State {
                    buf: VecDeque::new(),
                    cap,
                    dropped: 0,
                    discarded: 0,
                    writer_idle: false,
                    want_space: None,
                    closing: false,
                    failed: false,
                }),
                data: Condvar::new(),
                space: EventFd::new(EFD_NONBLOCK)?,
            }),
        })
    }

    /// Starts the thread `writer-<name>` that drains the buffer into
    /// `sink`, under the writer filter.
    pub fn start_writer(
        &self,
        sink: Box<dyn Write + Send>,
        seccomp: Seccomp,
    ) -> Result<OutputWriter, thread::Error> {
        let shared = self.shared.clone();
        let thread = thread::spawn(
            format!("writer-{}", self.shared.name),
            ThreadKind::Writer,
            seccomp,
            move || write_out(&shared, sink),
        )?;
        Ok(OutputWriter {
            output: self.clone(),
            thread: Some(thread),
        })
    }

    /// [`Self::new`] and [`Self::start_writer`] at once.
    pub fn spawn(
        name: &str,
        sink: Box<dyn Write + Send>,
        cap: usize,
        seccomp: Seccomp,
    ) -> Result<(Output, OutputWriter), thread::Error> {
        let output = Output::new(name, cap).map_err(thread::Error::Spawn)?;
        let writer = output.start_writer(sink, seccomp)?;
        Ok((output, writer))
    }

    /// Buffers what fits of `data`; the rest is dropped and counted.
    /// Never blocks.
    pub fn push_lossy(&self, data: &[u8]) {
        let mut s = lock(&self.shared.state);
        if s.failed {
            s.discarded += data.len() as u64;
            return;
        }
        let room = s.cap.saturating_sub(s.buf.len());
        let take = data.len().min(room);
        s.buf.extend(&data[..take]);
        s.dropped += (data.len() - take) as u64;
        self.wake_writer(s, take > 0);
    }

    /// Whether `need` bytes of room are free. If not, the
    /// [`Self::space_event`] is written once they are.
    pub fn reserve(&self, need: usize) -> bool {
        let mut s = lock(&self.shared.state);
        if s.failed || s.cap.saturating_sub(s.buf.len()) >= need {
            return true;
        }
        s.want_space = Some(need);
        false
    }

    /// Buffers all of `data` (after [`Self::reserve`]); never blocks.
    pub fn push(&self, data: &[u8]) {
        let mut s = lock(&self.shared.state);
        if s.failed {
            s.discarded += data.len() as u64;
            return;
        }
        s.buf.extend(data);
        self.wake_writer(s, !data.is_empty());
    }

    /// Wakes the writer if it sleeps, once: the serial port pushes a byte
    /// at a time, and until the writer runs again the next bytes need no
    /// wake-up of their own (measured in the rig before this: one futex
    /// wake per console byte).
    fn wake_writer(&self, mut s: std::sync::MutexGuard<'_, State>, added: bool) {
        let wake = added && s.writer_idle;
        if wake {
            s.writer_idle = false;
        }
        drop(s);
        if wake {
            self.shared.data.notify_one();
        }
    }

    /// Readable when room came back after [`Self::reserve`] refused.
    pub fn space_event(&self) -> &EventFd {
        &self.shared.space
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared.state).dropped
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        lock(&self.shared.state).buf.len()
    }
}

/// A never-blocking `Write` for devices that take one (the serial port):
/// every byte goes through [`Output::push_lossy`].
pub struct LossyWriter(pub Output);

impl Write for LossyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.push_lossy(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl OutputWriter {
    /// Ends the stream: the writer writes what is buffered and stops. Waits
    /// until `deadline` (`None`: as long as it takes) and returns whether
    /// everything was written; a writer still stuck on its sink then is
    /// left behind (the process ends it when it exits). Logs what was lost.
    pub fn finish(mut self, deadline: Option<Instant>) -> bool {
        self.close();
        let shared = &self.output.shared;
        let done = self.thread.take().map_or(true, |t| t.wait_until(deadline));
        let s = lock(&shared.state);
        if s.dropped > 0 {
            log::warn!(
                "{}: {} bytes of guest output were dropped: its reader did not keep up",
                shared.name,
                s.dropped
            );
        }
        if !done {
            log::warn!(
                "{}: {} bytes of guest output were not written: its reader is not reading",
                shared.name,
                s.buf.len()
            );
        }
        done
    }

    pub fn output(&self) -> &Output {
        &self.output
    }

    fn close(&self) {
        let shared = &self.output.shared;
        lock(&shared.state).closing = true;
        shared.data.notify_one();
    }
}

impl Drop for OutputWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's loop.
fn write_out(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(WRITE_CHUNK);
    loop {
        chunk.clear();
        let failed = {
            let mut s = lock(&shared.state);
            while s.buf.is_empty() && !s.closing {
                s.writer_idle = true;
                s = match shared.data.wait(s) {
                    Ok(g) => g,
                    Err(e) => e.into_inner(),
                };
                s.writer_idle = false;
            }
            if s.buf.is_empty() {
                break;
            }
            let n = s.buf.len().min(WRITE_CHUNK);
            chunk.extend(s.buf.drain(..n));
            if let Some(need) = s.want_space {
                if s.cap.saturating_sub(s.buf.len()) >= need {
                    s.want_space = None;
                    let _ = shared.space.write(1);
                }
            }
            s.failed
        };
        if failed {
            continue;
        }
        if let Err(e) = sink.write_all(&chunk).and_then(|()| sink.flush()) {
            let mut s = lock(&shared.state);
            log::warn!("{}: output dropped from now on: {e}", shared.name);
            s.failed = true;
            s.discarded += (chunk.len() + s.buf.len()) as u64;
            s.buf.clear();
            if s.want_space.take().is_some() {
                let _ = shared.space.write(1);
            }
        }
    }
    let _ = sink.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::testutil::Shared;

    /// A sink that blocks until the gate opens: a reader that never reads.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>, Shared);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, cv) = &*self.0;
            let mut open = lock(m);
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn stalled() -> (Stalled, Arc<(Mutex<bool>, Condvar)>, Shared) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Shared::default();
        (Stalled(gate.clone(), out.clone()), gate, out)
    }

    fn open(gate: &(Mutex<bool>, Condvar)) {
        *lock(&gate.0) = true;
        gate.1.notify_all();
    }

    #[test]
    fn everything_reaches_the_sink_in_order() {
        let sink = Shared::default();
        let (out, writer) =
            Output::spawn("t", Box::new(sink.clone()), 1 << 20, Seccomp::Off).unwrap();
        let data: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            out.push(piece);
        }
        assert!(writer.finish(None));
        assert_eq!(*lock(&sink.0), data);
    }

    #[test]
    fn a_stalled_reader_drops_serial_output_without_blocking() {
        let (sink, gate, seen) = stalled();
        let (out, writer) = Output::spawn("serial", Box::new(sink), 1000, Seccomp::Off).unwrap();
        let mut w = LossyWriter(out.clone());
        let start = Instant::now();
        for _ in 0..100_000 {
            w.write_all(b"x").unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        // The writer holds at most one chunk, the buffer 1000 bytes.
        let kept = 100_000 - out.dropped();
        assert!((1000..=2000).contains(&kept), "{kept}");
        // The reader never reads: finishing gives up at the deadline.
        let t = Instant::now();
        assert!(!writer.finish(Some(Instant::now() + Duration::from_millis(100))));
        assert!(t.elapsed() < Duration::from_millis(500));
        open(&gate);
        let _ = seen;
    }

    #[test]
    fn backpressure_signals_room_when_the_writer_drains() {
        let (sink, gate, seen) = stalled();
        let (out, writer) = Output::spawn("hvc0", Box::new(sink), 100, Seccomp::Off).unwrap();
        assert!(out.reserve(60));
        out.push(&[1; 60]);
        // The writer takes those 60 into its chunk and blocks on the sink.
        while out.pending() > 0 {
            std::thread::yield_now();
        }
        assert!(out.reserve(60));
        out.push(&[2; 60]);
        assert!(!out.reserve(60), "40 bytes free");
        assert!(out.space_event().read().is_err(), "no room signalled yet");
        open(&gate);
        // The writer drains: room comes back and is signalled.
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(out.space_event()),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        assert!(out.reserve(60));
        assert!(writer.finish(None));
        assert_eq!(lock(&seen.0).len(), 120);
        assert_eq!(out.dropped(), 0);
    }

    #[test]
    fn a_failed_sink_discards_and_never_stalls() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (out, writer) = Output::spawn("t", Box::new(Broken), 10, Seccomp::Off).unwrap();
        out.push(&[0; 10]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lock(&out.shared.state).failed {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        for _ in 0..100 {
            assert!(out.reserve(10), "a failed sink always has room");
            out.push(&[0; 10]);
        }
        assert!(writer.finish(None));
    }
}
