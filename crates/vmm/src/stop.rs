//! A clean stop on SIGINT, SIGTERM or SIGHUP for the long-running commands
//! that own things to undo (the emulated machine's QEMU, `kvmini bench`'s
//! TAPs, veths and scratch files): the handler only records the signal and
//! tells one registered child to quit; the code checks [`signalled`] and
//! returns through its normal clean-up, then exits 128 + signal.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

/// A signal we were sent; 0 if none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// A child process to SIGTERM when a signal comes, else 0.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: libc::c_int) {
    SIGNAL.store(num, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; `pid` is a child of ours
        // that is not reaped (so the pid is not reused) until it has been
        // unregistered with `set_child(0)`.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP.
pub fn install() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        // SAFETY: `act` is fully initialised and `on_signal` only does
        // async-signal-safe work; the old action is not needed.
        if unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Registers the child to SIGTERM on a signal (0: none). Unregister before
/// reaping it.
pub fn set_child(pid: i32) {
    CHILD.store(pid, Ordering::SeqCst);
}

/// The exit code for the signal received (128 + its number), if any.
pub fn signalled() -> Option<u8> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(128u8.saturating_add(s as u8)),
    }
}

/// Tests that install signal handlers or send signals to this process
/// take turns.
#[cfg(test)]
pub static SIGNAL_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_is_recorded_and_stops_the_registered_child() {
        let _turn = crate::sync::lock(&SIGNAL_TESTS);
        install().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        set_child(child.id() as i32);
        // SAFETY: signalling our own process; the handler is installed.
        unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
        let status = child.wait().unwrap();
        set_child(0);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!(signalled(), Some(128 + libc::SIGHUP as u8));
    }
}
