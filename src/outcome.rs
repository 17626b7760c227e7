//! How a kvmini command ends: every exit code in one place (docs/cli.md
//! lists them), and the one mapping from why the VM stopped to `run`'s
//! exit code. The match names every [`VmExit`]: a new exit reason does not
//! compile until it has its code.

use crate::config::ConfigError;
use crate::exit::VmExit;

/// kvmini's exit codes.
pub mod code {
    /// `run`: the guest powered off or rebooted; `bench`: the report is
    /// complete.
    pub const OK: u8 = 0;
    /// kvmini could not start the VM (KVM unusable, a disk locked, the
    /// default guest could not be built, ...).
    pub const ERROR: u8 = 1;
    /// A usage error: an unknown flag or a flag's value is wrong.
    pub const USAGE: u8 = 2;
    /// The guest crashed: triple fault, failed emulation, failed entry.
    pub const GUEST_CRASH: u8 = 3;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: u8 = 4;
    /// `exec`: the guest kernel panicked or the VM crashed.
    pub const EXEC_GUEST_DIED: u8 = 123;
    /// `exec`: `--timeout` expired.
    pub const EXEC_TIMEOUT: u8 = 124;
    /// `exec`: kvmini could not run the command (its usage errors too: the
    /// command's own statuses 0-255 pass through, so exec keeps 1 and 2
    /// for them).
    pub const EXEC_ERROR: u8 = 125;
    /// Killed from the console with Ctrl-A x.
    pub const USER_QUIT: u8 = 130;
    /// 128 + N: stopped by host signal N (SIGTERM: 143, SIGINT: 130).
    pub const SIGNAL_BASE: u8 = 128;
    /// A VMM thread made a system call its seccomp filter forbids (128 +
    /// SIGSYS); the SIGSYS handler exits with it, naming the call.
    pub const SECCOMP_VIOLATION: u8 = kvmini_vmm::seccomp::EXIT_SECCOMP as u8;
}

/// 128 + `signal`, as shells report a process a signal ended.
pub fn signal_code(signal: i32) -> u8 {
    code::SIGNAL_BASE.saturating_add(u8::try_from(signal).unwrap_or(u8::MAX))
}

/// `kvmini run`'s exit code for a VM that stopped this way.
pub fn run_code(exit: &VmExit) -> u8 {
    match exit {
        VmExit::Reset | VmExit::PowerOff => code::OK,
        VmExit::GuestPanic(_) => code::GUEST_PANIC,
        VmExit::UserQuit => code::USER_QUIT,
        VmExit::HostSignal(signal)
        | VmExit::GuestShutDown { signal }
        | VmExit::ShutdownTimedOut { signal, .. } => signal_code(*signal),
        // `run` has no time limit of its own; a VM stopped by one (a
        // caller's) ends the way exec's does.
        VmExit::TimedOut(_) => code::EXEC_TIMEOUT,
        VmExit::TripleFault { .. }
        | VmExit::FailEntry { .. }
        | VmExit::InternalError { .. }
        | VmExit::GuestCrash { .. }
        | VmExit::VcpuError { .. } => code::GUEST_CRASH,
    }
}

/// `kvmini run`'s exit code for flags that do not make a VM: a usage error
/// (2) when a flag's value is wrong, 1 when the flags are fine but this
/// host cannot run them.
pub fn config_code(e: &ConfigError) -> u8 {
    match e {
        ConfigError::NoHardwareVirt
        | ConfigError::NetUnavailable(_)
        | ConfigError::FsUnavailable(_) => code::ERROR,
        ConfigError::Accel(_)
        | ConfigError::Disk(..)
        | ConfigError::Fs(..)
        | ConfigError::Net(..)
        | ConfigError::TooManyDevices(_)
        | ConfigError::MemorySize(_)
        | ConfigError::MemoryTooSmall(_)
        | ConfigError::MemoryTooLarge { .. }
        | ConfigError::Vcpus(_)
        | ConfigError::Console(_)
        | ConfigError::NoKernel
        | ConfigError::KernelMissing(..)
        | ConfigError::InitrdMissing(..)
        | ConfigError::RootfsMissing(..)
        | ConfigError::ConsoleFile(..)
        | ConfigError::ShutdownTimeout(_)
        | ConfigError::Seccomp(_)
        | ConfigError::Cmdline(_) => code::USAGE,
    }
}

/// How a VM run ended, from `exec`'s point of view.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran to the end with this status; shares may be copied
    /// back.
    Finished(u8),
    /// It did not; kvmini exits with this code (the reason was printed).
    Failed(u8),
}

impl Outcome {
    pub fn code(&self) -> u8 {
        match self {
            Self::Finished(c) | Self::Failed(c) => *c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn run_codes() {
        assert_eq!(run_code(&VmExit::Reset), 0);
        assert_eq!(run_code(&VmExit::PowerOff), 0);
        assert_eq!(run_code(&VmExit::GuestPanic("x".into())), 4);
        assert_eq!(run_code(&VmExit::UserQuit), 130);
        assert_eq!(run_code(&VmExit::HostSignal(15)), 143);
        assert_eq!(run_code(&VmExit::GuestShutDown { signal: 15 }), 143);
        assert_eq!(
            run_code(&VmExit::ShutdownTimedOut {
                signal: 2,
                after: Duration::from_secs(1)
            }),
            130
        );
        assert_eq!(
            run_code(&VmExit::TripleFault {
                cpu: 0,
                early: false,
                report: String::new(),
            }),
            3
        );
        assert_eq!(
            run_code(&VmExit::InternalError {
                cpu: 1,
                detail: String::new()
            }),
            3
        );
        assert_eq!(run_code(&VmExit::TimedOut(Duration::from_secs(1))), 124);
        assert_eq!(signal_code(1), 129);
    }
}
