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
use std::time::Duration;

use vmm_sys_util::tempdir::TempDir;

use crate::cli::{ExecArgs, RunArgs};
use crate::config::{self, ConfigError, ConsoleConfig, DiskConfig, VmConfig, MAX_VIRTIO_DEVICES};
use crate::devices::virtio::block::guest_device;
use crate::emulated::{self, EmulatedError};
use crate::guest::{self, GuestError};
use crate::vmm::{self, exit::VmExit, Extras};
use capture::{CaptureError, Spool, Status, StatusChannel, Tail, Tee};
use share::{CopyBack, ShareError, ShareSpec};

/// `kvmini exec`'s own exit codes (the command's status passes through).
pub mod code {
    /// The guest kernel panicked or the VM crashed.
    pub const GUEST_DIED: u8 = 123;
    /// `--timeout` expired.
    pub const TIMEOUT: u8 = 124;
    /// kvmini could not run the command.
    pub const ERROR: u8 = 125;
}

/// The guest side: installed as /kvmini/init in the extra archive.
const EXEC_INIT: &str = include_str!("../../resources/rootfs/exec-init");

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
    TooManyDevices(usize),
    Config(ConfigError),
    Guest(GuestError),
    Share(ShareError),
    Capture(CaptureError),
    Io(PathBuf, io::Error),
    Vmm(vmm::Error),
    Emulated(EmulatedError),
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
            Self::TooManyDevices(n) => write!(
                f,
                "{n} disks and shares are too many: at most {} fit besides exec's consoles",
                MAX_VIRTIO_DEVICES - EXEC_CONSOLES
            ),
            Self::Config(e) => write!(f, "{e}"),
            Self::Guest(e) => write!(f, "{e}"),
            Self::Share(e) => write!(f, "{e}"),
            Self::Capture(e) => write!(f, "{e}"),
            Self::Io(p, e) => write!(f, "cannot write '{}': {e} (check TMPDIR)", p.display()),
            Self::Vmm(e) => write!(f, "{e}"),
            Self::Emulated(e) => write!(f, "{e}"),
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

/// How a VM run ended, from exec's point of view.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran to the end with this status; shares may be copied back.
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

/// Runs `kvmini exec`; returns the exit code.
pub fn main(args: ExecArgs) -> u8 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmini: error: {e}");
            code::ERROR
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
    let shares = args
        .shares
        .iter()
        .map(|s| ShareSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ExecError::Share)?;
    let devices =
        args.disks.len() + args.nets.len() + usize::from(args.rootfs.is_some()) + shares.len();
    if devices + EXEC_CONSOLES > MAX_VIRTIO_DEVICES {
        return Err(ExecError::TooManyDevices(devices));
    }
    // Refuse --accel kvm here before building anything.
    let hw = config::Accel::parse(&args.accel)
        .and_then(|a| a.resolve(crate::arch::x86_64::cpuid::host_has_hw_virt()))
        .map_err(ExecError::Config)?;
    let kernel = match args.kernel.clone() {
        Some(k) => k,
        None => guest::default_kernel().map_err(ExecError::Guest)?,
    };
    let base_initrd = match args.initrd.clone() {
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
    let mut disks = args.disks.clone();
    let mut attach = |path: PathBuf, readonly: bool| {
        disks.push(DiskConfig { path, readonly }.to_arg());
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
    let base = std::fs::read(&base_initrd).map_err(|e| {
        ExecError::Config(ConfigError::InitrdMissing(
            base_initrd.clone(),
            e.to_string(),
        ))
    })?;
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, cpio::append(base, &extra))
        .map_err(|e| ExecError::Io(initrd.clone(), e))?;

    let vm = vm_config(&args, kernel, initrd, disks)?;
    let outcome = if hw {
        run_kvm(&vm, timeout, &console, Box::new(spool.clone()))?
    } else {
        if vm.accel == config::Accel::Auto {
            emulated::announce_fallback();
        }
        let share_out = (!writable.is_empty()).then(|| Box::new(spool.clone()) as _);
        emulated::run_exec(&vm, timeout, &console, share_out).map_err(ExecError::Emulated)?
    };

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
    Ok(outcome.code())
}

/// The VM for `kvmini exec`: run's validation, exec's kernel parameters.
fn vm_config(
    args: &ExecArgs,
    kernel: PathBuf,
    initrd: PathBuf,
    disks: Vec<String>,
) -> Result<VmConfig, ExecError> {
    let mut cmdline = EXEC_CMDLINE.to_string();
    if let Some(extra) = args.cmdline.as_deref().filter(|c| !c.trim().is_empty()) {
        cmdline = format!("{cmdline} {extra}");
    }
    let run = RunArgs {
        kernel: Some(kernel),
        initrd: Some(initrd),
        memory: args.memory.clone(),
        cpus: args.cpus,
        cmdline: Some(cmdline),
        accel: args.accel.clone(),
        disks,
        nets: args.nets.clone(),
        console: "none".into(),
        shutdown_timeout: args.shutdown_timeout.clone(),
    };
    crate::flags::vm_config(&run, config::host_memory_bytes()).map_err(ExecError::Config)
}

/// Inside the emulated machine: everything was prepared by the outer kvmini.
fn run_prepared(
    args: &ExecArgs,
    timeout: Option<Duration>,
    console: &ConsoleConfig,
) -> Result<u8, ExecError> {
    let (Some(kernel), Some(initrd)) = (args.kernel.clone(), args.initrd.clone()) else {
        return Err(ExecError::Config(ConfigError::NoKernel));
    };
    let mut vm = vm_config(args, kernel, initrd, args.disks.clone())?;
    // The outer kvmini already added exec's parameters.
    vm.cmdline = vm.cmdline.replacen(&format!(" {EXEC_CMDLINE}"), "", 1);
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
    let outcome = run_kvm(&vm, timeout, console, share_out)?;
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
/// the share archive goes to `share_out`.
pub fn run_kvm(
    vm: &VmConfig,
    timeout: Option<Duration>,
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
    };
    let exit = vmm::run_with(vm, extras).map_err(ExecError::Vmm)?;
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
    match (exit, status) {
        (VmExit::Reset | VmExit::PowerOff, Some(Status::Exit(n))) => Outcome::Finished(n),
        (VmExit::TimedOut(d), _) => {
            eprintln!(
                "kvmini: the command did not finish within {}s (--timeout); the VM was killed",
                d.as_secs()
            );
            show_tail();
            Outcome::Failed(code::TIMEOUT)
        }
        (VmExit::HostSignal(s), _) => {
            eprintln!("kvmini: {exit}");
            Outcome::Failed(128u8.saturating_add(*s as u8))
        }
        // SIGTERM pressed an ACPI guest's power button (issue 15).
        (VmExit::GuestShutDown { signal } | VmExit::ShutdownTimedOut { signal, .. }, _) => {
            eprintln!("kvmini: {exit}");
            Outcome::Failed(128u8.saturating_add(*signal as u8))
        }
        (VmExit::Reset | VmExit::PowerOff, Some(Status::Error(why))) => {
            eprintln!("kvmini: the guest could not run the command: {why}");
            show_tail();
            Outcome::Failed(code::ERROR)
        }
        (VmExit::Reset | VmExit::PowerOff, None) => {
            eprintln!("kvmini: the guest stopped before the command finished");
            show_tail();
            Outcome::Failed(code::ERROR)
        }
        (exit, _) => {
            // Panic or crash.
            eprintln!("kvmini: {exit}");
            show_tail();
            Outcome::Failed(code::GUEST_DIED)
        }
    }
}

/// For tests: the exec init script as shipped.
pub fn exec_init() -> &'static str {
    EXEC_INIT
}

#[cfg(test)]
mod tests {
    use super::*;

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
            interpret(&VmExit::TripleFault { cpu: 0 }, None, &tail),
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
