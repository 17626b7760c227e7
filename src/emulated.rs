//! The emulated fallback (`--accel emulated`, or `auto` on hosts without
//! vmx/svm): kvmini runs itself inside an emulated machine (QEMU TCG with an
//! SVM-capable CPU and nested KVM) and boots the guest there.
//!
//! The emulated machine ("L1") is a Debian cloud kernel with a busybox
//! initramfs that `resources/rig/emulated.sh` builds per run in a temporary
//! directory: it holds this very kvmini binary (with its shared libraries),
//! the guest kernel and initrd, and the inner command line. L1's /init
//! (`resources/rig/emulated-init`) loads kvm-amd and runs
//! `kvmini run --accel kvm ...` with the guest console on L1's first serial
//! port, which QEMU connects to our stdout (or the console file). The second
//! serial port carries everything else, out of band, into a file we follow:
//! the inner kvmini's stderr (forwarded to ours as it comes), L1's kernel
//! console (panics only), and `@@KVMINI-EMU` lines with progress and the
//! inner kvmini's exit status, which becomes ours.
//!
//! On a terminal, QEMU's console multiplexer owns the keyboard: Ctrl-A x
//! quits the emulated machine (and with it the VM), Ctrl-A Ctrl-A sends a
//! literal Ctrl-A.

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use crate::arch::x86_64::boot::{detect_kernel, BootError};
use crate::config::{Accel, ConsoleConfig, DiskConfig, VmConfig};
use crate::devices::virtio::block::backend::{self, DiskFile};
use crate::devices::virtio::block::guest_device;
use crate::guest::resources_dir;
use crate::outcome::{code, Outcome};
use crate::stop;
use kvmini_flags::vm_args;

/// Memory L1 needs on top of the guest's: its kernel and userland, KVM, and
/// the inner kvmini. The initramfs comes on top, twice (archive + unpacked).
const L1_OVERHEAD_MIB: u64 = 256;

/// Prefix of the report lines L1's /init writes on the second serial port.
const MARKER: &str = "@@KVMINI-EMU ";

/// How many of the inner kvmini's / L1's last diagnostic lines an error shows.
const TAIL_LINES: usize = 20;

/// With `--timeout`, how long L1 may take on top of it (its own boot, the
/// guest's) before the outer kvmini kills it; the inner kvmini enforces the
/// timeout itself and normally reports first.
const L1_BOOT_ALLOWANCE: Duration = Duration::from_secs(120);

/// L1's /init writes a heartbeat to its third serial port every 5 s. Nested
/// KVM under QEMU's software CPU sometimes livelocks the whole emulated
/// machine (docs/testing.md, "Known rig problem"); without a heartbeat for
/// this long (after the first one, or after L1_BOOT_ALLOWANCE before it),
/// QEMU is stopped and the run fails instead of hanging.
const HEARTBEAT_STALL: Duration = Duration::from_secs(60);

/// The streams of `kvmini exec`: Unix sockets QEMU connects to (its
/// virtio-serial ports `kvmini.stdout`, `kvmini.stderr` and, with writable
/// shares, `kvmini.share` in L1), copied to our stdout, stderr and the
/// share archive's spool.
struct ExecStreams {
    out: UnixListener,
    err: UnixListener,
    share: Option<(UnixListener, Box<dyn io::Write + Send>)>,
}

impl ExecStreams {
    fn listen(
        dir: &Path,
        qemu: &mut Command,
        share: Option<Box<dyn io::Write + Send>>,
    ) -> Result<Self, EmulatedError> {
        let bind = |name: &str| {
            let p = dir.join(format!("{name}.sock"));
            UnixListener::bind(&p).map_err(|e| EmulatedError::WriteArgs(p, e))
        };
        let (out, err) = (bind("stdout")?, bind("stderr")?);
        let share = match share {
            Some(to) => Some((bind("share")?, to)),
            None => None,
        };
        qemu.args(["-device", "virtio-serial-pci,id=kvmini-serial"]);
        let names: &[&str] = if share.is_some() {
            &["stdout", "stderr", "share"]
        } else {
            &["stdout", "stderr"]
        };
        for name in names {
            qemu.arg("-chardev")
                .arg(format!(
                    "socket,id={name},path={}",
                    qemu_path(&dir.join(format!("{name}.sock")))
                ))
                .args([
                    "-device",
                    &format!(
                        "virtserialport,bus=kvmini-serial.0,chardev={name},name=kvmini.{name}"
                    ),
                ]);
        }
        Ok(Self { out, err, share })
    }

    /// One thread per stream: accept QEMU's connection, copy until it
    /// closes (QEMU exits).
    fn copy(self) -> Vec<thread::JoinHandle<()>> {
        let pipe = |l: UnixListener, mut to: Box<dyn io::Write + Send>| {
            thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    if let Err(e) = io::copy(&mut s, &mut to) {
                        log::warn!("kvmini exec: output stream: {e}");
                    }
                    let _ = to.flush();
                }
            })
        };
        let mut copiers = vec![
            pipe(self.out, Box::new(io::stdout())),
            pipe(self.err, Box::new(io::stderr())),
        ];
        if let Some((l, to)) = self.share {
            copiers.push(pipe(l, to));
        }
        copiers
    }
}

/// How the wait for QEMU ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// QEMU exited by itself.
    Exited,
    /// The deadline passed; QEMU was told to quit.
    TimedOut,
    /// L1's heartbeat stopped; QEMU was told to quit.
    Froze,
}

/// Watches L1's heartbeat: a file QEMU appends to while L1 lives.
struct Heartbeat {
    path: PathBuf,
    /// Longest silence allowed once the first beat came.
    stall: Duration,
    /// Longest wait for the first beat (L1's own boot).
    first: Duration,
    size: u64,
    last_change: Instant,
    beating: bool,
}

impl Heartbeat {
    fn new(path: PathBuf, stall: Duration, first: Duration) -> Self {
        Heartbeat {
            path,
            stall,
            first,
            size: 0,
            last_change: Instant::now(),
            beating: false,
        }
    }

    /// True once the heartbeat has been silent for too long.
    fn stopped(&mut self) -> bool {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size != self.size {
            self.size = size;
            self.last_change = Instant::now();
            self.beating = true;
            return false;
        }
        let limit = if self.beating { self.stall } else { self.first };
        self.last_change.elapsed() > limit
    }
}

/// Waits for QEMU: polls it, and tells it to quit once the deadline passes
/// or the heartbeat stops. The child is only reaped here, on this thread,
/// so the pid signalled is still QEMU's.
fn watch(
    child: &mut Child,
    deadline: Option<Instant>,
    heartbeat: &mut Heartbeat,
) -> (io::Result<ExitStatus>, Ended) {
    let mut checked = Instant::now();
    loop {
        let stop = match child.try_wait() {
            Ok(Some(status)) => return (Ok(status), Ended::Exited),
            Err(e) => return (Err(e), Ended::Exited),
            Ok(None) if deadline.is_some_and(|d| Instant::now() >= d) => Some(Ended::TimedOut),
            Ok(None) if checked.elapsed() >= Duration::from_secs(1) => {
                checked = Instant::now();
                heartbeat.stopped().then_some(Ended::Froze)
            }
            Ok(None) => None,
        };
        let Some(ended) = stop else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        // SAFETY: kill(2) on our child, not yet reaped (try_wait just saw
        // it running and nothing else waits for it).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        return (child.wait(), ended);
    }
}

#[derive(Debug)]
pub enum EmulatedError {
    /// `--net` asked for: the emulated machine cannot reach the host's TAPs.
    NetNeedsKvm,
    /// The guest kernel is not something kvmini can boot.
    BadKernel(PathBuf, BootError),
    Disk(backend::Error),
    CurrentExe(io::Error),
    Signals(io::Error),
    TempDir(io::Error),
    WriteArgs(PathBuf, io::Error),
    MissingScript(PathBuf),
    Resources(String),
    Script(PathBuf, ExitStatus),
    SpawnScript(PathBuf, io::Error),
    ScriptOutput(PathBuf),
    SpawnQemu(io::Error),
    /// L1's /init could not run kvmini; its reason.
    L1Setup(String),
    /// L1 stopped its heartbeat (livelocked) and was stopped; what it was
    /// doing last (the inner kvmini running, or L1's own set-up before it).
    L1Froze(Duration, Option<String>),
    /// L1 ended without reporting kvmini's exit status.
    L1Died {
        last_step: Option<String>,
        qemu: ExitStatus,
        tail: Vec<String>,
    },
}

impl fmt::Display for EmulatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The disk errors name the image themselves.
            Self::Disk(e) => write!(f, "{e}"),
            Self::NetNeedsKvm => write!(
                f,
                "--net needs hardware KVM (vmx/svm): without it the VM runs inside an emulated \
                 machine (QEMU TCG), where kvmini cannot open this host's TAP devices, so the \
                 guest could not reach your network; run on a host with hardware \
                 virtualization, or drop --net"
            ),
            Self::BadKernel(p, e) => write!(
                f,
                "kernel '{}' cannot be booted: {e}; pass an x86_64 vmlinux (ELF) or bzImage",
                p.display()
            ),
            Self::CurrentExe(e) => write!(
                f,
                "emulated machine: cannot find kvmini's own executable to run inside it: {e}"
            ),
            Self::Signals(e) => write!(f, "emulated machine: cannot install signal handlers: {e}"),
            Self::TempDir(e) => write!(
                f,
                "emulated machine: cannot create a temporary directory (check TMPDIR): {e}"
            ),
            Self::WriteArgs(p, e) => write!(
                f,
                "emulated machine: cannot write '{}' (check TMPDIR): {e}",
                p.display()
            ),
            Self::Resources(e) => write!(f, "emulated machine: {e}"),
            Self::MissingScript(p) => write!(
                f,
                "emulated machine: its build script '{}' is missing; set KVMINI_RESOURCES \
                 to kvmini's resources/ directory",
                p.display()
            ),
            Self::SpawnScript(p, e) => write!(f, "cannot run '{}': {e}", p.display()),
            Self::Script(p, s) => write!(
                f,
                "preparing the emulated machine failed ('{}' {}); see its messages above",
                p.display(),
                describe(*s)
            ),
            Self::ScriptOutput(p) => write!(
                f,
                "'{}' did not print the L1 kernel and initramfs paths",
                p.display()
            ),
            Self::SpawnQemu(e) => write!(
                f,
                "cannot start qemu-system-x86_64 for the emulated machine: {e}; install \
                 Debian's qemu-system-x86"
            ),
            Self::L1Setup(why) => write!(f, "the emulated machine could not run the VM: {why}"),
            Self::L1Froze(stall, last_step) => write!(
                f,
                "the emulated machine stopped responding (no heartbeat for {} s; last step: \
                 {}) and was stopped: nested KVM under QEMU's software CPU sometimes \
                 freezes. Run the command again (disks keep what the guest flushed before \
                 the freeze; --share files were not copied back)",
                stall.as_secs(),
                last_step.as_deref().unwrap_or("booting its kernel")
            ),
            Self::L1Died {
                last_step,
                qemu,
                tail,
            } => {
                write!(
                    f,
                    "the emulated machine stopped without reporting the VM's exit status \
                     (qemu-system-x86_64 {}; last step: {})",
                    describe(*qemu),
                    last_step.as_deref().unwrap_or("booting its kernel")
                )?;
                if !tail.is_empty() {
                    write!(f, "; its last messages:")?;
                    for l in tail {
                        write!(f, "\n    {l}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for EmulatedError {}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Saves the terminal settings of stdin and puts them back on drop, in case
/// QEMU dies without restoring them itself.
struct SavedTerminal(Option<libc::termios>);

impl SavedTerminal {
    fn save() -> Self {
        if !io::stdin().is_terminal() {
            return Self(None);
        }
        // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open (it is a terminal) and `t` is a valid termios.
        let ok = unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0;
        Self(ok.then_some(t))
    }
}

impl Drop for SavedTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: `t` came from tcgetattr on the same fd 0.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
        }
    }
}

/// What L1 reported on its second serial port.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Report {
    status: Option<u8>,
    /// `kvmini exec`: the guest command's own status, when it finished.
    command_status: Option<u8>,
    error: Option<String>,
    last_step: Option<String>,
    tail: Vec<String>,
}

impl Report {
    /// Handles one line; returns it back if it is for the user's stderr.
    fn line<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        let line = line.trim_end_matches('\r');
        let Some(m) = line.strip_prefix(MARKER) else {
            if self.tail.len() == TAIL_LINES {
                self.tail.remove(0);
            }
            self.tail.push(line.to_string());
            return Some(line);
        };
        let (kind, rest) = m.split_once(' ').unwrap_or((m, ""));
        match kind {
            "stage" => self.last_step = Some(rest.to_string()),
            "error" => self.error = Some(rest.to_string()),
            "status" => self.status = rest.trim().parse().ok(),
            "command-status" => self.command_status = rest.trim().parse().ok(),
            _ => {}
        }
        None
    }

    fn l1_panicked(&self) -> bool {
        self.tail.iter().any(|l| l.contains("Kernel panic"))
    }
}

/// Follows the report file while QEMU runs: forwards diagnostic lines to
/// stderr as they come, and collects the markers. Ends at EOF after `done`.
/// `rename` maps L1's paths back to the user's (`/guest/kernel` -> theirs),
/// so the inner kvmini's messages name the files the user gave.
fn follow(mut file: File, done: Arc<AtomicBool>, rename: Vec<(String, String)>) -> Report {
    let mut report = Report::default();
    let emit = |report: &mut Report, bytes: &[u8]| {
        if let Some(l) = report.line(&String::from_utf8_lossy(bytes)) {
            let l = rename
                .iter()
                .fold(l.to_string(), |l, (from, to)| l.replace(from, to));
            eprintln!("{l}");
        }
    };
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let finished = done.load(Ordering::SeqCst);
        match file.read(&mut buf) {
            Ok(0) | Err(_) => {
                if finished {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    emit(&mut report, &line[..pos]);
                }
            }
        }
    }
    if !pending.is_empty() {
        emit(&mut report, &pending);
    }
    report
}

/// The inner kvmini's arguments: the same VM (the one [`vm_args`] that
/// every kvmini started by kvmini gets its flags from), on L1's /dev/kvm,
/// with the kernel, initrd and disks at the paths L1 has them (its
/// /guest/kernel, /guest/initrd, and the user's disks as L1's virtio disks
/// /dev/vda, /dev/vdb, ... in order: QEMU's `-drive`s below); its console
/// on its stdout (L1's first serial port; QEMU routes that where the user
/// asked).
fn inner_args(config: &VmConfig) -> Vec<String> {
    let in_l1 = VmConfig {
        kernel: "/guest/kernel".into(),
        initrd: config.initrd.as_ref().map(|_| "/guest/initrd".into()),
        accel: Accel::Kvm,
        disks: config
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| DiskConfig {
                path: guest_device(i).into(),
                ..d.clone()
            })
            .collect(),
        ..config.clone()
    };
    let mut a = vec!["run".to_string()];
    a.extend(vm_args(&in_l1));
    a
}

/// QEMU's `-chardev` option value quoting: commas are doubled.
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Runs the VM described by `config` inside the emulated machine; returns
/// kvmini's exit code from inside it.
pub fn run(config: &VmConfig) -> Result<u8, EmulatedError> {
    let args = inner_args(config);
    run_inner(config, &args, None, None).map(|(code, _)| code)
}

/// `kvmini exec` inside the emulated machine: the inner kvmini runs the
/// prepared VM (`exec --prepared`), the command's stdout and stderr come
/// back on two virtio-serial ports of L1, separately and byte for byte,
/// and the share archive (if `share` is given) on a third, into `share`.
pub fn run_exec(
    config: &VmConfig,
    timeout: Option<Duration>,
    console: &ConsoleConfig,
    share: Option<Box<dyn io::Write + Send>>,
) -> Result<Outcome, EmulatedError> {
    let mut args = inner_args(config);
    args[0] = "exec".into();
    args.splice(
        1..1,
        [
            "--prepared".into(),
            "--status-file".into(),
            "/tmp/kvmini-status".into(),
        ],
    );
    if let Some(t) = timeout {
        args.extend(["--timeout".into(), format!("{}s", t.as_secs())]);
    }
    if matches!(console, ConsoleConfig::File(_)) {
        // L1's first serial port, which QEMU writes to the user's file.
        args.extend(["--console".into(), "file=/dev/ttyS0".into()]);
    }
    if share.is_some() {
        // emulated-init links this to the port kvmini.share.
        args.extend(["--share-stream".into(), "/dev/kvmini-share".into()]);
    }
    let mut vm = config.clone();
    vm.console = console.clone();
    let (code, report) = run_inner(&vm, &args, Some(share), timeout)?;
    Ok(match report.and_then(|r| r.command_status) {
        Some(status) => Outcome::Finished(status),
        None => Outcome::Failed(code),
    })
}

/// Boots L1 with `inner` as the inner kvmini's arguments (`exec` is given
/// for `kvmini exec`: the command's streams come back through virtio-serial,
/// the share archive into the writer inside, if any); returns the exit code
/// and, when L1 reported, its report.
fn run_inner(
    config: &VmConfig,
    inner: &[String],
    exec: Option<Option<Box<dyn io::Write + Send>>>,
    timeout: Option<Duration>,
) -> Result<(u8, Option<Report>), EmulatedError> {
    // Fail fast on what the host can check before anything is installed
    // or booted.
    if !config.nets.is_empty() {
        return Err(EmulatedError::NetNeedsKvm);
    }
    File::open(&config.kernel)
        .map_err(BootError::ReadKernel)
        .and_then(|mut f| detect_kernel(&mut f))
        .map_err(|e| EmulatedError::BadKernel(config.kernel.clone(), e))?;
    // Disks are checked here as kvmini on hardware KVM checks them (missing,
    // unreadable, not a multiple of 512, locked by another kvmini).
    for d in &config.disks {
        drop(DiskFile::open(&d.path, d.readonly).map_err(EmulatedError::Disk)?);
    }
    stop::install().map_err(EmulatedError::Signals)?;
    let exe = std::env::current_exe().map_err(EmulatedError::CurrentExe)?;

    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-emulated."))
        .map_err(|e| EmulatedError::TempDir(io::Error::from_raw_os_error(e.errno())))?;
    let dir = tmp.as_path();
    let argv = dir.join("argv");
    std::fs::create_dir(&argv).map_err(|e| EmulatedError::WriteArgs(argv.clone(), e))?;
    for (i, a) in inner.iter().enumerate() {
        let p = argv.join(format!("{i:03}"));
        std::fs::write(&p, a).map_err(|e| EmulatedError::WriteArgs(p, e))?;
    }
    if let Ok(level) = std::env::var("RUST_LOG") {
        let p = dir.join("rust_log");
        std::fs::write(&p, level).map_err(|e| EmulatedError::WriteArgs(p, e))?;
    }

    let (vmlinuz, initramfs) = prepare(dir, &exe, config)?;
    if let Some(code) = stop::signalled() {
        return Ok((code, None));
    }
    let l1_size = std::fs::metadata(&initramfs).map_or(0, |m| m.len());
    let report_path = dir.join("l1-report");
    File::create(&report_path).map_err(|e| EmulatedError::WriteArgs(report_path.clone(), e))?;
    let report_file =
        File::open(&report_path).map_err(|e| EmulatedError::WriteArgs(report_path.clone(), e))?;

    let heartbeat_path = dir.join("l1-heartbeat");
    let mut qemu = qemu_command(
        config,
        &vmlinuz,
        &initramfs,
        [&report_path, &heartbeat_path],
        l1_size,
    );
    let streams = match exec {
        Some(share) => Some(ExecStreams::listen(dir, &mut qemu, share)?),
        None => None,
    };
    let interactive =
        streams.is_none() && config.console == ConsoleConfig::Stdout && io::stdin().is_terminal();
    log::info!("starting the emulated machine: {qemu:?}");
    let terminal = SavedTerminal::save();
    let mut child = qemu.spawn().map_err(EmulatedError::SpawnQemu)?;
    stop::set_child(child.id() as i32);
    if stop::signalled().is_some() {
        // The signal came while we were spawning; the handler missed QEMU.
        // SAFETY: the child is not reaped yet, so the pid is still QEMU's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }

    let done = Arc::new(AtomicBool::new(false));
    let follower = {
        let done = done.clone();
        let mut rename = vec![(
            "'/guest/kernel'".to_string(),
            format!("'{}'", config.kernel.display()),
        )];
        if let Some(i) = &config.initrd {
            rename.push(("'/guest/initrd'".into(), format!("'{}'", i.display())));
        }
        thread::spawn(move || follow(report_file, done, rename))
    };
    let copiers = streams.map(ExecStreams::copy);
    let deadline = timeout.map(|t| Instant::now() + t + L1_BOOT_ALLOWANCE);
    let mut heartbeat = Heartbeat::new(heartbeat_path, HEARTBEAT_STALL, L1_BOOT_ALLOWANCE);
    let (waited, ended) = watch(&mut child, deadline, &mut heartbeat);
    stop::set_child(0);
    for c in copiers.into_iter().flatten() {
        let _ = c.join();
    }
    drop(terminal);
    done.store(true, Ordering::SeqCst);
    let report = follower.join().unwrap_or_default();
    let qemu_status = waited.map_err(EmulatedError::SpawnQemu)?;
    drop(tmp);

    if let Some(status) = report.status {
        return Ok((status, Some(report)));
    }
    if let Some(code) = stop::signalled() {
        return Ok((code, None));
    }
    if ended == Ended::Froze {
        return Err(EmulatedError::L1Froze(HEARTBEAT_STALL, report.last_step));
    }
    if ended == Ended::TimedOut {
        eprintln!(
            "kvmini: the emulated machine did not finish within the --timeout (plus {}s \
             for its own start); it was killed",
            L1_BOOT_ALLOWANCE.as_secs()
        );
        return Ok((code::EXEC_TIMEOUT, None));
    }
    if let Some(why) = report.error {
        return Err(EmulatedError::L1Setup(why));
    }
    // QEMU exits 0 both when L1 powers off and when the user quits with
    // Ctrl-A x; only the latter leaves L1 with kvmini running and no panic.
    if interactive && qemu_status.success() && report.last_step.is_some() && !report.l1_panicked() {
        eprintln!("kvmini: the emulated machine was quit with Ctrl-A x");
        return Ok((code::USER_QUIT, None));
    }
    Err(EmulatedError::L1Died {
        last_step: report.last_step,
        qemu: qemu_status,
        tail: report.tail,
    })
}

/// Runs emulated.sh: installs what is missing and writes the L1 initramfs.
/// Returns the L1 kernel and initramfs paths.
fn prepare(dir: &Path, exe: &Path, config: &VmConfig) -> Result<(PathBuf, PathBuf), EmulatedError> {
    let script = resources_dir()
        .map_err(|e| EmulatedError::Resources(e.to_string()))?
        .join("rig/emulated.sh");
    if !script.is_file() {
        return Err(EmulatedError::MissingScript(script));
    }
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg("--out")
        .arg(dir)
        .arg("--kvmini")
        .arg(exe)
        .arg("--kernel")
        .arg(&config.kernel);
    if let Some(initrd) = &config.initrd {
        cmd.arg("--initrd").arg(initrd);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| EmulatedError::SpawnScript(script.clone(), e))?;
    if !out.status.success() {
        return Err(EmulatedError::Script(script, out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(k), Some(i)) => Ok((PathBuf::from(k), PathBuf::from(i))),
        _ => Err(EmulatedError::ScriptOutput(script)),
    }
}

fn qemu_command(
    config: &VmConfig,
    vmlinuz: &Path,
    initramfs: &Path,
    [report, heartbeat]: [&Path; 2],
    initramfs_bytes: u64,
) -> Command {
    let mib = (config.memory_bytes >> 20) + L1_OVERHEAD_MIB + 2 * (initramfs_bytes >> 20);
    let mut q = Command::new("qemu-system-x86_64");
    // -cpu max: TCG emulates AMD SVM with nested paging, so kvm-amd loads.
    // -nodefaults/-nic none: only the devices below; L1 has no network.
    q.args(["-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-m", &format!("{mib}M")])
        // One vCPU whatever the guest has: with two, L1 froze far more
        // often (docs/testing.md); the guest's vCPUs share it.
        .args(["-smp", "1"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ]);
    let interactive = config.console == ConsoleConfig::Stdout && io::stdin().is_terminal();
    match &config.console {
        ConsoleConfig::Stdout if interactive => {
            // The multiplexer gives Ctrl-A x (quit); signal=off: Ctrl-C
            // goes to the guest, as with hardware KVM.
            q.args(["-chardev", "stdio,id=con,mux=on,signal=off"])
                .args([
                    "-serial",
                    "chardev:con",
                    "-mon",
                    "chardev=con,mode=readline",
                ])
                .stdin(Stdio::inherit());
        }
        ConsoleConfig::Stdout => {
            q.args(["-chardev", "stdio,id=con,signal=off"])
                .args(["-serial", "chardev:con"])
                .stdin(Stdio::inherit());
        }
        ConsoleConfig::File(p) => {
            q.arg("-chardev")
                .arg(format!("file,id=con,path={}", qemu_path(p)))
                .args(["-serial", "chardev:con"])
                .stdin(Stdio::null());
        }
        ConsoleConfig::None => {
            q.args(["-serial", "null"]).stdin(Stdio::null());
        }
    }
    for (i, d) in config.disks.iter().enumerate() {
        // Raw, unbuffered by QEMU (cache=none would need O_DIRECT-aligned
        // images): what the guest flushes reaches the host file.
        q.arg("-drive").arg(format!(
            "file={},if=none,id=disk{i},format=raw,cache=writeback{}",
            qemu_path(&d.path),
            if d.readonly { ",readonly=on" } else { "" }
        ));
        q.args(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
    }
    q.arg("-chardev")
        .arg(format!("file,id=report,path={}", qemu_path(report)))
        .args(["-serial", "chardev:report"])
        .arg("-chardev")
        .arg(format!("file,id=heartbeat,path={}", qemu_path(heartbeat)))
        .args(["-serial", "chardev:heartbeat"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // L1's own console is the report port, and silent but for panics:
        // the guest console (ttyS0) carries only what the guest writes.
        .args(["-append", "console=ttyS1 quiet loglevel=0 panic=-1"]);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe
    // and touches no memory of the parent.
    unsafe {
        q.pre_exec(|| {
            // QEMU dies with us, even if we are SIGKILLed: no orphans.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn_sh(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    fn temp_file(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("kvmini-hb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Appends a beat to `path` every 100 ms until the flag is set: a
    /// heartbeat that keeps going however loaded the machine is (a thread,
    /// not a shell forking `sleep`), far inside the stall limits below.
    fn beat(path: PathBuf) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let _ = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| std::io::Write::write_all(&mut f, b"."));
                thread::sleep(Duration::from_millis(100));
            }
        });
        (stop, t)
    }

    #[test]
    fn watch_stops_qemu_when_the_heartbeat_stops() {
        let path = temp_file("silent");
        // Beats twice, then goes silent but keeps running (for 10 minutes:
        // only the watch can end it early, with SIGTERM).
        let mut child = spawn_sh(&format!(
            "echo . >>{p}; sleep 0.3; echo . >>{p}; exec sleep 600",
            p = path.display()
        ));
        let mut hb = Heartbeat::new(path.clone(), Duration::from_secs(2), Duration::from_secs(5));
        let (status, ended) = watch(&mut child, None, &mut hb);
        assert_eq!(ended, Ended::Froze);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn watch_waits_while_the_heartbeat_goes_on() {
        let path = temp_file("beating");
        // Runs 5 s, longer than the 2 s stall limit, while a beat comes
        // every 0.1 s: only a watch that ignores the heartbeat stops it.
        let (stop, beater) = beat(path.clone());
        let mut child = spawn_sh("sleep 5; exit 7");
        let mut hb = Heartbeat::new(path.clone(), Duration::from_secs(2), Duration::from_secs(2));
        let (status, ended) = watch(&mut child, None, &mut hb);
        stop.store(true, Ordering::SeqCst);
        let _ = beater.join();
        assert_eq!(ended, Ended::Exited);
        assert_eq!(status.unwrap().code(), Some(7));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn watch_gives_l1_time_for_its_first_beat_then_stops_it() {
        let path = temp_file("never");
        let mut child = spawn_sh("exec sleep 600");
        let mut hb = Heartbeat::new(path, Duration::from_secs(1), Duration::from_secs(3));
        let started = Instant::now();
        let (status, ended) = watch(&mut child, None, &mut hb);
        assert_eq!(ended, Ended::Froze);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        // Not at the 1 s stall limit: the first beat may take 3 s. (A lower
        // bound: load can only make it later.)
        assert!(started.elapsed() >= Duration::from_secs(3));
    }

    #[test]
    fn watch_stops_qemu_at_the_deadline() {
        let path = temp_file("deadline");
        // Beating, and a stall limit far beyond the 1 s deadline: only the
        // deadline can end it.
        let (stop, beater) = beat(path.clone());
        let mut child = spawn_sh("exec sleep 600");
        let mut hb = Heartbeat::new(
            path.clone(),
            Duration::from_secs(300),
            Duration::from_secs(300),
        );
        let deadline = Instant::now() + Duration::from_secs(1);
        let (status, ended) = watch(&mut child, Some(deadline), &mut hb);
        stop.store(true, Ordering::SeqCst);
        let _ = beater.join();
        assert_eq!(ended, Ended::TimedOut);
        assert_eq!(status.unwrap().signal(), Some(libc::SIGTERM));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn inner_args_carry_every_flag_with_l1_paths() {
        let config = VmConfig {
            kernel: "/home/me/vmlinux".into(),
            initrd: Some("/home/me/initrd".into()),
            memory_bytes: 256 << 20,
            vcpus: 2,
            cmdline: format!("{} -- echo 'a b'", crate::config::DEFAULT_CMDLINE),
            console: ConsoleConfig::Stdout,
            accel: Accel::Auto,
            disks: vec![
                DiskConfig {
                    path: "/home/me/a.img".into(),
                    readonly: true,
                    limit: Default::default(),
                },
                DiskConfig {
                    path: "/home/me/b.img".into(),
                    readonly: false,
                    limit: crate::devices::virtio::block::RateLimit {
                        ops: Some(100),
                        bytes: None,
                    },
                },
            ],
            nets: vec![],
            shutdown_timeout: Duration::from_secs(7),
            seccomp: crate::config::Seccomp::Off,
        };
        let a = inner_args(&config);
        assert_eq!(
            a,
            [
                "run",
                "--kernel",
                "/guest/kernel",
                "--initrd",
                "/guest/initrd",
                "--memory",
                "256M",
                "--cpus",
                "2",
                "--accel",
                "kvm",
                "--shutdown-timeout",
                "7s",
                "--seccomp",
                "off",
                "--cmdline",
                "-- echo 'a b'",
                "--disk",
                "path=/dev/vda,readonly=on",
                "--disk",
                "path=/dev/vdb,iops=100",
            ]
        );
        let plain = VmConfig {
            initrd: None,
            cmdline: crate::config::DEFAULT_CMDLINE.into(),
            ..config
        };
        let a = inner_args(&plain);
        assert!(!a.contains(&"--cmdline".to_string()));
        assert!(!a.contains(&"--initrd".to_string()));
    }

    #[test]
    fn report_lines() {
        let mut r = Report::default();
        assert_eq!(r.line("@@KVMINI-EMU stage loading kvm\r"), None);
        assert_eq!(r.line("kvmini: error: boom\r"), Some("kvmini: error: boom"));
        assert_eq!(r.line("@@KVMINI-EMU status 3"), None);
        assert_eq!(r.status, Some(3));
        assert_eq!(r.last_step.as_deref(), Some("loading kvm"));
        assert_eq!(r.tail, ["kvmini: error: boom"]);
        assert!(!r.l1_panicked());
        r.line("@@KVMINI-EMU error insmod kvm.ko failed");
        assert_eq!(r.error.as_deref(), Some("insmod kvm.ko failed"));
        for i in 0..30 {
            r.line(&format!("line {i}"));
        }
        assert_eq!(r.tail.len(), TAIL_LINES);
        assert_eq!(r.tail.last().map(String::as_str), Some("line 29"));
    }

    #[test]
    fn qemu_paths_escape_commas() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }
}
