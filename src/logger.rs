//! A minimal `log` backend: `kvmini: LEVEL: message` on stderr, with the
//! level from `--log-level` or `RUST_LOG` (default `warn`).

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            // In raw terminal mode "\n" does not return the carriage.
            let _ = write!(
                std::io::stderr().lock(),
                "kvmini: {}: {}\r\n",
                record.level().as_str().to_lowercase(),
                record.args()
            );
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
