//! The host side of the guest console: where output goes, raw mode for an
//! interactive terminal (restored on every exit path), and host signals
//! turned into a clean VM stop.

use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;
use vmm_sys_util::terminal::Terminal;

use super::exit::{ExitSignal, VmExit};
use crate::config::ConsoleConfig;

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

/// Turns SIGTERM, SIGINT and SIGHUP into a clean VM stop, so in-flight work
/// finishes and the terminal is restored.
pub struct HostSignals {
    evt: EventFd,
    exit: Arc<ExitSignal>,
}

impl HostSignals {
    pub fn install(exit: Arc<ExitSignal>) -> io::Result<Self> {
        let evt = EventFd::new(EFD_NONBLOCK)?;
        // Published for the handler; this duplicate is deliberately leaked so
        // the handler never writes to a closed (or reused) descriptor.
        let fd = std::os::fd::IntoRawFd::into_raw_fd(evt.try_clone()?);
        SIGNAL_FD.store(fd, Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            register_signal_handler(sig, on_signal)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt, exit })
    }
}

impl MutEventSubscriber for HostSignals {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.evt.read();
        self.exit
            .raise(VmExit::HostSignal(LAST_SIGNAL.load(Ordering::SeqCst)));
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("cannot watch for host signals: {e}");
        }
    }
}
