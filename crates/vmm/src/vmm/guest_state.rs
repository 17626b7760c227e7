//! What the guest has shown about itself, and what that makes of each way
//! it can stop. The one place that decides whom to believe:
//!
//! - A device is believed: S5 through the sleep control register is a
//!   power-off, the reset register a reset, pvpanic's "panicked" a panic.
//! - The console text ("reboot: Power down", "Kernel panic - not syncing")
//!   is a fallback for kernels without ACPI or without the pvpanic driver.
//!   Any guest process that can write to ttyS0 can print those words, so
//!   once the guest has proved it runs ACPI (the DSDT's `_INI` wrote the
//!   probe port) the power-down words no longer stop the VM, and once its
//!   pvpanic driver has probed, the panic words no longer change the exit.
//! - After the host asked for a graceful stop (SIGTERM or `exec
//!   --timeout` pressed the power button), a power-off or reset is that
//!   stop, reported as the signal or the timeout.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::devices::bus::lock;
use crate::devices::events::{GuestEvent, GuestEvents};
use crate::exit::{ExitSignal, VmExit};

/// How long after pvpanic's "panicked" the VM is stopped if the guest has
/// not reset by itself (`panic=1` reboots after 1 s): the panic output
/// reaches the console first.
const PANIC_GRACE: Duration = Duration::from_secs(2);

/// Said by a device when the VM stopped because of a pvpanic report and
/// the console showed no panic line.
pub const PVPANIC_REPORT: &str = "reported by the guest's pvpanic device";

pub struct GuestState {
    exit: Arc<ExitSignal>,
    acpi: AtomicBool,
    panic_driver: AtomicBool,
    panicked: AtomicBool,
    /// Written once on pvpanic's "panicked" (by a vCPU thread, whose
    /// filter allows no new thread and no timer); [`PanicTimer`] on the
    /// control loop waits out [`PANIC_GRACE`] and stops the VM.
    panic_kick: EventFd,
    /// Why the host pressed the power button, once it has.
    stop_request: Mutex<Option<StopRequest>>,
}

/// Why the host asked the guest to shut down (pressed its power button).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// A host signal (SIGTERM).
    Signal(i32),
    /// `kvmini exec --timeout` expired after this long.
    Timeout(Duration),
}

impl GuestState {
    pub fn new(exit: Arc<ExitSignal>) -> io::Result<Self> {
        Ok(Self {
            exit,
            acpi: AtomicBool::new(false),
            panic_driver: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            panic_kick: EventFd::new(EFD_NONBLOCK)?,
            stop_request: Mutex::new(None),
        })
    }

    /// The control loop's side of a pvpanic report: see [`PanicTimer`].
    pub fn panic_timer(&self) -> io::Result<PanicTimer> {
        Ok(PanicTimer {
            kick: self.panic_kick.try_clone()?,
            timer: TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?,
            exit: self.exit.clone(),
        })
    }

    /// Whether the guest has shown that its ACPI interpreter runs (so it
    /// has the power button, and powers off through a device).
    pub fn runs_acpi(&self) -> bool {
        self.acpi.load(Ordering::SeqCst)
    }

    /// The console showed a power-off or halt message.
    pub fn console_power_down(&self) {
        if self.console_power_down_counts() {
            self.exit.raise(VmExit::PowerOff);
        } else {
            log::debug!(
                "ignored a power-off message on the console: this guest runs ACPI, so a device \
                 says when it powers off"
            );
        }
    }

    /// Whether the console's power-off words stop the VM.
    fn console_power_down_counts(&self) -> bool {
        !self.runs_acpi()
    }

    /// Records why the host pressed the power button: the guest's next
    /// power-off or reset is the stop it asked for.
    pub fn stop_requested(&self, why: StopRequest) {
        lock(&self.stop_request).get_or_insert(why);
    }

    /// What to report, given why the VM stopped (`reason`) and the last
    /// panic line the console showed.
    pub fn verdict(&self, reason: VmExit, console_panic: Option<String>) -> VmExit {
        let panic = if self.panicked.load(Ordering::SeqCst) {
            Some(console_panic.unwrap_or_else(|| PVPANIC_REPORT.to_string()))
        } else if self.panic_driver.load(Ordering::SeqCst) {
            if let Some(line) = console_panic {
                log::debug!(
                    "ignored {line:?} on the console: the guest's pvpanic driver reports panics"
                );
            }
            None
        } else {
            console_panic
        };
        let request = *lock(&self.stop_request);
        match (reason, panic, request) {
            (VmExit::Reset | VmExit::PowerOff | VmExit::GuestPanic(_), Some(line), _) => {
                VmExit::GuestPanic(line)
            }
            (VmExit::Reset | VmExit::PowerOff, None, Some(StopRequest::Signal(signal))) => {
                VmExit::GuestShutDown { signal }
            }
            (VmExit::Reset | VmExit::PowerOff, None, Some(StopRequest::Timeout(limit))) => {
                VmExit::TimedOut(limit)
            }
            (reason, _, _) => reason,
        }
    }
}

impl GuestEvents for GuestState {
    fn report(&self, event: GuestEvent) {
        match event {
            GuestEvent::AcpiRunning => {
                if !self.acpi.swap(true, Ordering::SeqCst) {
                    log::debug!("the guest runs ACPI: it powers off through a device");
                }
            }
            GuestEvent::PowerOff => self.exit.raise(VmExit::PowerOff),
            GuestEvent::Reset => self.exit.raise(VmExit::Reset),
            GuestEvent::PanicDriverReady => {
                log::debug!("the guest's pvpanic driver probed: it reports panics");
                self.panic_driver.store(true, Ordering::SeqCst);
            }
            GuestEvent::Panicked => {
                if self.panicked.swap(true, Ordering::SeqCst) {
                    return;
                }
                // Give the panic message time to reach the console; a
                // guest with panic=N resets first, and `verdict` still
                // reports the panic. The wait is the control loop's: this
                // runs on a vCPU thread, which may start no thread.
                if let Err(e) = self.panic_kick.write(1) {
                    log::warn!("cannot start the pvpanic timer ({e}); stopping the VM now");
                    self.exit.raise(VmExit::GuestPanic(PVPANIC_REPORT.into()));
                }
            }
        }
    }
}

/// Stops the VM [`PANIC_GRACE`] after the guest's pvpanic report, unless
/// it stopped by then (a `panic=N` reset): a subscriber of the control
/// loop, which runs unfiltered on the main thread.
pub struct PanicTimer {
    kick: EventFd,
    timer: TimerFd,
    exit: Arc<ExitSignal>,
}

impl PanicTimer {
    fn kicked(&mut self) {
        let _ = self.kick.read();
        if let Err(e) = self.timer.reset(PANIC_GRACE, None) {
            log::warn!("cannot start the pvpanic timer ({e}); stopping the VM now");
            self.expired();
        }
    }

    fn expired(&mut self) {
        self.exit.raise(VmExit::GuestPanic(PVPANIC_REPORT.into()));
    }
}

impl MutEventSubscriber for PanicTimer {
    fn process(&mut self, events: Events, _: &mut EventOps) {
        if events.fd() == self.kick.as_raw_fd() {
            self.kicked();
        } else {
            let _ = self.timer.wait();
            self.expired();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for e in [
            Events::new(&self.kick, EventSet::IN),
            Events::new(&self.timer, EventSet::IN),
        ] {
            if let Err(e) = ops.add(e) {
                log::error!("cannot watch for the guest's pvpanic report: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (GuestState, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (GuestState::new(exit.clone()).unwrap(), exit)
    }

    const FAKE: &str = "Kernel panic - not syncing: printed by a user process";

    #[test]
    fn without_acpi_the_console_text_decides() {
        let (s, exit) = state();
        assert_eq!(
            s.verdict(VmExit::Reset, Some(FAKE.into())),
            VmExit::GuestPanic(FAKE.into())
        );
        s.console_power_down();
        assert_eq!(exit.reason(), Some(VmExit::PowerOff));
    }

    #[test]
    fn with_acpi_the_power_down_words_do_not_stop_the_vm() {
        let (s, exit) = state();
        s.report(GuestEvent::AcpiRunning);
        assert!(s.runs_acpi());
        s.console_power_down();
        assert!(!exit.is_raised(), "a guest process printed the words");
        s.report(GuestEvent::PowerOff);
        assert_eq!(exit.reason(), Some(VmExit::PowerOff));
    }

    #[test]
    fn with_pvpanic_the_panic_words_do_not_change_the_exit() {
        let (s, _) = state();
        s.report(GuestEvent::AcpiRunning);
        s.report(GuestEvent::PanicDriverReady);
        assert_eq!(
            s.verdict(VmExit::PowerOff, Some(FAKE.into())),
            VmExit::PowerOff
        );
        assert_eq!(s.verdict(VmExit::Reset, Some(FAKE.into())), VmExit::Reset);
    }

    #[test]
    fn a_pvpanic_report_is_a_panic_even_after_a_reset() {
        let (s, exit) = state();
        s.report(GuestEvent::PanicDriverReady);
        s.report(GuestEvent::Panicked);
        s.report(GuestEvent::Reset); // panic=1 rebooted it
        assert_eq!(exit.reason(), Some(VmExit::Reset));
        let line = "Kernel panic - not syncing: real";
        assert_eq!(
            s.verdict(VmExit::Reset, Some(line.into())),
            VmExit::GuestPanic(line.into())
        );
        assert_eq!(
            s.verdict(VmExit::Reset, None),
            VmExit::GuestPanic(PVPANIC_REPORT.into())
        );
    }

    #[test]
    fn a_pvpanic_report_stops_a_guest_that_does_not_reset() {
        let (s, exit) = state();
        use event_manager::SubscriberOps;
        let mut control = event_manager::EventManager::<crate::vmm::Subscriber>::new().unwrap();
        control.add_subscriber(Box::new(s.panic_timer().unwrap()));
        let t = std::time::Instant::now();
        s.report(GuestEvent::Panicked);
        assert!(!exit.is_raised(), "the panic output gets its grace");
        while !exit.is_raised() {
            assert!(
                t.elapsed() < PANIC_GRACE * 5,
                "no stop after a panic report"
            );
            control.run_with_timeout(100).unwrap();
        }
        assert!(t.elapsed() >= PANIC_GRACE, "stopped before the grace");
        assert_eq!(
            exit.reason(),
            Some(VmExit::GuestPanic(PVPANIC_REPORT.into()))
        );
    }

    #[test]
    fn a_power_off_after_sigterm_is_the_graceful_stop() {
        let (s, _) = state();
        assert_eq!(s.verdict(VmExit::PowerOff, None), VmExit::PowerOff);
        s.stop_requested(StopRequest::Signal(libc::SIGTERM));
        assert_eq!(
            s.verdict(VmExit::PowerOff, None),
            VmExit::GuestShutDown {
                signal: libc::SIGTERM
            }
        );
        assert_eq!(
            s.verdict(VmExit::Reset, None),
            VmExit::GuestShutDown {
                signal: libc::SIGTERM
            }
        );
        // A timeout or a second signal is reported as it is.
        let t = VmExit::ShutdownTimedOut {
            signal: libc::SIGTERM,
            after: Duration::from_secs(30),
        };
        assert_eq!(s.verdict(t.clone(), None), t);
    }

    #[test]
    fn a_power_off_after_the_exec_timeout_is_that_timeout() {
        let (s, _) = state();
        let limit = Duration::from_secs(8);
        s.stop_requested(StopRequest::Timeout(limit));
        s.stop_requested(StopRequest::Signal(libc::SIGTERM));
        assert_eq!(s.verdict(VmExit::PowerOff, None), VmExit::TimedOut(limit));
    }
}
