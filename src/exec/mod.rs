//! `kvmini exec`: run one command in a throwaway VM and return its output
//! and exit status as if it ran here.
//!
//! How the command gets in and its results get out, with kvmini's own
//! devices only:
//! - in: an extra initramfs archive appended to the guest's initrd carries
//!   the exec init (`resources/rootfs/exec-init`, run with
//!   `rdinit=/kvmini/init`), the disks to mount ([`job`]) and the command;
//! - shares: host directories packed into ext4 images on virtio-blk disks;
//!   what the command changed in a writable one comes back as an archive
//!   that is checked before it is applied ([`share`]);
//! - out: four single-port virtio-consoles, /dev/hvc0 = the command's
//!   stdout, /dev/hvc1 = its stderr, /dev/hvc2 = `exit N` from the init,
//!   /dev/hvc3 = the share archive (into a bounded file); the serial
//!   console (kernel log) stays apart ([`capture`]).

pub mod capture;
pub mod cpio;
pub mod job;
pub mod share;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use crate::cli::ExecArgs;
use crate::config::{self, ConfigError, ConsoleConfig, DiskConfig, FsConfig, VmConfig};
use crate::devices::virtio::block::guest_device;
use crate::devices::virtio::fs::Fs;
use crate::emulated::{self, EmulatedError};
use crate::exit::VmExit;
use crate::guest::{self, GuestError};
use crate::launch::{self, Engine, Notice};
pub use crate::outcome::Outcome;
use crate::outcome::{code as codes, signal_code};
use crate::tcg::{self, TcgError};
use crate::vmm::{self, Extras};
use capture::{CaptureError, Spool, Status, StatusChannel, Tail, Tee};
use kvmini_flags::{FlagsError, VmArgs};
use share::{CopyBack, ShareError, ShareSpec};

/// `kvmini exec`'s own exit codes (the command's status passes through),
/// as [`crate::outcome::code`] names them.
pub mod code {
    use crate::outcome::code;
    /// The guest kernel panicked or the VM crashed.
    pub const GUEST_DIED: u8 = code::EXEC_GUEST_DIED;
    /// `--timeout` expired.
    pub const TIMEOUT: u8 = code::EXEC_TIMEOUT;
    /// kvmini could not run the command.
    pub const ERROR: u8 = code::EXEC_ERROR;
}

/// The guest side: installed as /kvmini/init in the extra archive.
const EXEC_INIT: &str = include_str!("../../resources/rootfs/exec-init");
/// The DHCP client script for user-mode NICs, appended as `/kvmini/dhcp`.
const DHCP_SCRIPT: &str = include_str!("../../resources/rootfs/dhcp");
/// Mounts `--fs` shares, appended as `/kvmini/shares`.
const SHARES_SCRIPT: &str = include_str!("../../resources/rootfs/shares");

/// Kernel parameters every exec guest gets (after run's defaults): our init,
/// and a quiet kernel (each console byte costs a VM exit; panics still show).
const EXEC_CMDLINE: &str = "rdinit=/kvmini/init quiet";

/// The virtio-consoles exec adds after the disks.
const EXEC_CONSOLES: usize = 4;

/// Console lines shown when the VM fails.
const TAIL_LINES: usize = 25;

#[derive(Debug)]
pub enum ExecError {
    NoCommand,
    Timeout(String),
    Env(String),
    Workdir(String),
    Console(String),
    Config(ConfigError),
    Guest(GuestError),
    Share(ShareError),
    /// `--share-via`: a bad value, or virtio-fs asked for where it cannot be.
    ShareVia(String),
    Capture(CaptureError),
    Io(PathBuf, io::Error),
    Vmm(vmm::Error),
    Emulated(EmulatedError),
    Tcg(TcgError),
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommand => write!(
                f,
                "no command given: put it after `--`, e.g. `kvmini exec -- uname -r`"
            ),
            Self::Timeout(s) => write!(
                f,
                "invalid --timeout '{s}': use seconds, or a number with s, m or h (90s, 10m)"
            ),
            Self::Env(s) => write!(
                f,
                "invalid --env '{s}': use NAME=VALUE or NAME (a shell variable name)"
            ),
            Self::Workdir(s) => write!(f, "invalid --workdir '{s}': must be an absolute path"),
            Self::Console(s) => write!(
                f,
                "invalid --console '{s}' for exec: use none or file=PATH (stdout carries \
                 the command's output)"
            ),
            Self::Config(e) => write!(f, "{e}"),
            Self::Guest(e) => write!(f, "{e}"),
            Self::Share(e) => write!(f, "{e}"),
            Self::ShareVia(why) => write!(f, "--share-via: {why}"),
            Self::Capture(e) => write!(f, "{e}"),
            Self::Io(p, e) => write!(f, "cannot write '{}': {e} (check TMPDIR)", p.display()),
            Self::Vmm(e) => write!(f, "{e}"),
            Self::Emulated(e) => write!(f, "{e}"),
            Self::Tcg(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ExecError {}

/// Parses `90`, `90s`, `10m`, `1h` (more than zero).
pub fn parse_duration(s: &str) -> Result<Duration, ExecError> {
    config::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ExecError::Timeout(s.to_string()))
}

/// `NAME=VALUE`, or `NAME` (value from our environment; unset ones are
/// skipped, as `docker run -e NAME` does).
fn parse_env(items: &[String]) -> Result<Vec<(String, String)>, ExecError> {
    let mut out = Vec::new();
    for item in items {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (item.as_str(), None),
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ExecError::Env(item.clone()));
        }
        match value.or_else(|| std::env::var(name).ok()) {
            Some(v) => out.push((name.to_string(), v)),
            None => log::info!("--env {name}: not set here, not passed"),
        }
    }
    Ok(out)
}

/// `run`'s console destinations, but stdout: that is the command's.
fn parse_console(s: &str) -> Result<ConsoleConfig, ExecError> {
    match config::parse_console(s) {
        Ok(ConsoleConfig::Stdout) | Err(_) => Err(ExecError::Console(s.to_string())),
        Ok(c) => Ok(c),
    }
}

/// Runs `kvmini exec`; returns the exit code.
pub fn main(args: ExecArgs) -> u8 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmini: error: {e}");
            match e {
                // As for a forbidden call on hardware KVM.
                ExecError::Tcg(t) if t.sandbox_killed() => codes::SECCOMP_VIOLATION,
                _ => code::ERROR,
            }
        }
    }
}

fn run(args: ExecArgs) -> Result<u8, ExecError> {
    let timeout = args.timeout.as_deref().map(parse_duration).transpose()?;
    let console = parse_console(&args.console)?;
    if args.prepared {
        return run_prepared(&args, timeout, &console);
    }
    if args.command.is_empty() {
        return Err(ExecError::NoCommand);
    }
    if !args.workdir.starts_with('/') {
        return Err(ExecError::Workdir(args.workdir.clone()));
    }
    let env = parse_env(&args.env)?;
    let mut shares = args
        .shares
        .iter()
        .map(|s| ShareSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ExecError::Share)?;
    let share_via = ShareVia::parse(&args.share_via)?;
    // Every flag is checked, and the engine chosen (`--accel kvm` refused
    // where it cannot run), before anything is built or packed.
    let vm_args = exec_vm_args(&args.vm);
    let added = EXEC_CONSOLES + usize::from(args.rootfs.is_some()) + shares.len();
    let host_memory = config::host_memory_bytes();
    let checked = vm_args
        .check(console.clone(), added, host_memory)
        .map_err(ExecError::Config)?;
    if let Some(rootfs) = &args.rootfs {
        config::check_readable(rootfs)
            .map_err(|e| ExecError::Config(ConfigError::RootfsMissing(rootfs.clone(), e)))?;
    }
    let notice = if args.quiet {
        Notice::Quiet
    } else {
        Notice::TerminalOnly
    };
    let engine = launch::engine(&checked, notice).map_err(ExecError::Config)?;
    let live = live_shares(share_via, engine, &shares, &checked, added - shares.len())?;
    let mut vm = vm_args
        .to_config(console.clone(), added, host_memory, guest::default_guest)
        .map_err(|e| match e {
            FlagsError::Config(e) => ExecError::Config(e),
            FlagsError::DefaultGuest(e) => ExecError::Guest(e),
        })?;
    if let Some(fs) = live {
        // The shares are --fs devices now (live_shares checked that they
        // and their kernel command-line words fit).
        shares.clear();
        vm.fs.extend(fs);
    }
    // --timeout counts from here: packing shares and preparing the VM are
    // part of the command's time (building the default guest on first use
    // is not).
    let since = Instant::now();
    let base_initrd = match vm.initrd.clone() {
        Some(i) => i,
        None => guest::default_initrd().map_err(ExecError::Guest)?,
    };

    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-exec.")).map_err(|e| {
        ExecError::Io(
            std::env::temp_dir(),
            io::Error::from_raw_os_error(e.errno()),
        )
    })?;
    let dir = tmp.as_path();

    // Disks in guest order: the user's, the rootfs, the shares.
    let mut disks = std::mem::take(&mut vm.disks);
    let mut attach = |path: PathBuf, readonly: bool| {
        disks.push(DiskConfig {
            path,
            readonly,
            limit: Default::default(),
        });
        guest_device(disks.len() - 1)
    };
    let rootfs_dev = args.rootfs.clone().map(|p| attach(p, true));
    let mut guest_shares = Vec::new();
    let mut packed = Vec::new();
    for (i, s) in shares.iter().enumerate() {
        let image = dir.join(format!("share{i}.img"));
        packed.push(share::make_image(s, &image).map_err(ExecError::Share)?);
        guest_shares.push(job::GuestShare {
            device: attach(image, s.readonly),
            path: s.guest.clone(),
            readonly: s.readonly,
        });
    }
    // The writable shares, numbered as in the guest's job.
    let writable: Vec<CopyBack> = shares
        .iter()
        .zip(&packed)
        .enumerate()
        .filter(|(_, (s, _))| !s.readonly)
        .map(|(i, (spec, packed))| CopyBack {
            number: i + 1,
            spec,
            packed,
        })
        .collect();
    let archive = dir.join("shares.tar");
    let limit = writable.iter().map(|w| w.packed.stream_limit()).sum();
    let spool = Spool::create(&archive, limit).map_err(|e| ExecError::Io(archive.clone(), e))?;

    let job = job::job_script(rootfs_dev.as_deref(), &guest_shares);
    let command = job::command_script(&args.workdir, &env, &args.command);
    let extra = cpio::archive(&[
        cpio::Entry::Dir {
            path: "kvmini",
            mode: 0o755,
        },
        cpio::Entry::File {
            path: "kvmini/init",
            mode: 0o755,
            data: EXEC_INIT.as_bytes(),
        },
        cpio::Entry::File {
            path: "kvmini/dhcp",
            mode: 0o755,
            data: DHCP_SCRIPT.as_bytes(),
        },
        cpio::Entry::File {
            path: "kvmini/shares",
            mode: 0o755,
            data: SHARES_SCRIPT.as_bytes(),
        },
        cpio::Entry::File {
            path: "kvmini/job",
            mode: 0o644,
            data: job.as_bytes(),
        },
        cpio::Entry::File {
            path: "kvmini/command",
            mode: 0o644,
            data: command.as_bytes(),
        },
    ]);
    let mut base = File::open(&base_initrd).map_err(|e| {
        ExecError::Config(ConfigError::InitrdMissing(
            base_initrd.clone(),
            e.to_string(),
        ))
    })?;
    // On KVM the job's archive follows the user's initrd in guest memory;
    // QEMU (tcg, emulated) takes one file, so there it is a new file: the
    // user's initrd (copied by the kernel) with the archive appended.
    let initrd_append = if engine == Engine::Kvm {
        vm.initrd = Some(base_initrd);
        extra
    } else {
        let initrd = dir.join("initrd");
        File::create(&initrd)
            .and_then(|mut out| cpio::append_file(&mut base, &extra, &mut out))
            .map_err(|e| ExecError::Io(initrd.clone(), e))?;
        vm.initrd = Some(initrd);
        Vec::new()
    };
    vm.disks = disks;
    log::debug!(
        "exec: prepared {} ms into --timeout's clock",
        since.elapsed().as_millis()
    );
    if let Some(limit) = timeout.filter(|&limit| since.elapsed() >= limit) {
        // The limit passed while preparing: no VM.
        return Ok(interpret(&VmExit::TimedOut(limit), None, &Tail::new(0)).code());
    }
    let outcome = match engine {
        Engine::Kvm => run_kvm(
            &vm,
            initrd_append,
            timeout,
            since,
            &console,
            Box::new(spool.clone()),
        )?,
        Engine::Tcg => run_tcg(&vm, timeout, since, &console, Box::new(spool.clone()))?,
        Engine::Emulated => {
            let share_out = (!writable.is_empty()).then(|| Box::new(spool.clone()) as _);
            emulated::run_exec(&vm, timeout, &console, share_out).map_err(ExecError::Emulated)?
        }
    };

    log::debug!(
        "exec: the VM ended {} ms into --timeout's clock",
        since.elapsed().as_millis()
    );
    if let Outcome::Finished(_) = outcome {
        if !writable.is_empty() {
            spool.finish().map_err(ExecError::Capture)?;
            share::copy_back(&writable, &archive).map_err(ExecError::Share)?;
        }
    } else if !writable.is_empty() {
        eprintln!(
            "kvmini: the command did not finish: what it wrote under writable shares was \
             not copied back"
        );
    }
    drop(tmp);
    log::debug!(
        "exec: cleaned up {} ms into --timeout's clock",
        since.elapsed().as_millis()
    );
    Ok(outcome.code())
}

/// `--share-via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ShareVia {
    Auto,
    VirtioFs,
    Image,
}

impl ShareVia {
    fn parse(s: &str) -> Result<Self, ExecError> {
        match s {
            "auto" => Ok(Self::Auto),
            "virtio-fs" => Ok(Self::VirtioFs),
            "image" => Ok(Self::Image),
            _ => Err(ExecError::ShareVia(format!(
                "'{s}' is not auto, virtio-fs or image"
            ))),
        }
    }
}

/// The live shares (virtio-fs) `shares` become, or `None` for images: see
/// `--share-via`. `checked` is the VM as checked so far, with `consoles`
/// other added devices: the shares' kernel command-line words must fit it
/// too. Decided before anything is built (but a virtiofsd, on first use):
/// each share's virtiofsd is started and asked for its features once, so
/// one that cannot run here (no user namespaces for its sandbox, say)
/// means images, not a failed run. Says which, at info level.
fn live_shares(
    via: ShareVia,
    engine: Engine,
    shares: &[ShareSpec],
    checked: &VmConfig,
    consoles: usize,
) -> Result<Option<Vec<FsConfig>>, ExecError> {
    if shares.is_empty() || via == ShareVia::Image {
        return Ok(None);
    }
    let fs: Vec<FsConfig> = shares
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| s.into_fs(i))
        .collect();
    let usable = || -> Result<(), String> {
        if engine != Engine::Kvm {
            return Err(
                "virtio-fs needs kvmini's own VMM on KVM, not --accel tcg or emulated".into(),
            );
        }
        if let Some(s) = shares
            .iter()
            .find(|s| !crate::devices::virtio::fs::valid_mount(&s.guest))
        {
            return Err(format!(
                "GUEST {} is not a plain path (letters, digits, '_', '.', '-')",
                s.guest
            ));
        }
        let mut vm = checked.clone();
        vm.fs.extend(fs.iter().cloned());
        vm.check(consoles).map_err(|e| e.to_string())?;
        launch::provide_virtiofsd(&fs).map_err(|e| e.to_string())?;
        for f in &fs {
            Fs::new(f).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    match (usable(), via) {
        (Ok(()), _) => {
            log::info!("--share: live through virtio-fs");
            Ok(Some(fs))
        }
        (Err(why), ShareVia::VirtioFs) => Err(ExecError::ShareVia(format!(
            "cannot share through virtio-fs: {why}"
        ))),
        (Err(why), _) => {
            log::info!("--share: copied in disk images ({why})");
            Ok(None)
        }
    }
}

/// The VM flags with exec's kernel parameters in front of the user's.
fn exec_vm_args(vm: &VmArgs) -> VmArgs {
    let extra = vm
        .cmdline
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    VmArgs {
        cmdline: Some(match extra {
            Some(extra) => format!("{EXEC_CMDLINE} {extra}"),
            None => EXEC_CMDLINE.to_string(),
        }),
        ..vm.clone()
    }
}

/// Inside the emulated machine: everything was prepared by the outer kvmini.
fn run_prepared(
    args: &ExecArgs,
    timeout: Option<Duration>,
    console: &ConsoleConfig,
) -> Result<u8, ExecError> {
    // The outer kvmini gave every flag, exec's parameters included.
    if args.vm.kernel.is_none() || args.vm.initrd.is_none() {
        return Err(ExecError::Config(ConfigError::NoKernel));
    }
    let vm = args
        .vm
        .to_config(console.clone(), EXEC_CONSOLES, None, || {
            Err::<(PathBuf, PathBuf), _>(ConfigError::NoKernel)
        })
        .map_err(|e| match e {
            FlagsError::Config(e) | FlagsError::DefaultGuest(e) => ExecError::Config(e),
        })?;
    // The share archive goes to the emulated machine's port for it.
    let share_out: Box<dyn Write + Send> = match &args.share_stream {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|e| ExecError::Io(p.clone(), e))?,
        ),
        None => Box::new(io::sink()),
    };
    let outcome = run_kvm(&vm, Vec::new(), timeout, Instant::now(), console, share_out)?;
    if let (Outcome::Finished(status), Some(path)) = (&outcome, &args.status_file) {
        std::fs::write(path, format!("{status}\n")).map_err(|e| ExecError::Io(path.clone(), e))?;
    }
    Ok(outcome.code())
}

/// Our stdout or stderr as an unbuffered file.
fn std_stream(fd: std::os::fd::BorrowedFd) -> Box<dyn Write + Send> {
    match fd.try_clone_to_owned() {
        Ok(f) => Box::new(File::from(f)),
        Err(e) => {
            log::warn!("cannot duplicate an output stream: {e}; the command's output is lost");
            Box::new(io::sink())
        }
    }
}

/// Runs the prepared VM on this host's KVM and interprets how it ended;
/// the share archive goes to `share_out`; `timeout` counts from `since`.
pub fn run_kvm(
    vm: &VmConfig,
    initrd_append: Vec<u8>,
    timeout: Option<Duration>,
    since: Instant,
    console: &ConsoleConfig,
    share_out: Box<dyn Write + Send>,
) -> Result<Outcome, ExecError> {
    let tail = Tail::new(16 << 10);
    let file = match console {
        ConsoleConfig::File(p) => Some(File::create(p).map_err(|e| ExecError::Io(p.clone(), e))?),
        _ => None,
    };
    let status = StatusChannel::default();
    let extras = Extras {
        consoles: vec![
            std_stream(io::stdout().as_fd()),
            std_stream(io::stderr().as_fd()),
            Box::new(status.clone()),
            share_out,
        ],
        serial_out: Some(Box::new(Tee(tail.clone(), file))),
        no_console_input: true,
        timeout,
        timeout_since: Some(since),
        initrd_append,
    };
    let exit = vmm::run_with(vm, extras).map_err(ExecError::Vmm)?;
    Ok(interpret(&exit, status.status(), &tail))
}

/// Runs the prepared VM on QEMU's software CPU, its four consoles on the
/// same streams as [`run_kvm`]'s, and interprets how it ended the same way;
/// `timeout` counts from `since`, as for [`run_kvm`].
fn run_tcg(
    vm: &VmConfig,
    timeout: Option<Duration>,
    since: Instant,
    console: &ConsoleConfig,
    share_out: Box<dyn Write + Send>,
) -> Result<Outcome, ExecError> {
    let status = StatusChannel::default();
    let ports = [
        std_stream(io::stdout().as_fd()),
        std_stream(io::stderr().as_fd()),
        Box::new(status.clone()) as Box<dyn Write + Send>,
        share_out,
    ];
    let (exit, tail) = tcg::run_exec(vm, timeout, since, console, ports).map_err(ExecError::Tcg)?;
    Ok(interpret(&exit, status.status(), &tail))
}

/// Maps how the VM stopped and what the guest reported to an outcome,
/// printing why when the command did not finish.
fn interpret(exit: &VmExit, status: Option<Status>, tail: &Tail) -> Outcome {
    let show_tail = || {
        let lines = tail.last_lines(TAIL_LINES);
        if !lines.is_empty() {
            eprintln!("kvmini: last lines of the guest console:");
            for l in lines {
                eprintln!("    {l}");
            }
        }
    };
    let died = |exit: &VmExit| {
        eprintln!("kvmini: {exit}");
        show_tail();
        Outcome::Failed(codes::EXEC_GUEST_DIED)
    };
    // Every exit reason is named: a new one does not compile until it has
    // its outcome.
    match exit {
        VmExit::Reset | VmExit::PowerOff => match status {
            Some(Status::Exit(n)) => Outcome::Finished(n),
            Some(Status::Error(why)) => {
                eprintln!("kvmini: the guest could not run the command: {why}");
                show_tail();
                Outcome::Failed(codes::EXEC_ERROR)
            }
            None => {
                eprintln!("kvmini: the guest stopped before the command finished");
                show_tail();
                Outcome::Failed(codes::EXEC_ERROR)
            }
        },
        VmExit::TimedOut(d) => {
            eprintln!(
                "kvmini: the command did not finish within {}s (--timeout); the VM was killed",
                d.as_secs()
            );
            show_tail();
            Outcome::Failed(codes::EXEC_TIMEOUT)
        }
        // SIGTERM stopped the VM, or pressed an ACPI guest's power button.
        VmExit::HostSignal(signal)
        | VmExit::GuestShutDown { signal }
        | VmExit::ShutdownTimedOut { signal, .. } => {
            eprintln!("kvmini: {exit}");
            Outcome::Failed(signal_code(*signal))
        }
        // Ctrl-A x cannot reach exec (its console input is not stdin).
        VmExit::UserQuit => Outcome::Failed(codes::USER_QUIT),
        VmExit::GuestPanic(_)
        | VmExit::TripleFault { .. }
        | VmExit::FailEntry { .. }
        | VmExit::InternalError { .. }
        | VmExit::GuestCrash { .. }
        | VmExit::VcpuError { .. } => died(exit),
    }
}

/// For tests: the exec init script as shipped.
pub fn exec_init() -> &'static str {
    EXEC_INIT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --share-via's choice where no virtiofsd has to be found: image when
    /// asked, off KVM, for a GUEST the kernel command line cannot carry, or
    /// when the shares' words would not fit it; `virtio-fs` there is an
    /// error that says why.
    #[test]
    fn share_via_falls_back_or_says_why() {
        let plain = ShareSpec {
            host: "/tmp".into(),
            guest: "/w/x-1.d".into(),
            readonly: false,
        };
        let odd = ShareSpec {
            guest: "/w w".into(),
            ..plain.clone()
        };
        let vm = VmArgs::default()
            .check(ConsoleConfig::None, EXEC_CONSOLES, None)
            .unwrap();
        let full = VmArgs {
            cmdline: Some("x".repeat(1850)),
            ..VmArgs::default()
        }
        .check(ConsoleConfig::None, EXEC_CONSOLES, None)
        .unwrap();
        let live = |via, engine, s: &[ShareSpec], vm: &VmConfig| {
            live_shares(via, engine, s, vm, EXEC_CONSOLES).map(|l| l.is_some())
        };
        let one = std::slice::from_ref(&plain);
        assert!(!live(ShareVia::Image, Engine::Kvm, one, &vm).unwrap());
        assert!(!live(ShareVia::Auto, Engine::Tcg, one, &vm).unwrap());
        assert!(!live(
            ShareVia::Auto,
            Engine::Kvm,
            &[plain.clone(), odd.clone()],
            &vm
        )
        .unwrap());
        assert!(!live(ShareVia::VirtioFs, Engine::Kvm, &[], &vm).unwrap());
        assert!(!live(ShareVia::Auto, Engine::Kvm, one, &full).unwrap());
        let e = live(ShareVia::VirtioFs, Engine::Kvm, one, &full)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cmdline"), "{e}");
        let e = live(ShareVia::VirtioFs, Engine::Emulated, one, &vm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--share-via") && e.contains("KVM"), "{e}");
        let e = live(ShareVia::VirtioFs, Engine::Kvm, &[odd], &vm)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/w w is not a plain path"), "{e}");
        assert!(ShareVia::parse("nfs").is_err());
        assert_eq!(ShareVia::parse("virtio-fs").unwrap(), ShareVia::VirtioFs);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "0", "-1", "1.5", "m", "10d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn env_items() {
        std::env::set_var("KVMINI_TEST_ENV_PASS", "from host");
        let e = parse_env(&[
            "A=1".into(),
            "B=x=y".into(),
            "KVMINI_TEST_ENV_PASS".into(),
            "KVMINI_TEST_ENV_UNSET_XYZ".into(),
        ])
        .unwrap();
        assert_eq!(
            e,
            [
                ("A".to_string(), "1".to_string()),
                ("B".into(), "x=y".into()),
                ("KVMINI_TEST_ENV_PASS".into(), "from host".into())
            ]
        );
        for bad in ["=1", "1A=2", "A-B=3", ""] {
            assert!(parse_env(&[bad.into()]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn outcomes() {
        let tail = Tail::new(64);
        assert_eq!(
            interpret(&VmExit::Reset, Some(Status::Exit(42)), &tail),
            Outcome::Finished(42)
        );
        assert_eq!(
            interpret(
                &VmExit::TimedOut(Duration::from_secs(5)),
                Some(Status::Exit(0)),
                &tail
            ),
            Outcome::Failed(code::TIMEOUT)
        );
        assert_eq!(
            interpret(&VmExit::GuestPanic("Kernel panic".into()), None, &tail),
            Outcome::Failed(code::GUEST_DIED)
        );
        assert_eq!(
            interpret(
                &VmExit::TripleFault {
                    cpu: 0,
                    early: false,
                    report: String::new()
                },
                None,
                &tail
            ),
            Outcome::Failed(code::GUEST_DIED)
        );
        assert_eq!(
            interpret(&VmExit::PowerOff, None, &tail),
            Outcome::Failed(code::ERROR)
        );
        assert_eq!(
            interpret(&VmExit::Reset, Some(Status::Error("x".into())), &tail),
            Outcome::Failed(code::ERROR)
        );
        assert_eq!(
            interpret(&VmExit::HostSignal(15), None, &tail),
            Outcome::Failed(143)
        );
    }

    #[test]
    fn consoles_and_disks() {
        assert!(parse_console("stdout").is_err());
        assert_eq!(parse_console("none").unwrap(), ConsoleConfig::None);
        assert_eq!(
            parse_console("file=/tmp/c").unwrap(),
            ConsoleConfig::File("/tmp/c".into())
        );
        assert_eq!(guest_device(0), "/dev/vda");
        assert_eq!(guest_device(2), "/dev/vdc");
    }

    #[test]
    fn exec_init_is_a_valid_sh_script() {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", exec_init()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(exec_init().contains("/dev/hvc2"));
        assert!(exec_init().contains("/dev/hvc3"));
    }
}
