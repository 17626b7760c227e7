//! What both QEMU-driven engines share: the emulated machine
//! ([`crate::emulated`]: kvmini nested in QEMU TCG) and the direct
//! software-CPU engine ([`crate::tcg`]: QEMU TCG runs the guest). Starting
//! QEMU so it dies with us ([`command`]), watching it until it exits, a
//! deadline passes or a check asks to stop it ([`supervise`]), exec's
//! streams out of QEMU's serial ports (sockets for the emulated machine's
//! generic ports, [`streams`]; files for the direct engine's consoles,
//! [`files`]), and the terminal put back if QEMU dies without restoring
//! it.

pub mod files;
pub mod streams;
pub mod supervise;

/// A writer the streams' and files' tests can look into.
#[cfg(test)]
pub(crate) mod test_sink {
    use std::io::{self, Write};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub struct Shared(pub Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

use std::io::{self, IsTerminal};
use std::os::unix::io::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};

use crate::stop;

/// The QEMU binary both engines run (Debian's qemu-system-x86).
pub const QEMU: &str = "qemu-system-x86_64";

/// A `qemu-system-x86_64` command that is killed (SIGTERM) when we die,
/// even by SIGKILL: no orphaned machine keeps the user's disks.
pub fn command() -> Command {
    let mut q = Command::new(QEMU);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe
    // and touches no memory of the parent.
    unsafe {
        q.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    q
}

/// Lets `qemu` inherit `fds` (made close-on-exec by std), so that its
/// arguments can name them (`addr.type=fd`).
pub fn inherit_fds(qemu: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe,
    // on descriptors the child inherited; it reads the Vec allocated
    // before the fork and allocates nothing.
    unsafe {
        qemu.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Starts `qemu` and registers it as the child a SIGINT/SIGTERM/SIGHUP of
/// ours is passed on to ([`crate::stop`]); call `stop::set_child(0)` once
/// it is reaped.
pub fn spawn(qemu: &mut Command) -> io::Result<Child> {
    let child = qemu.spawn()?;
    stop::set_child(child.id() as i32);
    if stop::signalled().is_some() {
        // The signal came while we were spawning; the handler missed QEMU.
        // SAFETY: the child is not reaped yet, so the pid is still QEMU's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    Ok(child)
}

/// QEMU's `-chardev`/`-drive` option value quoting: commas are doubled.
pub fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// How a process ended, for messages.
pub fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Saves the terminal settings of stdin and puts them back on drop, in case
/// QEMU dies without restoring them itself.
pub struct SavedTerminal(Option<libc::termios>);

impl SavedTerminal {
    pub fn save() -> Self {
        if !io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (it is a terminal) and `t` is a valid termios.
        let ok = unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0;
        Self(ok.then_some(t))
    }
}

impl Drop for SavedTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: `t` came from tcgetattr on the same fd 0.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_paths_escape_commas() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }
}
