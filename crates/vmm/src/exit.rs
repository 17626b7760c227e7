//! Why a VM stopped, and the one-shot signal that carries it from whoever
//! noticed (a vCPU, a device, the console, a host signal) to the VMM.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sync::lock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 reset, `reboot=k`).
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The guest kernel panicked (and then rebooted, with `panic=N`).
    GuestPanic(String),
    /// The user typed the console escape (Ctrl-A x).
    UserQuit,
    /// The VMM got a terminating signal (SIGTERM, SIGINT, SIGHUP).
    HostSignal(i32),
    /// The run's time limit passed (`kvmini exec --timeout`).
    TimedOut(std::time::Duration),
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted. `early`: before its
    /// first port or MMIO access (a boot-protocol problem, typically);
    /// `report`: the vCPU's state and last exits (multi-line).
    TripleFault {
        cpu: u8,
        early: bool,
        report: String,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the CPU refused to enter the guest.
    FailEntry { cpu: u8, reason: u64 },
    /// `KVM_EXIT_INTERNAL_ERROR`, typically an instruction KVM cannot emulate.
    InternalError { cpu: u8, detail: String },
    /// The guest signalled a crash or made KVM exit in a way we cannot serve.
    GuestCrash { cpu: u8, detail: String },
    /// `KVM_RUN` itself failed.
    VcpuError { cpu: u8, detail: String },
    /// A host signal pressed the guest's ACPI power button and the guest
    /// shut down (powered off or reset) by itself.
    GuestShutDown { signal: i32 },
    /// A host signal pressed the guest's ACPI power button and the guest
    /// had not shut down `after` that long (`--shutdown-timeout`).
    ShutdownTimedOut {
        signal: i32,
        after: std::time::Duration,
    },
}

impl VmExit {
    /// True when the guest stopped the way guests are meant to.
    pub fn is_clean(&self) -> bool {
        matches!(self, Self::Reset | Self::PowerOff)
    }

    /// The host signal that stopped the VM, however the guest took it.
    pub fn host_signal(&self) -> Option<i32> {
        match self {
            Self::HostSignal(s)
            | Self::GuestShutDown { signal: s }
            | Self::ShutdownTimedOut { signal: s, .. } => Some(*s),
            _ => None,
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset => write!(f, "the guest rebooted"),
            Self::PowerOff => write!(f, "the guest powered off"),
            Self::GuestPanic(line) => write!(f, "the guest kernel panicked: {line}"),
            Self::UserQuit => write!(f, "terminated from the console (Ctrl-A x)"),
            Self::HostSignal(s) => write!(f, "terminated by signal {s}"),
            Self::TimedOut(d) => write!(f, "timed out after {}s; the VM was killed", d.as_secs()),
            Self::TripleFault { cpu, early, report } => {
                write!(f, "vcpu{cpu}: the guest triple-faulted (KVM_EXIT_SHUTDOWN)")?;
                if *early {
                    write!(
                        f,
                        " before its first device access; is the kernel built for x86_64 \
                         and the boot protocol?"
                    )?;
                }
                if !report.is_empty() {
                    write!(f, "\n{}", report.trim_end())?;
                }
                Ok(())
            }
            Self::FailEntry { cpu, reason } => write!(
                f,
                "vcpu{cpu}: KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, \
                 hardware reason {reason:#x})"
            ),
            Self::InternalError { cpu, detail } => write!(
                f,
                "vcpu{cpu}: {detail}{}",
                if crate::arch::x86_64::cpuid::host_has_hw_virt() {
                    ""
                } else {
                    "; this host has no hardware virtualization (no vmx/svm), so KVM \
                     emulates guest kernel code and cannot run a full Linux kernel"
                }
            ),
            Self::GuestCrash { cpu, detail } => write!(f, "vcpu{cpu}: {detail}"),
            Self::VcpuError { cpu, detail } => write!(f, "vcpu{cpu}: {detail}"),
            Self::GuestShutDown { signal } => write!(
                f,
                "stopped by signal {signal}: the guest shut down cleanly after kvmini pressed \
                 its ACPI power button"
            ),
            Self::ShutdownTimedOut { signal, after } => write!(
                f,
                "stopped by signal {signal}: the guest did not shut down within {}s of kvmini \
                 pressing its ACPI power button (--shutdown-timeout); the VM was killed",
                after.as_secs()
            ),
        }
    }
}

/// Raised once, by whoever first sees the VM must stop; later reasons are
/// ignored (the first cause is the one worth reporting).
pub struct ExitSignal {
    raised: AtomicBool,
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitSignal {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            raised: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn raise(&self, why: VmExit) {
        let mut reason = lock(&self.reason);
        if reason.is_none() {
            log::debug!("VM exit: {why}");
            *reason = Some(why);
            self.raised.store(true, Ordering::SeqCst);
            let _ = self.evt.write(1);
        }
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<VmExit> {
        lock(&self.reason).clone()
    }

    /// Readable once the signal is raised; for the event loop.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().unwrap();
        assert!(!s.is_raised());
        assert!(s.eventfd().read().is_err());
        s.raise(VmExit::Reset);
        s.raise(VmExit::TripleFault {
            cpu: 1,
            early: false,
            report: String::new(),
        });
        assert!(s.is_raised());
        assert_eq!(s.reason(), Some(VmExit::Reset));
        assert_eq!(s.eventfd().read().unwrap(), 1);
        assert!(VmExit::PowerOff.is_clean());
        let fault = VmExit::TripleFault {
            cpu: 0,
            early: true,
            report: "vcpu0 at KVM_EXIT_SHUTDOWN\n  rip=0x0\n".into(),
        };
        assert!(!fault.is_clean());
        assert_eq!(
            fault.to_string(),
            "vcpu0: the guest triple-faulted (KVM_EXIT_SHUTDOWN) before its first device \
             access; is the kernel built for x86_64 and the boot protocol?\n\
             vcpu0 at KVM_EXIT_SHUTDOWN\n  rip=0x0"
        );
    }
}
