//! Thin wrappers over kvm-ioctls: opening `/dev/kvm` with errors a user can
//! act on, the VM (memory, irqchip, PIT, irqfds), the vCPU threads and
//! their crash reports.

pub mod crash;
pub mod vcpu;
pub mod vm;

use std::fmt;

use kvm_ioctls::Kvm;

#[derive(Debug)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    NoDevice,
    /// `/dev/kvm` exists but this user may not open it.
    Permission,
    Open(kvm_ioctls::Error),
    /// The kernel speaks another KVM API version.
    ApiVersion(i32),
}

impl fmt::Display for KvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice => write!(
                f,
                "/dev/kvm does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) \
                 and enable virtualization in the firmware"
            ),
            Self::Permission => write!(
                f,
                "permission denied opening /dev/kvm: add your user to the 'kvm' group \
                 (sudo usermod -aG kvm $USER, then log in again)"
            ),
            Self::Open(e) => write!(f, "cannot open /dev/kvm: {e}"),
            Self::ApiVersion(v) => write!(f, "unsupported KVM API version {v} (need 12)"),
        }
    }
}

impl std::error::Error for KvmError {}

/// Opens `/dev/kvm` and checks the API version.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::NoDevice,
        libc::EACCES | libc::EPERM => KvmError::Permission,
        _ => KvmError::Open(e),
    })?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v => Err(KvmError::ApiVersion(v)),
    }
}
