//! VMM threads (vCPUs, the event loop, disk I/O, output writers), started
//! one way: named, with the host's terminating signals blocked (they are
//! the main thread's business: its control loop serves them, whatever the
//! guest keeps the other threads doing), under their kind's seccomp
//! filter (installed by the thread itself before it runs anything else;
//! [`spawn`] returns only once it is in place), and able to say when they
//! ended, so the VMM waits for each with a deadline and never on a thread
//! stuck on the guest's or a reader's behalf.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::seccomp::{self, Seccomp, ThreadKind};
use crate::sync::lock;

/// A running VMM thread.
pub struct VmmThread<T> {
    /// `None` from a thread whose filter failed (it never ran its body).
    handle: JoinHandle<Option<T>>,
    done: Arc<Done>,
}

#[derive(Default)]
struct Done {
    finished: Mutex<bool>,
    cv: Condvar,
}

/// Marks the thread finished when dropped: on return and on panic alike.
struct MarkDone(Arc<Done>);

impl Drop for MarkDone {
    fn drop(&mut self) {
        *lock(&self.0.finished) = true;
        self.0.cv.notify_all();
    }
}

/// Why a thread could not be started.
#[derive(Debug)]
pub enum Error {
    Spawn(io::Error),
    Seccomp(seccomp::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spawn(e) => write!(f, "{e}"),
            Self::Seccomp(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

/// Each VMM thread's stack: 1 MiB, half Rust's default. What matters is
/// that it is below 2 MiB: a 2 MiB stack mapping that lands on a 2 MiB
/// boundary (as the one next to guest RAM, which is so aligned, did) is
/// backed by one transparent huge page on hosts with THP `always`, and the
/// first touch makes all 2 MiB resident (measured in the rig: 2048 KiB
/// resident in the stack beside guest RAM, 8 KiB in the others). The
/// VMM's threads use a few KiB.
pub const STACK_SIZE: usize = 1 << 20;

/// Starts `body` on a thread named `name` (at most 15 bytes are kept),
/// with `kind`'s filter when `seccomp` is on.
pub fn spawn<F, T>(
    name: String,
    kind: ThreadKind,
    seccomp: Seccomp,
    body: F,
) -> Result<VmmThread<T>, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let done = Arc::new(Done::default());
    let mark = MarkDone(done.clone());
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), seccomp::Error>>(1);
    let handle = std::thread::Builder::new()
        .name(name)
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let _mark = mark;
            block_host_signals();
            if kind == ThreadKind::DiskIo {
                fine_timer_slack();
            }
            if seccomp == Seccomp::On {
                let trigger = seccomp::test_trigger(kind);
                if let Err(e) = seccomp::install(kind) {
                    let _ = ready_tx.send(Err(e));
                    return None;
                }
                let _ = ready_tx.send(Ok(()));
                if trigger {
                    seccomp::make_forbidden_call();
                }
            } else {
                let _ = ready_tx.send(Ok(()));
            }
            Some(body())
        })
        .map_err(Error::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = handle.join();
            return Err(Error::Seccomp(e));
        }
        Err(_) => {
            let _ = handle.join();
            return Err(Error::Spawn(io::Error::other(
                "the thread died while starting",
            )));
        }
    }
    Ok(VmmThread { handle, done })
}

impl<T> VmmThread<T> {
    /// The thread's handle (to signal it).
    pub fn handle(&self) -> &JoinHandle<Option<T>> {
        &self.handle
    }

    pub fn is_finished(&self) -> bool {
        *lock(&self.done.finished)
    }

    /// Waits until the thread ended or `deadline` passed (`None`: no
    /// deadline); true if it ended.
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut finished = lock(&self.done.finished);
        while !*finished {
            let Some(deadline) = deadline else {
                finished = match self.done.cv.wait(finished) {
                    Ok(g) => g,
                    Err(e) => e.into_inner(),
                };
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            finished = match self.done.cv.wait_timeout(finished, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Joins the thread if it ends within `timeout`; otherwise leaves it
    /// running (detached: the process ends it when it exits) and returns
    /// `None`. A thread that panicked also gives `None`.
    pub fn join_within(self, timeout: Duration) -> Option<T> {
        if !self.wait_until(Some(Instant::now() + timeout)) {
            return None;
        }
        self.handle.join().ok().flatten()
    }
}

/// The time `clock` shows. A CPU clock (a thread's, from
/// `pthread_getcpuclockid`, or `libc::CLOCK_THREAD_CPUTIME_ID` for the
/// caller's): tests bound the work of a loop with it, which a loaded
/// machine's scheduler cannot stretch as it stretches wall time.
/// `CLOCK_MONOTONIC_COARSE`: the vCPUs' exit history, read on every exit;
/// the vDSO answers it from memory whatever the host's clocksource, where
/// `CLOCK_MONOTONIC` on a host without a usable TSC (the HPET of a nested
/// L1, for one) is a system call and a device read every time.
pub fn clock_time(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the call.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// Sleeps of this thread end within a microsecond of their time, not
/// the default 50: a disk thread's interrupt-coalescing window is 20-200
/// us (`devices::virtio::block::coalesce`). Best effort: a failure only
/// makes the windows longer.
fn fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a number and changes only this
    // thread's timer slack; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        log::debug!("cannot set the timer slack: {}", io::Error::last_os_error());
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread.
fn block_host_signals() {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // and pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::ram::HUGE_PAGE;

    /// The length of the mapping in /proc/self/maps that holds `addr`.
    fn mapping_len(addr: usize) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let range = line.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let a = usize::from_str_radix(a, 16).unwrap();
            let b = usize::from_str_radix(b, 16).unwrap();
            if (a..b).contains(&addr) {
                return b - a;
            }
        }
        panic!("{addr:#x} is in no mapping");
    }

    #[test]
    fn a_thread_stack_can_never_be_one_huge_page() {
        let t = spawn("stack".into(), ThreadKind::EventLoop, Seccomp::Off, || {
            let local = 0u8;
            mapping_len(std::hint::black_box(&local) as *const u8 as usize)
        })
        .unwrap();
        let len = t.join_within(Duration::from_secs(5)).unwrap();
        assert!(
            len < HUGE_PAGE,
            "a VMM thread's stack is a {len}-byte mapping: THP can back it with a 2 MiB page"
        );
    }
}
