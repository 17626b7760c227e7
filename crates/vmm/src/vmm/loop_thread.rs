//! A thread running an event loop of its own until told to stop: the
//! event loop proper (virtio-net, virtio-console, console input) and one
//! per disk (its I/O). Stopping sets a flag (which a disk's requests also
//! watch between data segments) and writes a stop eventfd, so the loop
//! wakes and ends after the batch in hand; the VMM then waits for it with
//! a deadline.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::Subscriber;
use crate::exit::{ExitSignal, VmExit};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::thread::{self, VmmThread};

/// An event loop not started yet.
pub struct LoopThread {
    name: String,
    kind: ThreadKind,
    events: EventManager<Subscriber>,
    stop: Stop,
    /// Raised if the loop fails.
    exit: Arc<ExitSignal>,
}

/// How to stop a loop: the flag, and the eventfd that wakes it.
#[derive(Clone)]
struct Stop {
    flag: Arc<AtomicBool>,
    evt: Arc<EventFd>,
}

impl Stop {
    fn raise(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }
}

/// Wakes the loop when it must stop.
struct StopWatcher(Arc<EventFd>);

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.0.as_raw_fd(), EventSet::IN)) {
            log::error!("cannot watch a loop's stop eventfd: {e}");
        }
    }
}

impl LoopThread {
    /// A loop for the thread `name` of `kind`; `flag` is its stop flag
    /// (shared with a disk's requests), or a new one. If the loop fails,
    /// it raises `exit`.
    pub fn new(
        name: String,
        kind: ThreadKind,
        flag: Option<Arc<AtomicBool>>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, super::Error> {
        let mut events = EventManager::<Subscriber>::new().map_err(super::Error::EventLoop)?;
        let stop = Stop {
            flag: flag.unwrap_or_default(),
            evt: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(super::Error::EventFd)?),
        };
        events.add_subscriber(Box::new(StopWatcher(stop.evt.clone())));
        Ok(Self {
            name,
            kind,
            events,
            stop,
            exit,
        })
    }

    /// The loop's event manager, to add subscribers before it starts.
    pub fn events(&mut self) -> &mut EventManager<Subscriber> {
        &mut self.events
    }

    /// Starts the thread.
    pub fn spawn(self, seccomp: Seccomp) -> Result<RunningLoop, thread::Error> {
        let Self {
            name,
            kind,
            mut events,
            stop,
            exit,
        } = self;
        let flag = stop.flag.clone();
        let loop_name = name.clone();
        let thread = thread::spawn(name.clone(), kind, seccomp, move || {
            while !flag.load(Ordering::SeqCst) {
                if let Err(e) = events.run() {
                    exit.raise(VmExit::VcpuError {
                        cpu: 0,
                        detail: format!("the {loop_name} thread's event loop failed: {e}"),
                    });
                    return Err(e);
                }
            }
            Ok(())
        })?;
        Ok(RunningLoop { name, thread, stop })
    }
}

/// A loop thread that runs.
pub struct RunningLoop {
    name: String,
    thread: VmmThread<Result<(), event_manager::Error>>,
    stop: Stop,
}

impl RunningLoop {
    /// Tells the loop to stop (it ends after the batch in hand).
    pub fn stop(&self) {
        self.stop.raise();
    }

    /// The loop thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID` of that
    /// thread): tests measure the loop's work with it, which a loaded
    /// machine's scheduler cannot stretch as it stretches wall time.
    #[cfg(test)]
    pub fn cpu_clock(&self) -> std::io::Result<libc::clockid_t> {
        use std::os::unix::thread::JoinHandleExt;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `self` owns the handle, so the thread is not joined and
        // its pthread_t is valid; `clock` is a valid out-pointer.
        let r =
            unsafe { libc::pthread_getcpuclockid(self.thread.handle().as_pthread_t(), &mut clock) };
        if r == 0 {
            Ok(clock)
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        }
    }

    /// Whether the loop ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the loop and waits up to `timeout` for it; returns its error
    /// if it failed. A loop still busy then is left behind, logged.
    pub fn join_within(self, timeout: Duration) -> Result<(), event_manager::Error> {
        self.stop();
        let name = self.name;
        match self.thread.join_within(timeout) {
            Some(result) => result,
            None => {
                log::warn!(
                    "{name}: still busy {timeout:?} after the VM stopped; not waiting for it"
                );
                Ok(())
            }
        }
    }
}
