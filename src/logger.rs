//! A minimal `log` backend: `kvmini: LEVEL: message` on stderr, with the
//! level from `--log-level` or `RUST_LOG` (default `warn`).
//!
//! Messages never wait long for a reader: with stderr on a pipe nobody
//! reads (`kvmini run 2>&1 | sleep 600`), a message waits at most
//! [`STDERR_WAIT`] for room and is dropped otherwise, and once one was, the
//! rest are dropped without waiting, so a stalled reader cannot keep a VMM
//! thread, or kvmini's exit after SIGTERM, waiting.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one message waits for room on stderr.
pub const STDERR_WAIT: Duration = Duration::from_millis(100);

/// Set once stderr had no room for a message in [`STDERR_WAIT`].
static STDERR_STALLED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stderr if it takes it within [`STDERR_WAIT`] (messages
/// are short: a pipe with room for one takes it whole); else drops it.
pub fn stderr_text(text: &str) {
    if STDERR_STALLED.load(Ordering::Relaxed) {
        return;
    }
    let mut pfd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, STDERR_WAIT.as_millis() as libc::c_int) };
    if ready == 0 {
        STDERR_STALLED.store(true, Ordering::Relaxed);
        return;
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // In raw terminal mode "\n" does not return the carriage.
            stderr_text(&format!(
                "kvmini: {}: {}\r\n",
                record.level().as_str().to_lowercase(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}

/// Parses a level name; `None` if it is not one.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    s.trim().parse().ok()
}

/// Installs the logger. `level` wins over `RUST_LOG`; an invalid level is
/// an error the caller reports.
pub fn init(level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(l) => parse_level(l).ok_or_else(|| {
            format!("invalid --log-level '{l}': use off, error, warn, info, debug or trace")
        })?,
        None => std::env::var("RUST_LOG")
            .ok()
            .and_then(|l| parse_level(&l))
            .unwrap_or(LevelFilter::Warn),
    };
    static LOGGER: StderrLogger = StderrLogger;
    log::set_logger(&LOGGER).map_err(|e| e.to_string())?;
    log::set_max_level(filter);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARN"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
