//! The emulated machine (`--accel emulated`; `auto` picks the direct
//! software-CPU engine, [`crate::tcg`], instead): kvmini runs itself
//! inside an emulated machine (QEMU TCG with an SVM-capable CPU and nested
//! KVM) and boots the guest there.
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
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use crate::arch::x86_64::boot::{detect_kernel, BootError};
use crate::config::{Accel, ConsoleConfig, DiskConfig, VmConfig};
use crate::devices::virtio::block::backend::{self, DiskFile};
use crate::devices::virtio::block::guest_device;
use crate::devices::virtio::net::{passt, NetBackend, PortForward};
use crate::guest::resources_dir;
use crate::outcome::{code, Outcome};
use crate::qemu::streams::{Sink, Streams};
use crate::qemu::supervise::{watch, Ended, Heartbeat};
use crate::qemu::{describe, qemu_path, SavedTerminal};
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

#[derive(Debug)]
pub enum EmulatedError {
    /// `--net` asked for: the emulated machine cannot reach the host's TAPs.
    NetNeedsKvm,
    /// `--net user`: the emulated machine's own passt could not start.
    Passt(passt::Error),
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
                "--net tap= needs hardware KVM (vmx/svm): without it the VM runs inside an \
                 emulated machine (QEMU TCG), where kvmini cannot open this host's TAP \
                 devices; use --net user (passt), or a host with hardware virtualization"
            ),
            Self::Passt(e) => write!(f, "--net user: {e}"),
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
    if config
        .nets
        .iter()
        .any(|n| matches!(n.backend, NetBackend::Tap(_)))
    {
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

    // User-mode NICs: L1 gets one NIC on a passt here that forwards every
    // forwarded host port to the same port of L1, where the inner kvmini's
    // own passt takes it on to the guest (emulated-init gives that one
    // --no-map-gw: the guest's gateway is then this host's loopback).
    let forwards: Vec<PortForward> = config
        .nets
        .iter()
        .flat_map(|n| match &n.backend {
            NetBackend::User(f) => f.clone(),
            NetBackend::Tap(_) => Vec::new(),
        })
        .map(|f| PortForward {
            host: f.host,
            guest: f.host,
        })
        .collect();
    let user_net = config
        .nets
        .iter()
        .any(|n| matches!(n.backend, NetBackend::User(_)));
    let l1_passt = if user_net {
        // The same host ports and host checks as the NICs': launch::engine
        // made them.
        let bin = passt::find_passt().map_err(EmulatedError::Passt)?;
        Some(passt::spawn(&bin, &forwards).map_err(EmulatedError::Passt)?)
    } else {
        None
    };
    let (vmlinuz, initramfs) = prepare(dir, &exe, config, user_net)?;
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
        user_net,
    );
    if let Some((sock, _)) = &l1_passt {
        let fd = sock.as_raw_fd();
        crate::qemu::inherit_fds(&mut qemu, vec![fd]);
        qemu.arg("-netdev")
            .arg(format!(
                "stream,id=l1net,server=off,addr.type=fd,addr.str={fd}"
            ))
            .args(["-device", "virtio-net-pci,netdev=l1net"]);
    }
    let streams = match exec {
        Some(share) => Some(exec_streams(dir, &mut qemu, share)?),
        None => None,
    };
    let interactive =
        streams.is_none() && config.console == ConsoleConfig::Stdout && io::stdin().is_terminal();
    log::info!("starting the emulated machine: {qemu:?}");
    let terminal = SavedTerminal::save();
    let mut child = crate::qemu::spawn(&mut qemu).map_err(EmulatedError::SpawnQemu)?;
    // QEMU holds L1's end of passt's socket now; ours would keep passt up.
    let mut l1_passt = l1_passt.map(|(_, child)| child);

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
    let copiers = streams.map(Streams::copy);
    // (A limit too large to add to a clock is no limit.)
    let deadline = timeout.and_then(|t| {
        Instant::now()
            .checked_add(t)?
            .checked_add(L1_BOOT_ALLOWANCE)
    });
    let mut heartbeat = Heartbeat::new(heartbeat_path, HEARTBEAT_STALL, L1_BOOT_ALLOWANCE);
    let (waited, ended) = watch(&mut child, deadline, &mut heartbeat);
    stop::set_child(0);
    if let Some(c) = copiers {
        c.finish();
    }
    drop(terminal);
    if let Some(p) = l1_passt.as_mut() {
        let _ = p.kill();
        let _ = p.wait();
    }
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
fn prepare(
    dir: &Path,
    exe: &Path,
    config: &VmConfig,
    user_net: bool,
) -> Result<(PathBuf, PathBuf), EmulatedError> {
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
    if user_net {
        cmd.arg("--user-net");
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
    user_net: bool,
) -> Command {
    let mib = (config.memory_bytes >> 20) + L1_OVERHEAD_MIB + 2 * (initramfs_bytes >> 20);
    let mut q = crate::qemu::command();
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
        .arg("-append")
        .arg(format!(
            "console=ttyS1 quiet loglevel=0 panic=-1{}",
            if user_net { " kvmini.dhcp=eth0" } else { "" }
        ));
    q
}

/// `kvmini exec`'s streams out of L1: virtio-serial ports named
/// `kvmini.stdout`, `kvmini.stderr` and, with writable shares,
/// `kvmini.share` (emulated-init finds them by name), backed by sockets
/// copied to our stdout, stderr and the share archive's spool.
fn exec_streams(
    dir: &Path,
    qemu: &mut Command,
    share: Option<Sink>,
) -> Result<Streams, EmulatedError> {
    let mut sinks: Vec<(&str, Sink)> = vec![
        ("stdout", Box::new(io::stdout())),
        ("stderr", Box::new(io::stderr())),
    ];
    if let Some(to) = share {
        sinks.push(("share", to));
    }
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.to_string()).collect();
    let streams = Streams::listen(dir, qemu, sinks)
        .map_err(|e| EmulatedError::WriteArgs(dir.to_path_buf(), e))?;
    qemu.args(["-device", "virtio-serial-pci,id=kvmini-serial"]);
    for name in names {
        qemu.args([
            "-device",
            &format!("virtserialport,bus=kvmini-serial.0,chardev={name},name=kvmini.{name}"),
        ]);
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            fs: vec![],
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
}
