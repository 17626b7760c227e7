//! Why the direct engine's guest stopped, told from what QEMU leaves: its
//! exit status, the console it logged (a kernel panic's "Kernel panic - not
//! syncing", the multiplexer's "QEMU: Terminated" after Ctrl-A x) and its
//! CPU-reset log ("Triple fault"). QEMU exits 0 on all of these, and on a
//! guest reset or power-off (`-no-reboot`): the logs tell them apart. The
//! answer is a [`VmExit`], so `run` and `exec` map it to their exit codes
//! as they do for kvmini's own VMM.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::capture::Tail;
use crate::exit::VmExit;
use crate::qemu::supervise::{Ended, Liveness};

/// What the kernel prints when it panics.
const PANIC: &str = "Kernel panic - not syncing";
/// What QEMU's console multiplexer prints on Ctrl-A x.
const USER_QUIT: &str = "QEMU: Terminated";
/// What QEMU logs (`-d cpu_reset`) when the guest triple-faults.
const TRIPLE_FAULT: &str = "Triple fault";

/// How long a panicked guest gets to reboot by itself (`panic=N`) before
/// QEMU is stopped: with `panic=0` it would hang forever.
const PANIC_GRACE: Duration = Duration::from_secs(5);

/// Follows the console log while QEMU runs: keeps its tail and notices a
/// panic; as a [`Liveness`] check it stops a guest that hangs after one.
pub struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    tail: Tail,
    /// The tail of what was read, with room for a marker cut in two.
    recent: String,
    panic: Option<(String, Instant)>,
    quit: bool,
}

impl ConsoleWatch {
    pub fn new(path: PathBuf, tail: Tail) -> Self {
        Self {
            path,
            offset: 0,
            tail,
            recent: String::new(),
            panic: None,
            quit: false,
        }
    }

    /// Reads what the console log gained since the last call.
    pub fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut new = Vec::new();
        if f.read_to_end(&mut new).is_err() || new.is_empty() {
            return;
        }
        self.offset += new.len() as u64;
        let _ = self.tail.write_all(&new);
        self.recent.push_str(&String::from_utf8_lossy(&new));
        if self.panic.is_none() {
            if let Some(at) = self.recent.find(PANIC) {
                let line = self.recent[at..].lines().next().unwrap_or(PANIC);
                self.panic = Some((line.trim_end().to_string(), Instant::now()));
            }
        }
        self.quit |= self.recent.contains(USER_QUIT);
        // Keep only enough to find a marker split across two reads.
        if self.recent.len() > 4096 {
            let mut cut = self.recent.len() - 256;
            while !self.recent.is_char_boundary(cut) {
                cut += 1;
            }
            self.recent.drain(..cut);
        }
    }

    /// The panic line, if the guest panicked.
    pub fn panic(&self) -> Option<&str> {
        self.panic.as_ref().map(|(l, _)| l.as_str())
    }

    /// The multiplexer said Ctrl-A x was typed.
    pub fn user_quit(&self) -> bool {
        self.quit
    }
}

impl Liveness for ConsoleWatch {
    fn stopped(&mut self) -> bool {
        self.poll();
        self.panic
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() > PANIC_GRACE)
    }
}

/// Whether QEMU's reset log records a triple fault.
pub fn triple_faulted(resets: &Path) -> bool {
    std::fs::read(resets)
        .map(|b| String::from_utf8_lossy(&b).contains(TRIPLE_FAULT))
        .unwrap_or(false)
}

/// What ended a run whose QEMU exited 0 or was stopped by us; `signal`: the
/// host signal we got (passed on to QEMU), `timeout`: the run's limit.
pub fn exit(
    ended: Ended,
    signal: Option<i32>,
    timeout: Option<Duration>,
    console: &ConsoleWatch,
    triple_fault: bool,
) -> VmExit {
    if let Some(s) = signal {
        return VmExit::HostSignal(s);
    }
    if let Some(line) = console.panic() {
        return VmExit::GuestPanic(line.to_string());
    }
    if triple_fault {
        return VmExit::GuestCrash {
            cpu: 0,
            detail: "the guest triple-faulted (QEMU TCG reset it; is the kernel built for \
                     x86_64?)"
                .into(),
        };
    }
    match ended {
        Ended::TimedOut => VmExit::TimedOut(timeout.unwrap_or_default()),
        _ if console.user_quit() => VmExit::UserQuit,
        // -no-reboot: a reset and a power-off both end QEMU with 0.
        _ => VmExit::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch_of(text: &[&str]) -> (ConsoleWatch, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "kvmini-tcg-verdict.{}.{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, "").unwrap();
        let mut w = ConsoleWatch::new(path.clone(), Tail::new(1024));
        for t in text {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(t.as_bytes()).unwrap();
            w.poll();
        }
        (w, path)
    }

    #[test]
    fn a_panic_split_across_reads_is_found() {
        let (w, p) = watch_of(&[
            "boot\n[ 1.0] Kernel pan",
            "ic - not syncing: VFS: boom\nmore\n",
        ]);
        let _ = std::fs::remove_file(p);
        assert_eq!(w.panic(), Some("Kernel panic - not syncing: VFS: boom"));
        assert!(matches!(
            exit(Ended::Exited, None, None, &w, false),
            VmExit::GuestPanic(_)
        ));
        assert_eq!(w.tail.last_lines(1), ["more"]);
    }

    #[test]
    fn clean_quit_crash_signal_and_timeout() {
        let (clean, p1) = watch_of(&["[ 2.5] reboot: Restarting system\n"]);
        assert_eq!(
            exit(Ended::Exited, None, None, &clean, false),
            VmExit::Reset
        );
        assert!(matches!(
            exit(Ended::Exited, None, None, &clean, true),
            VmExit::GuestCrash { .. }
        ));
        assert_eq!(
            exit(Ended::Exited, Some(15), None, &clean, false),
            VmExit::HostSignal(15)
        );
        let t = Duration::from_secs(3);
        assert_eq!(
            exit(Ended::TimedOut, None, Some(t), &clean, false),
            VmExit::TimedOut(t)
        );
        let (quit, p2) = watch_of(&["/ # ", "QEMU: Terminated\n\r"]);
        assert_eq!(
            exit(Ended::Exited, None, None, &quit, false),
            VmExit::UserQuit
        );
        let _ = (std::fs::remove_file(p1), std::fs::remove_file(p2));
    }

    #[test]
    fn triple_fault_in_the_reset_log() {
        let p = std::env::temp_dir().join(format!("kvmini-tcg-resets.{}", std::process::id()));
        std::fs::write(&p, "CPU Reset (CPU 0)\nEAX=0\n").unwrap();
        assert!(!triple_faulted(&p));
        std::fs::write(&p, "CPU Reset (CPU 0)\nTriple fault\nCPU Reset (CPU 0)\n").unwrap();
        assert!(triple_faulted(&p));
        let _ = std::fs::remove_file(&p);
        assert!(!triple_faulted(&p));
    }
}
