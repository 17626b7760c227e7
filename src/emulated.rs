//! The emulated fallback (`--accel emulated`, or `auto` on hosts without
//! vmx/svm): kvmini runs itself inside an emulated machine (QEMU TCG with an
//! SVM-capable CPU and nested KVM) and boots the guest there.

use std::fmt;

use crate::config::VmConfig;

#[derive(Debug)]
pub enum EmulatedError {
    NotAvailable,
}

impl fmt::Display for EmulatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAvailable => write!(
                f,
                "the emulated fallback is not available in this build; \
                 use --accel kvm-any to try this host's /dev/kvm anyway"
            ),
        }
    }
}

impl std::error::Error for EmulatedError {}

/// Runs the VM described by `config` inside the emulated machine; returns
/// kvmini's exit code from inside it.
pub fn run(_config: &VmConfig) -> Result<u8, EmulatedError> {
    Err(EmulatedError::NotAvailable)
}
