//! The direct software-CPU engine (`--accel tcg`, and what `auto` picks on
//! hosts without vmx/svm): QEMU's TCG runs the guest itself, on QEMU's
//! `microvm` machine set up like kvmini's own ([`machine`]), with no KVM
//! anywhere. kvmini starts QEMU, passes signals on to it, stops it at
//! exec's `--timeout` or when a panicked guest hangs, and tells from QEMU's
//! logs why the guest stopped ([`verdict`]) as a [`VmExit`], which `run`
//! and `exec` map to exit codes as they do for hardware KVM.
//!
//! `kvmini exec`'s streams leave the guest on four virtio-console ports
//! (/dev/hvc0..3: stdout, stderr, the status line, the share archive),
//! backed by files we follow ([`crate::qemu::files`]: QEMU drops console
//! data a socket cannot take at once).
//!
//! Not here: `--net` (refused: QEMU would need the TAPs kvmini opens
//! itself), the ACPI power button on SIGTERM (the guest is stopped at
//! once), guests with more than [`machine::MAX_DEVICES`] virtio devices.

pub mod machine;
pub mod verdict;

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use crate::arch::x86_64::boot::{detect_kernel, BootError};
use crate::config::{ConsoleConfig, Seccomp, VmConfig};
use crate::devices::virtio::block::backend::{self, DiskFile};
use crate::devices::virtio::net::{passt, NetBackend};
use crate::exec::capture::Tail;
use crate::exit::VmExit;
use crate::guest::resources_dir;
use crate::qemu::files::Files;
use crate::qemu::streams::Sink;
use crate::qemu::supervise::{watch, Ended};
use crate::qemu::{self as q, SavedTerminal};
use crate::stop;
use crate::vmm::FLUSH_AFTER_STOP;
use machine::{Logs, EXEC_PORTS, MAX_DEVICES};
use verdict::ConsoleWatch;

/// Bytes of the guest console kept for messages about a failed run.
const CONSOLE_TAIL: usize = 16 << 10;
/// Lines of QEMU's own stderr shown when it fails.
const QEMU_LINES: usize = 20;

#[derive(Debug)]
pub enum TcgError {
    /// `--net` asked for.
    NetNeedsKvm,
    /// `--net user`: passt missing, or it could not start.
    Passt(passt::Error),
    /// More virtio devices than the machine has transports for.
    TooManyDevices {
        asked: usize,
        exec: bool,
    },
    BadKernel(PathBuf, BootError),
    Disk(backend::Error),
    Signals(io::Error),
    TempDir(io::Error),
    Streams(io::Error),
    SpawnQemu(io::Error),
    /// QEMU is missing and could not be installed.
    InstallQemu(String),
    /// QEMU failed by itself: its status and last messages; `sandboxed`:
    /// it ran under its seccomp sandbox (`--seccomp on`).
    Qemu {
        status: ExitStatus,
        tail: Vec<String>,
        sandboxed: bool,
    },
}

impl TcgError {
    /// QEMU's seccomp sandbox killed it (SIGSYS): a forbidden system call,
    /// what exit 159 means on hardware KVM too.
    pub fn sandbox_killed(&self) -> bool {
        matches!(self, Self::Qemu { status, sandboxed: true, .. }
            if status.signal() == Some(libc::SIGSYS))
    }
}

impl fmt::Display for TcgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk(e) => write!(f, "{e}"),
            Self::NetNeedsKvm => write!(
                f,
                "--net tap= needs hardware KVM (vmx/svm): on this host QEMU's software CPU \
                 runs the guest, and kvmini's TAP NICs are not available there; use \
                 --net user (passt), or a host with hardware virtualization"
            ),
            Self::Passt(e) => write!(f, "--net user: {e}"),
            Self::TooManyDevices { asked, exec } => write!(
                f,
                "{asked} virtio devices{} is too many for the software-CPU engine (QEMU's \
                 microvm machine): at most {MAX_DEVICES} fit; use fewer --disk/--share \
                 flags, or a host with hardware virtualization",
                if *exec {
                    " (disks, shares and exec's console device)"
                } else {
                    ""
                }
            ),
            Self::BadKernel(p, e) => write!(
                f,
                "kernel '{}' cannot be booted: {e}; pass an x86_64 vmlinux (ELF) or bzImage",
                p.display()
            ),
            Self::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            Self::TempDir(e) => write!(
                f,
                "cannot create a temporary directory for QEMU's logs (check TMPDIR): {e}"
            ),
            Self::Streams(e) => {
                write!(f, "cannot set up exec's output streams (check TMPDIR): {e}")
            }
            Self::SpawnQemu(e) => write!(
                f,
                "cannot start {}: {e}; install Debian's qemu-system-x86 (or use a host with \
                 hardware virtualization)",
                q::QEMU
            ),
            Self::InstallQemu(why) => write!(
                f,
                "{} is missing and could not be installed ({why}); install Debian's \
                 qemu-system-x86 (apt-get install qemu-system-x86), or use a host with \
                 hardware virtualization",
                q::QEMU
            ),
            Self::Qemu { status, tail, .. } => {
                write!(
                    f,
                    "{} {} before the guest stopped",
                    q::QEMU,
                    q::describe(*status)
                )?;
                if self.sandbox_killed() {
                    write!(
                        f,
                        ": QEMU's seccomp sandbox (what --seccomp on means with --accel tcg) \
                         stopped a system call it forbids, a QEMU bug or a guest attacking \
                         it; --seccomp off runs QEMU without the sandbox, for debugging"
                    )?;
                }
                if !tail.is_empty() {
                    write!(f, "; its messages:")?;
                    for l in tail {
                        write!(f, "\n    {l}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for TcgError {}

/// `kvmini run` on QEMU's software CPU: how the guest stopped.
pub fn run(config: &VmConfig) -> Result<VmExit, TcgError> {
    boot(config, &config.console, None, Instant::now(), None).map(|(exit, _)| exit)
}

/// `kvmini exec`'s prepared VM on QEMU's software CPU; `ports`: where
/// /dev/hvc0..3 go (stdout, stderr, status, share archive). Returns how it
/// stopped and the tail of its console. `timeout` counts from `since` (exec
/// started preparing the VM), as on hardware KVM.
pub fn run_exec(
    config: &VmConfig,
    timeout: Option<Duration>,
    since: Instant,
    console: &ConsoleConfig,
    ports: [Sink; 4],
) -> Result<(VmExit, Tail), TcgError> {
    boot(config, console, timeout, since, Some(ports))
}

/// Checks what the host can check before QEMU starts.
fn preflight(config: &VmConfig, exec: bool) -> Result<(), TcgError> {
    if config
        .nets
        .iter()
        .any(|n| matches!(n.backend, NetBackend::Tap(_)))
    {
        return Err(TcgError::NetNeedsKvm);
    }
    let asked = config.disks.len() + config.nets.len() + usize::from(exec);
    if asked > MAX_DEVICES {
        return Err(TcgError::TooManyDevices { asked, exec });
    }
    File::open(&config.kernel)
        .map_err(BootError::ReadKernel)
        .and_then(|mut f| detect_kernel(&mut f))
        .map_err(|e| TcgError::BadKernel(config.kernel.clone(), e))?;
    // As kvmini on hardware KVM checks them: missing, unreadable, not a
    // multiple of 512, locked by another kvmini.
    for d in &config.disks {
        drop(DiskFile::open(&d.path, d.readonly).map_err(TcgError::Disk)?);
    }
    Ok(())
}

/// Installs QEMU on first use (resources/tcg/qemu.sh), as the emulated
/// machine's build script does, when it is not on PATH.
fn ensure_qemu() -> Result<(), TcgError> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(q::QEMU).is_file()));
    if on_path {
        return Ok(());
    }
    let script = resources_dir()
        .map_err(|e| TcgError::InstallQemu(e.to_string()))?
        .join("tcg/qemu.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| TcgError::InstallQemu(format!("cannot run '{}': {e}", script.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(TcgError::InstallQemu(format!(
            "'{}' {}; see its messages above",
            script.display(),
            q::describe(status)
        )))
    }
}

fn boot(
    config: &VmConfig,
    console: &ConsoleConfig,
    timeout: Option<Duration>,
    since: Instant,
    ports: Option<[Sink; 4]>,
) -> Result<(VmExit, Tail), TcgError> {
    preflight(config, ports.is_some())?;
    // Installing QEMU on first use does not count against --timeout, as
    // building the default guest on first use does not.
    let installing = Instant::now();
    ensure_qemu()?;
    // (A limit too large to add to a clock is no limit.)
    let deadline = timeout.and_then(|t| since.checked_add(installing.elapsed())?.checked_add(t));
    stop::install().map_err(TcgError::Signals)?;
    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-tcg."))
        .map_err(|e| TcgError::TempDir(io::Error::from_raw_os_error(e.errno())))?;
    let dir = tmp.as_path();
    let (console_log, resets, errors) = (
        dir.join("console.log"),
        dir.join("resets.log"),
        dir.join("qemu.err"),
    );
    let stderr = File::create(&errors).map_err(TcgError::TempDir)?;
    let interactive =
        ports.is_none() && *console == ConsoleConfig::Stdout && io::stdin().is_terminal();
    let logs = Logs {
        console: &console_log,
        resets: &resets,
    };
    // One passt per user-mode NIC, its socket handed to QEMU's netdev
    // (what the host must have for it, launch::engine checked).
    let mut passts = Vec::new();
    for n in &config.nets {
        if let NetBackend::User(forwards) = &n.backend {
            let bin = passt::find_passt().map_err(TcgError::Passt)?;
            passts.push(passt::spawn(&bin, forwards).map_err(TcgError::Passt)?);
        }
    }
    let net_fds: Vec<RawFd> = passts.iter().map(|(s, _)| s.as_raw_fd()).collect();
    let mut qemu = q::command();
    q::inherit_fds(&mut qemu, net_fds.clone());
    qemu.args(machine::args(
        config,
        console,
        interactive,
        &logs,
        ports.is_some(),
        &net_fds,
    ))
    .stdin(if *console == ConsoleConfig::Stdout && ports.is_none() {
        Stdio::inherit()
    } else {
        Stdio::null()
    })
    // exec's stdout is the command's alone.
    .stdout(if ports.is_some() {
        Stdio::null()
    } else {
        Stdio::inherit()
    })
    .stderr(stderr);
    let streams = match ports {
        Some(sinks) => {
            let named = EXEC_PORTS.into_iter().zip(sinks).collect();
            Some(Files::create(dir, &mut qemu, named).map_err(TcgError::Streams)?)
        }
        None => None,
    };
    log::info!("starting the guest on QEMU's software CPU: {qemu:?}");
    let terminal = SavedTerminal::save();
    let started = Instant::now();
    let mut child = q::spawn(&mut qemu).map_err(TcgError::SpawnQemu)?;
    // QEMU has its ends of passt's sockets; ours would keep passt alive.
    let mut passts: Vec<Child> = passts.into_iter().map(|(_, c)| c).collect();
    let copying = streams.map(Files::follow);
    let tail = Tail::new(CONSOLE_TAIL);
    let mut watcher = ConsoleWatch::new(console_log, tail.clone());
    let (waited, ended) = watch(&mut child, deadline, &mut watcher);
    stop::set_child(0);
    let signal = stop::signalled().map(|code| i32::from(code) - 128);
    if let Some(c) = copying {
        // As kvmini's own VMM: a stop the user asked for (a signal,
        // --timeout) is not held up by a reader that does not read.
        let user_stopped = signal.is_some() || ended == Ended::TimedOut;
        c.finish(user_stopped.then(|| Instant::now() + FLUSH_AFTER_STOP));
    }
    drop(terminal);
    for p in &mut passts {
        // Gone already once QEMU closed its socket; killed if not.
        let _ = p.kill();
        let _ = p.wait();
    }
    watcher.poll();
    let status = waited.map_err(TcgError::SpawnQemu)?;
    log::info!(
        "QEMU {} after {:?} ({ended:?})",
        q::describe(status),
        started.elapsed()
    );
    if !status.success() && ended == Ended::Exited && signal.is_none() {
        let text = std::fs::read(&errors).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let tail = lines[lines.len().saturating_sub(QEMU_LINES)..].to_vec();
        return Err(TcgError::Qemu {
            status,
            tail,
            sandboxed: config.seccomp == Seccomp::On,
        });
    }
    let exit = verdict::exit(
        ended,
        signal,
        timeout,
        &watcher,
        verdict::triple_faulted(&resets),
    );
    Ok((exit, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn died_of(signal: i32) -> ExitStatus {
        // Killed by `signal`, as wait(2) reports it.
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn a_sigsys_under_the_sandbox_is_a_seccomp_violation() {
        let killed = |sig, sandboxed| TcgError::Qemu {
            status: died_of(sig),
            tail: vec!["last words".into()],
            sandboxed,
        };
        let e = killed(libc::SIGSYS, true);
        assert!(e.sandbox_killed());
        let says = e.to_string();
        assert!(
            says.contains("seccomp sandbox") && says.contains("--seccomp off"),
            "{says}"
        );
        assert!(says.ends_with("its messages:\n    last words"), "{says}");
        // Without the sandbox, or another signal: QEMU's own failure.
        for e in [killed(libc::SIGSYS, false), killed(libc::SIGSEGV, true)] {
            assert!(!e.sandbox_killed());
            assert!(!e.to_string().contains("sandbox"), "{e}");
        }
    }
}
