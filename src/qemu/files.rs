//! `kvmini exec`'s streams out of the direct engine's QEMU: each
//! virtio-console port writes to a file (`-chardev file`) that one thread
//! of ours follows, copying what arrives to its destination (our stdout,
//! stderr, the exit-status channel, the share archive's spool).
//!
//! Not sockets: QEMU drops a virtio-console's data when its backend cannot
//! take it at once (`virtio-console.c`: consoles are never throttled,
//! unlike generic ports), and a socket is full after a few hundred small
//! writes (each line of a line-buffered command is one), so a copier that
//! was not scheduled for some milliseconds lost output. A write to a file
//! always completes, and the guest's console write returns only once QEMU
//! made it: everything the guest wrote is in the files when QEMU exits.
//! The cost: the guest never waits for a slow reader; what the reader has
//! not taken yet waits in the file (TMPDIR), and what it took is punched
//! out of the file, so the disk holds only the reader's lag.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::qemu_path;
use super::streams::Sink;

/// How often an idle follower looks for more.
const POLL: Duration = Duration::from_millis(5);
/// Bytes taken by the reader before their part of the file is freed.
const PUNCH_EVERY: u64 = 1 << 20;

/// The files, created empty, and their destinations.
pub struct Files(Vec<(File, Sink)>);

/// The follower threads of running streams.
pub struct Following {
    /// Set once QEMU exited: a follower then reads to the end and stops.
    done: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Files {
    /// Creates `DIR/NAME.out` for each `(NAME, sink)` and adds its chardev
    /// (id NAME, appending) to `qemu`.
    pub fn create(dir: &Path, qemu: &mut Command, sinks: Vec<(&str, Sink)>) -> io::Result<Self> {
        let mut files = Vec::new();
        for (name, to) in sinks {
            let path = dir.join(format!("{name}.out"));
            // Read and write: a follower frees what it copied (fallocate).
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create '{}': {e}", path.display()))
                })?;
            qemu.arg("-chardev").arg(format!(
                "file,id={name},path={},append=on",
                qemu_path(&path)
            ));
            files.push((file, to));
        }
        Ok(Self(files))
    }

    /// One thread per file: copy what QEMU appends until [`Following::finish`].
    pub fn follow(self) -> Following {
        let done = Arc::new(AtomicBool::new(false));
        let threads = self
            .0
            .into_iter()
            .map(|(file, to)| {
                let done = done.clone();
                thread::spawn(move || follow(file, to, &done))
            })
            .collect();
        Following { done, threads }
    }
}

fn follow(mut file: File, mut to: Sink, done: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    let (mut taken, mut punched) = (0u64, 0u64);
    let mut broken = false;
    loop {
        // Checked before the read: once QEMU exited, whatever it wrote is
        // in the file, so a read after that finds nothing only at the end.
        let finished = done.load(Ordering::SeqCst);
        match file.read(&mut buf) {
            Ok(0) if finished => break,
            Ok(0) => thread::sleep(POLL),
            Ok(n) => {
                if !broken {
                    if let Err(e) = to.write_all(&buf[..n]) {
                        // The rest is read and dropped, so the file
                        // does not grow for nothing.
                        log::warn!("kvmini exec: output stream: {e}");
                        broken = true;
                    }
                }
                taken += n as u64;
                if taken - punched >= PUNCH_EVERY {
                    let upto = taken & !4095;
                    punch(&file, punched, upto - punched);
                    punched = upto;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("kvmini exec: output stream: cannot read QEMU's file: {e}");
                break;
            }
        }
    }
    let _ = to.flush();
}

/// Frees `len` bytes of `file` from `offset` (already copied); the file
/// keeps its size, QEMU goes on appending. Where the file system cannot,
/// the file keeps them (it is removed with the run's directory).
fn punch(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: fallocate(2) on a descriptor we own; it touches no memory
    // of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if r != 0 {
        log::debug!(
            "cannot free the copied part of an exec stream file: {}",
            io::Error::last_os_error()
        );
    }
}

impl Following {
    /// Once QEMU has exited: lets every follower copy the rest, waiting
    /// for them until `deadline` (`None`: as long as the destinations
    /// take, as when the guest stopped by itself). With a deadline (the
    /// user stopped the VM: a signal, `--timeout`) a follower still
    /// writing to a reader that does not read is left behind, as kvmini's
    /// own VMM leaves its output writers (`vmm::FLUSH_AFTER_STOP`), and
    /// ends with the process; returns whether every stream was copied.
    pub fn finish(self, deadline: Option<Instant>) -> bool {
        self.done.store(true, Ordering::SeqCst);
        let mut all = true;
        for t in self.threads {
            if let Some(d) = deadline {
                while !t.is_finished() && Instant::now() < d {
                    thread::sleep(Duration::from_millis(5));
                }
                if !t.is_finished() {
                    log::warn!(
                        "kvmini exec: a reader did not take the rest of an output stream in \
                         time after the stop; it is dropped"
                    );
                    all = false;
                    continue;
                }
            }
            let _ = t.join();
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::qemu::test_sink::Shared;

    fn appender(dir: &Path, name: &str) -> File {
        OpenOptions::new()
            .append(true)
            .open(dir.join(format!("{name}.out")))
            .unwrap()
    }

    #[test]
    fn every_byte_appended_arrives_in_order_and_is_freed_behind() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmini-files.").unwrap();
        let (a, b) = (Shared::default(), Shared::default());
        let mut cmd = Command::new("true");
        let files = Files::create(
            dir.as_path(),
            &mut cmd,
            vec![("one", Box::new(a.clone())), ("two", Box::new(b.clone()))],
        )
        .unwrap();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "-chardev");
        assert!(args[1].starts_with("file,id=one,path=") && args[1].ends_with("one.out,append=on"));
        let following = files.follow();
        // Many small writes, as QEMU makes for a line-buffered command,
        // with no pause for the follower: 3 MiB, past the punch size.
        let mut q = appender(dir.as_path(), "one");
        let mut expected = Vec::new();
        for i in 0..300_000u32 {
            let line = format!("{i:09}\n");
            q.write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        appender(dir.as_path(), "two")
            .write_all(b"\0\r\nlast")
            .unwrap();
        // QEMU exited: the followers read the rest.
        assert!(following.finish(None));
        assert!(*a.0.lock().unwrap() == expected, "stream one differs");
        assert_eq!(&*b.0.lock().unwrap(), b"\0\r\nlast");
        // What was copied was freed (where tmpfs or the file system can).
        let meta = std::fs::metadata(dir.as_path().join("one.out")).unwrap();
        assert_eq!(meta.len(), expected.len() as u64);
        use std::os::unix::fs::MetadataExt;
        let kept = meta.blocks() * 512;
        assert!(
            kept < meta.len(),
            "the copied part was not freed: {kept} of {} bytes kept (a file system in \
             /tmp without FALLOC_FL_PUNCH_HOLE?)",
            meta.len()
        );
    }

    /// A destination that never takes a byte: a reader that does not read.
    struct Stalled(Arc<std::sync::Barrier>);

    impl Write for Stalled {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0.wait();
            thread::sleep(Duration::from_secs(600));
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_stop_a_stalled_reader_is_left_behind_at_the_deadline() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmini-files.").unwrap();
        let writing = Arc::new(std::sync::Barrier::new(2));
        let files = Files::create(
            dir.as_path(),
            &mut Command::new("true"),
            vec![("out", Box::new(Stalled(writing.clone())))],
        )
        .unwrap();
        let following = files.follow();
        appender(dir.as_path(), "out")
            .write_all(b"never taken")
            .unwrap();
        // The follower is in its destination's write, for 10 minutes.
        writing.wait();
        let start = Instant::now();
        assert!(!following.finish(Some(Instant::now() + Duration::from_millis(200))));
        // It waited for the deadline; an upper bound would only measure
        // this host's load.
        assert!(start.elapsed() >= Duration::from_millis(200));
    }
}
