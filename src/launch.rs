//! Where a VM runs, decided once: `--accel` resolved against this host
//! ([`engine`], which also says when `auto` falls back to QEMU's software
//! CPU), and `kvmini run`'s VM run there ([`run`]). `kvmini exec` asks
//! [`engine`] too and runs its prepared VM on the engine it names.

use std::fmt;
use std::io::IsTerminal;

use crate::arch::x86_64::cpuid::host_has_hw_virt;
use crate::config::{Accel, ConfigError, FsConfig, VmConfig};
use crate::emulated::{self, EmulatedError};
use crate::exit::VmExit;
use crate::guest::{self, GuestError};
use crate::outcome;
use crate::tcg::{self, TcgError};
use crate::vmm;

/// What runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// This host's /dev/kvm, kvmini's own VMM.
    Kvm,
    /// QEMU's software CPU (TCG) runs the guest directly: `--accel tcg`,
    /// and `auto` on hosts without vmx/svm.
    Tcg,
    /// kvmini inside the emulated machine (QEMU TCG with nested KVM):
    /// `--accel emulated` only, to test kvmini's own VMM on such hosts.
    Emulated,
}

/// Who hears that `--accel auto` chose QEMU's software CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// kvmini's stderr (`run`).
    Stderr,
    /// kvmini's stderr only when it is a terminal, else the log (`exec`:
    /// its stderr carries the command's, byte for byte).
    TerminalOnly,
    /// Nobody (`--quiet`); the log at info level.
    Quiet,
}

/// Resolves `config.accel` on this host: `kvm` is refused without vmx/svm,
/// `auto` picks KVM where the host has it, else QEMU's software CPU, and
/// says so. Also checks what user-mode NICs need of the host (passt, free
/// forwarded ports): every engine runs passt here.
pub fn engine(config: &VmConfig, notice: Notice) -> Result<Engine, ConfigError> {
    crate::config::check_nets_available(&config.nets)?;
    crate::config::check_fs_available(&config.fs)?;
    if config.accel.resolve(host_has_hw_virt())? {
        return Ok(Engine::Kvm);
    }
    if !config.fs.is_empty() {
        // The software engines run the guest in another process (QEMU),
        // which would have to share its RAM with virtiofsd itself.
        return Err(ConfigError::FsUnavailable(
            "virtio-fs needs kvmini's own VMM on /dev/kvm: not with --accel tcg or \
             emulated, nor with --accel auto on a host without hardware virtualization"
                .into(),
        ));
    }
    if config.accel == Accel::Auto {
        let tell = match notice {
            Notice::Stderr => true,
            Notice::TerminalOnly => std::io::stderr().is_terminal(),
            Notice::Quiet => false,
        };
        if tell {
            eprintln!("{FALLBACK_NOTICE}");
        } else {
            log::info!("{}", FALLBACK_NOTICE.replace("\n        ", " "));
        }
    }
    Ok(match config.accel {
        Accel::Emulated => Engine::Emulated,
        Accel::Auto | Accel::Tcg | Accel::Kvm | Accel::KvmAny => Engine::Tcg,
    })
}

/// Makes sure a virtiofsd is there when `fs` has `dir=` shares: the
/// host's (`$KVMINI_VIRTIOFSD`, PATH, /usr/libexec), else one built from
/// crates.io on first use and cached (resources/virtiofsd/build.sh,
/// progress on stderr), as the default guest is.
pub fn provide_virtiofsd(fs: &[FsConfig]) -> Result<(), GuestError> {
    use crate::devices::virtio::fs::{find_virtiofsd, set_virtiofsd};
    if !fs.iter().any(FsConfig::runs_virtiofsd) {
        return Ok(());
    }
    if let Err(why) = find_virtiofsd() {
        log::info!("{why}: providing virtiofsd");
        set_virtiofsd(guest::build_artefact("virtiofsd/build.sh")?);
    }
    Ok(())
}

const FALLBACK_NOTICE: &str =
    "kvmini: this host has no hardware virtualization (no vmx/svm in /proc/cpuinfo);\n        \
     QEMU's software CPU (TCG) runs the guest (much slower). --accel=kvm refuses this.";

#[derive(Debug)]
pub enum LaunchError {
    Vmm(vmm::Error),
    Emulated(EmulatedError),
    Tcg(TcgError),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmm(e) => write!(f, "{e}"),
            Self::Emulated(e) => write!(f, "{e}"),
            Self::Tcg(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LaunchError {}

impl LaunchError {
    /// `run`'s exit code for this failure: 159 when QEMU's seccomp sandbox
    /// killed it (as for a forbidden call on hardware KVM), else 1.
    pub fn code(&self) -> u8 {
        match self {
            Self::Tcg(e) if e.sandbox_killed() => outcome::code::SECCOMP_VIOLATION,
            _ => outcome::code::ERROR,
        }
    }
}

/// `kvmini run`: boots `config` on `engine` (what [`engine`] chose) and
/// runs it until it stops; returns kvmini's exit code (why it stopped was
/// said on stderr unless it stopped cleanly).
pub fn run(config: &VmConfig, engine: Engine) -> Result<u8, LaunchError> {
    match engine {
        Engine::Emulated => emulated::run(config).map_err(LaunchError::Emulated),
        Engine::Tcg => Ok(ended(&tcg::run(config).map_err(LaunchError::Tcg)?)),
        Engine::Kvm => Ok(ended(&vmm::run(config).map_err(LaunchError::Vmm)?)),
    }
}

/// Says why the VM stopped unless it stopped cleanly; `run`'s exit code.
fn ended(exit: &VmExit) -> u8 {
    if exit.is_clean() {
        log::info!("{exit}");
    } else {
        // Not waiting long for a stalled stderr (see logger).
        crate::logger::stderr_text(&format!("kvmini: {exit}\n"));
    }
    outcome::run_code(exit)
}
