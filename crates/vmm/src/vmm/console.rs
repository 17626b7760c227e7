//! The host side of the guest console: where output goes, raw mode for an
//! interactive terminal (restored on every exit path), and host signals
//! turned into a clean VM stop (for a guest with ACPI, first a press of its
//! power button).

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::terminal::Terminal;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::ConsoleConfig;
use crate::exit::{ExitSignal, VmExit};

/// Opens where guest console output goes. Output is unbuffered: the guest
/// writes a byte per port access, and a prompt must show before a newline.
pub fn output(console: &ConsoleConfig) -> io::Result<Box<dyn Write + Send>> {
    Ok(match console {
        ConsoleConfig::Stdout => Box::new(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
        ConsoleConfig::File(path) => Box::new(File::create(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create console file '{}': {e}", path.display()),
            )
        })?),
        ConsoleConfig::None => Box::new(io::sink()),
    })
}

/// Standard input as an unbuffered file, or `None` if it is closed.
pub fn input() -> Option<File> {
    io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(File::from)
}

/// Whether the console is a person at a terminal: then input is raw and
/// the Ctrl-A escape is active.
pub fn interactive(console: &ConsoleConfig) -> bool {
    *console == ConsoleConfig::Stdout && io::stdin().is_terminal()
}

fn restore_terminal() {
    let _ = io::stdin().lock().set_canon_mode();
}

/// Puts the terminal in raw mode while alive; restores it on drop and on
/// panic (release builds abort on panic, so a destructor alone is not enough).
pub struct RawTerminal(());

impl RawTerminal {
    pub fn enter() -> io::Result<Self> {
        io::stdin()
            .lock()
            .set_raw_mode()
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        Ok(Self(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The eventfd the signal handler writes; -1 until installed.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; `fd` is an eventfd that the
        // `HostSignals` subscriber keeps open for the life of the process
        // (it is never closed once published here), and the buffer is a
        // valid 8-byte local.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Records `sig` as the last signal, as the handler does (tests).
#[cfg(test)]
pub fn set_last_signal(sig: i32) {
    LAST_SIGNAL.store(sig, Ordering::SeqCst);
}

/// What SIGTERM does to a guest that can shut down by itself.
pub struct GracefulStop {
    /// Presses the guest's power button if it has one (it runs ACPI), for
    /// the given signal; false when it has none.
    pub press: Box<dyn FnMut(i32) -> bool + Send>,
    /// How long the guest gets before it is killed.
    pub timeout: Duration,
}

/// Turns SIGTERM, SIGINT and SIGHUP into a clean VM stop, so in-flight work
/// finishes and the terminal is restored. With a [`GracefulStop`], the first
/// SIGTERM asks the guest to shut down instead (ACPI power button) and
/// stops it only after the timeout or a second SIGTERM/SIGINT.
///
/// The handlers last as long as this value: dropping it puts back what
/// was there before (the default: the signal ends the process), so once
/// the VM has stopped, Ctrl-C works on what the caller does next (exec's
/// share copy-back).
pub struct HostSignals {
    evt: EventFd,
    exit: Arc<ExitSignal>,
    graceful: Option<GracefulStop>,
    timer: TimerFd,
    /// The signal that pressed the power button, once it has.
    pressed_by: Option<i32>,
    /// The actions our handlers replaced, put back on drop.
    replaced: Vec<(i32, libc::sigaction)>,
}

impl HostSignals {
    pub fn install(exit: Arc<ExitSignal>, graceful: Option<GracefulStop>) -> io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        let timer = TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // Published for the handler; this duplicate is deliberately leaked so
        // the handler never writes to a closed (or reused) descriptor.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(evt.try_clone()?);
        SIGNAL_FD.store(fd, Ordering::SeqCst);
        let mut replaced = Vec::new();
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
            // value.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = on_signal as extern "C" fn(_, _, _) as libc::sighandler_t;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: both structures are valid for the call; `on_signal`
            // only makes async-signal-safe calls.
            if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
                let e = io::Error::last_os_error();
                restore(&replaced);
                return Err(e);
            }
            replaced.push((sig, old));
        }
        Ok(Self {
            evt,
            exit,
            graceful,
            timer,
            pressed_by: None,
            replaced,
        })
    }

    /// A HostSignals with no handlers installed, and the eventfd the
    /// handler would write (a signal stand-in), for tests.
    #[cfg(test)]
    pub fn for_test(exit: Arc<ExitSignal>, graceful: Option<GracefulStop>) -> (Self, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let stand_in = evt.try_clone().unwrap();
        let s = Self {
            evt,
            exit,
            graceful,
            timer: TimerFd::new().unwrap(),
            pressed_by: None,
            replaced: Vec::new(),
        };
        (s, stand_in)
    }

    /// One signal (or `count` of them since the last look) arrived.
    fn on_signal(&mut self, sig: i32, count: u64) {
        if self.pressed_by.is_none() && count == 1 && sig == libc::SIGTERM {
            if let Some(g) = self.graceful.as_mut().filter(|g| !g.timeout.is_zero()) {
                if (g.press)(sig) {
                    let timeout = g.timeout;
                    match self.timer.reset(timeout, None) {
                        Ok(()) => {
                            self.pressed_by = Some(sig);
                            log::warn!(
                                "signal {sig}: pressed the guest's ACPI power button; waiting up \
                                 to {}s for it to shut down (--shutdown-timeout; SIGTERM or \
                                 SIGINT again stops it now)",
                                timeout.as_secs()
                            );
                            return;
                        }
                        Err(e) => log::warn!("cannot arm the shutdown timer ({e}); stopping now"),
                    }
                }
            }
        }
        self.exit.raise(VmExit::HostSignal(sig));
    }

    /// The guest had `--shutdown-timeout` to shut down and did not.
    fn on_timeout(&mut self) {
        if let (Some(signal), Some(g)) = (self.pressed_by, &self.graceful) {
            self.exit.raise(VmExit::ShutdownTimedOut {
                signal,
                after: g.timeout,
            });
        }
    }
}

/// Puts back the signal actions `replaced` holds.
fn restore(replaced: &[(i32, libc::sigaction)]) {
    for (sig, old) in replaced {
        // SAFETY: `old` is the action sigaction(2) returned for `sig`.
        unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
    }
}

impl Drop for HostSignals {
    fn drop(&mut self) {
        restore(&self.replaced);
    }
}

impl MutEventSubscriber for HostSignals {
    fn process(&mut self, events: Events, _: &mut EventOps) {
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            self.on_timeout();
            return;
        }
        let count = self.evt.read().unwrap_or(1);
        self.on_signal(LAST_SIGNAL.load(Ordering::SeqCst), count);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.evt.as_raw_fd(), self.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, 0, EventSet::IN)) {
                log::error!("cannot watch for host signals: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// HostSignals without installing handlers; `acpi`: whether the guest
    /// has a power button. Returns it, the exit signal and the press count.
    fn signals(acpi: bool, timeout: u64) -> (HostSignals, Arc<ExitSignal>, Arc<AtomicUsize>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let presses = Arc::new(AtomicUsize::new(0));
        let p = presses.clone();
        let graceful = GracefulStop {
            press: Box::new(move |_| {
                p.fetch_add(1, Ordering::SeqCst);
                acpi
            }),
            timeout: Duration::from_secs(timeout),
        };
        let s = HostSignals {
            evt: EventFd::new(EFD_NONBLOCK).unwrap(),
            exit: exit.clone(),
            graceful: Some(graceful),
            timer: TimerFd::new().unwrap(),
            pressed_by: None,
            replaced: Vec::new(),
        };
        (s, exit, presses)
    }

    /// The action installed for `sig` now.
    fn action(sig: i32) -> libc::sighandler_t {
        // SAFETY: a zeroed sigaction is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying only (no new action); `old` is valid.
        let rc = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0);
        old.sa_sigaction
    }

    #[test]
    fn the_handlers_go_when_the_vm_stops_so_ctrl_c_works_again() {
        let _turn = crate::sync::lock(&crate::stop::SIGNAL_TESTS);
        let before: Vec<_> = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP]
            .map(action)
            .to_vec();
        let exit = Arc::new(ExitSignal::new().unwrap());
        let signals = HostSignals::install(exit, None).unwrap();
        let ours = on_signal as extern "C" fn(_, _, _) as libc::sighandler_t;
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            assert_eq!(action(sig), ours);
        }
        drop(signals);
        let after: Vec<_> = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP]
            .map(action)
            .to_vec();
        assert_eq!(after, before, "the previous actions are back");
    }

    #[test]
    fn sigterm_presses_the_button_and_a_second_signal_stops_at_once() {
        let (mut s, exit, presses) = signals(true, 30);
        s.on_signal(libc::SIGTERM, 1);
        assert!(!exit.is_raised(), "the guest gets time to shut down");
        assert_eq!(presses.load(Ordering::SeqCst), 1);
        s.on_signal(libc::SIGINT, 1);
        assert_eq!(exit.reason(), Some(VmExit::HostSignal(libc::SIGINT)));
        assert_eq!(presses.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_timeout_stops_a_guest_that_did_not_shut_down() {
        let (mut s, exit, _) = signals(true, 30);
        s.on_timeout();
        assert!(
            !exit.is_raised(),
            "no button pressed yet: nothing to time out"
        );
        s.on_signal(libc::SIGTERM, 1);
        s.on_timeout();
        assert_eq!(
            exit.reason(),
            Some(VmExit::ShutdownTimedOut {
                signal: libc::SIGTERM,
                after: Duration::from_secs(30)
            })
        );
    }

    #[test]
    fn guests_without_acpi_and_other_signals_stop_at_once() {
        let (mut s, exit, presses) = signals(false, 30);
        s.on_signal(libc::SIGTERM, 1);
        assert_eq!(exit.reason(), Some(VmExit::HostSignal(libc::SIGTERM)));
        assert_eq!(presses.load(Ordering::SeqCst), 1);
        for (sig, count, timeout) in [
            (libc::SIGINT, 1, 30),
            (libc::SIGHUP, 1, 30),
            (libc::SIGTERM, 2, 30),
            (libc::SIGTERM, 1, 0),
        ] {
            let (mut s, exit, presses) = signals(true, timeout);
            s.on_signal(sig, count);
            assert_eq!(
                exit.reason(),
                Some(VmExit::HostSignal(sig)),
                "{sig} x{count}"
            );
            assert_eq!(presses.load(Ordering::SeqCst), 0);
        }
    }
}
