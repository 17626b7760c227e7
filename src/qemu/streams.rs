//! `kvmini exec`'s streams out of a QEMU machine: one Unix socket per
//! stream, which QEMU connects to as the backend (`-chardev socket`) of one
//! of its virtio-serial ports, and one thread per socket that copies what
//! comes to its destination (our stdout, stderr, the exit-status channel,
//! the share archive's spool) until QEMU closes it. Which port each
//! chardev backs is the engine's business: it adds its own `-device`s.
//! The emulated machine's generic `virtserialport`s wait for a full socket;
//! QEMU's consoles would drop the data instead, so the direct engine's go
//! to files ([`super::files`]).

use std::io::{self, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use super::qemu_path;

/// Where one stream's bytes go.
pub type Sink = Box<dyn Write + Send>;

struct Stream {
    listener: UnixListener,
    path: PathBuf,
    to: Sink,
}

/// Bound sockets, not yet accepted.
pub struct Streams(Vec<Stream>);

/// The copy threads of running streams.
pub struct Copying(Vec<(PathBuf, thread::JoinHandle<()>)>);

impl Streams {
    /// Binds `DIR/NAME.sock` for each `(NAME, sink)` and adds its chardev
    /// (id NAME) to `qemu`.
    pub fn listen(dir: &Path, qemu: &mut Command, sinks: Vec<(&str, Sink)>) -> io::Result<Self> {
        let mut streams = Vec::new();
        for (name, to) in sinks {
            let path = dir.join(format!("{name}.sock"));
            let listener = UnixListener::bind(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot bind '{}': {e}", path.display()))
            })?;
            qemu.arg("-chardev")
                .arg(format!("socket,id={name},path={}", qemu_path(&path)));
            streams.push(Stream { listener, path, to });
        }
        Ok(Self(streams))
    }

    /// One thread per stream: accept QEMU's connection, copy until it
    /// closes (QEMU exits).
    pub fn copy(self) -> Copying {
        Copying(
            self.0
                .into_iter()
                .map(
                    |Stream {
                         listener,
                         path,
                         mut to,
                     }| {
                        let copier = thread::spawn(move || {
                            if let Ok((mut s, _)) = listener.accept() {
                                if let Err(e) = io::copy(&mut s, &mut to) {
                                    log::warn!("kvmini exec: output stream: {e}");
                                }
                                let _ = to.flush();
                            }
                        });
                        (path, copier)
                    },
                )
                .collect(),
        )
    }
}

impl Copying {
    /// Once QEMU has exited: waits until every stream is copied. A socket
    /// QEMU never connected to (it failed before) gets an empty connection
    /// of ours, so no copier waits forever.
    pub fn finish(self) {
        for (path, copier) in self.0 {
            if !copier.is_finished() {
                drop(UnixStream::connect(&path));
            }
            let _ = copier.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::qemu::test_sink::Shared;

    #[test]
    fn copies_each_stream_and_never_waits_for_a_missing_peer() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmini-streams.").unwrap();
        let (a, b) = (Shared::default(), Shared::default());
        let mut cmd = Command::new("true");
        let streams = Streams::listen(
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
        assert!(args[1].starts_with("socket,id=one,path=") && args[1].ends_with("one.sock"));
        let copying = streams.copy();
        let mut s = UnixStream::connect(dir.as_path().join("one.sock")).unwrap();
        s.write_all(b"bytes\0\r\n").unwrap();
        drop(s);
        // Nobody connects to "two": finish must still return.
        copying.finish();
        assert_eq!(&*a.0.lock().unwrap(), b"bytes\0\r\n");
        assert!(b.0.lock().unwrap().is_empty());
    }
}
