//! Waiting for QEMU: it is polled until it exits, a deadline passes, or a
//! [`Liveness`] check says the machine must be stopped (the emulated
//! machine's heartbeat went silent; the direct engine's guest panicked and
//! did not reboot). Only this thread reaps QEMU, so the pid it signals is
//! still QEMU's.

use std::io;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// How the wait for QEMU ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// QEMU exited by itself.
    Exited,
    /// The deadline passed; QEMU was told to quit.
    TimedOut,
    /// The liveness check asked to stop the machine (the emulated
    /// machine froze, or the guest hangs after a panic); QEMU was told to
    /// quit.
    Froze,
}

/// Asked about once a second while QEMU runs: should it be stopped?
pub trait Liveness {
    fn stopped(&mut self) -> bool;
}

/// Nothing to check: only QEMU's exit or the deadline end the wait.
pub struct AlwaysAlive;

impl Liveness for AlwaysAlive {
    fn stopped(&mut self) -> bool {
        false
    }
}

/// Watches the emulated machine's heartbeat: a file QEMU appends to while
/// the machine lives.
pub struct Heartbeat {
    path: PathBuf,
    /// Longest silence allowed once the first beat came.
    stall: Duration,
    /// Longest wait for the first beat (the machine's own boot).
    first: Duration,
    size: u64,
    last_change: Instant,
    beating: bool,
}

impl Heartbeat {
    pub fn new(path: PathBuf, stall: Duration, first: Duration) -> Self {
        Heartbeat {
            path,
            stall,
            first,
            size: 0,
            last_change: Instant::now(),
            beating: false,
        }
    }
}

impl Liveness for Heartbeat {
    /// True once the heartbeat has been silent for too long.
    fn stopped(&mut self) -> bool {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size != self.size {
            self.size = size;
            self.last_change = Instant::now();
            self.beating = true;
            return false;
        }
        let limit = if self.beating { self.stall } else { self.first };
        self.last_change.elapsed() > limit
    }
}

/// Waits for QEMU: polls it, and tells it to quit (SIGTERM) once the
/// deadline passes or `alive` says to stop it.
pub fn watch(
    child: &mut Child,
    deadline: Option<Instant>,
    alive: &mut impl Liveness,
) -> (io::Result<ExitStatus>, Ended) {
    let mut checked = Instant::now();
    loop {
        let stop = match child.try_wait() {
            Ok(Some(status)) => return (Ok(status), Ended::Exited),
            Err(e) => return (Err(e), Ended::Exited),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => Some(Ended::TimedOut),
            Ok(None) if checked.elapsed() >= Duration::from_secs(1) => {
                checked = Instant::now();
                alive.stopped().then_some(Ended::Froze)
            }
            Ok(None) => None,
        };
        let Some(ended) = stop else {
            // Short: QEMU's exit is the end of every run, and each poll
            // here is time the user waits.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        // SAFETY: kill(2) on our child, not yet reaped (try_wait just saw
        // it running and nothing else waits for it).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        return (child.wait(), ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn spawn_sh(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    fn temp_file(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kvmini-hb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Appends a beat to `path` every 100 ms until the flag is set: a
    /// heartbeat that keeps going however loaded the machine is (a thread,
    /// not a shell forking `sleep`), far inside the stall limits below.
    fn beat(path: PathBuf) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, b"."));
                thread::sleep(Duration::from_millis(100));
            }
        });
        (stop, t)
    }

    #[test]
    fn watch_stops_qemu_when_the_heartbeat_stops() {
        let path = temp_file("silent");
        // Beats twice, then goes silent but keeps running (for 10 minutes:
        // only the watch can end it early, with SIGTERM).
        let mut child = spawn_sh(&format!(
            "echo . >>{p}; sleep 0.3; echo . >>{p}; exec sleep 600",
            p = path.display()
        ));
        let mut hb = Heartbeat::new(path.clone(), Duration::from_secs(2), Duration::from_secs(5));
        let (status, ended) = watch(&mut child, None, &mut hb);
        assert_eq!(ended, Ended::Froze);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn watch_waits_while_the_heartbeat_goes_on() {
        let path = temp_file("beating");
        // Runs 5 s, longer than the 2 s stall limit, while a beat comes
        // every 0.1 s: only a watch that ignores the heartbeat stops it.
        let (stop, beater) = beat(path.clone());
        let mut child = spawn_sh("sleep 5; exit 7");
        let mut hb = Heartbeat::new(path.clone(), Duration::from_secs(2), Duration::from_secs(2));
        let (status, ended) = watch(&mut child, None, &mut hb);
        stop.store(true, Ordering::SeqCst);
        let _ = beater.join();
        assert_eq!(ended, Ended::Exited);
        assert_eq!(status.unwrap().code(), Some(7));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn watch_gives_l1_time_for_its_first_beat_then_stops_it() {
        let path = temp_file("never");
        let mut child = spawn_sh("exec sleep 600");
        let mut hb = Heartbeat::new(path, Duration::from_secs(1), Duration::from_secs(3));
        let started = Instant::now();
        let (status, ended) = watch(&mut child, None, &mut hb);
        assert_eq!(ended, Ended::Froze);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        // Not at the 1 s stall limit: the first beat may take 3 s. (A lower
        // bound: load can only make it later.)
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[test]
    fn watch_stops_qemu_at_the_deadline() {
        let path = temp_file("deadline");
        // Beating, and a stall limit far beyond the 1 s deadline: only the
        // deadline can end it.
        let (stop, beater) = beat(path.clone());
        let mut child = spawn_sh("exec sleep 600");
        let mut hb = Heartbeat::new(
            path.clone(),
            Duration::from_secs(300),
            Duration::from_secs(300),
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        let (status, ended) = watch(&mut child, Some(deadline), &mut hb);
        stop.store(true, Ordering::SeqCst);
        let _ = beater.join();
        assert_eq!(ended, Ended::TimedOut);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        let _ = std::fs::remove_file(&path);
    }
}
