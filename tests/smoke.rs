//! Tier 2: KVM smoke tests. Tiny guests, assembled here byte by byte, boot
//! through the real `kvmini` binary on any `/dev/kvm` (including the
//! software-assisted one on the project's machines): serial output, the
//! i8042 reset, a triple fault, an emulation failure, and bad input.
//!
//! These need `/dev/kvm`; without it they fail with a message saying so,
//! because a test that cannot run must not pass. Every kvmini run has a
//! time limit: a hang fails its test instead of stalling `cargo test`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::tempfile::TempFile;

mod common;
use common::{elf, lflags, open_pty, print, HALT, RESET};

fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "SMOKE TEST NOT RUN: /dev/kvm is missing on this host; \
         these tests need KVM (load kvm_intel/kvm_amd)"
    );
}

fn kvmini() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvmini"))
}

fn write_kernel(bytes: &[u8]) -> TempFile {
    let f = TempFile::new().unwrap();
    std::fs::write(f.as_path(), bytes).unwrap();
    f
}

/// Longest any kvmini run here may take: these guests run for milliseconds,
/// so reaching it means kvmini hung (the test fails, naming the command).
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Waits for `child` at most until `deadline`; kills it and panics past it.
fn wait_limited(child: &mut Child, what: &str, deadline: Instant) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for kvmini") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_LIMIT:?}: killed (kvmini hung?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin /dev/null) to completion within RUN_LIMIT.
fn output_limited(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kvmini");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_limited(&mut child, &what, Instant::now() + RUN_LIMIT);
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn run_kernel(kernel: &Path, extra: &[&str]) -> Output {
    run_kernel_accel(kernel, "kvm-any", extra)
}

/// `accel`: kvm-any, because these guests run on any /dev/kvm, hardware or
/// software, unless a test is about `--accel` itself.
fn run_kernel_accel(kernel: &Path, accel: &str, extra: &[&str]) -> Output {
    let out = output_limited(
        kvmini()
            .args(["run", "--accel", accel, "--memory", "32M", "--kernel"])
            .arg(kernel)
            .args(extra),
    );
    eprintln!(
        "kvmini exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn hello_guest() -> Vec<u8> {
    let mut code = print(b"hello from a tiny guest\n");
    code.extend_from_slice(&RESET);
    elf(&code)
}

#[test]
fn serial_output_and_reset_exit() {
    require_kvm();
    let k = write_kernel(&hello_guest());
    let out = run_kernel(k.as_path(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a tiny guest\n"
    );
}

#[test]
fn two_vcpus_stop_on_reset() {
    require_kvm();
    let k = write_kernel(&hello_guest());
    let out = run_kernel(k.as_path(), &["--cpus", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from a tiny guest"));
}

#[test]
fn console_to_file() {
    require_kvm();
    let k = write_kernel(&hello_guest());
    let log = TempFile::new().unwrap();
    let dest = format!("file={}", log.as_path().display());
    let out = run_kernel(k.as_path(), &["--console", &dest]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(log.as_path()).unwrap(),
        "hello from a tiny guest\n"
    );
}

#[test]
fn console_none_discards_the_output() {
    require_kvm();
    // The guest prints, then resets: exit 0 means it got past its output.
    let k = write_kernel(&hello_guest());
    let out = run_kernel(k.as_path(), &["--console", "none"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.is_empty(),
        "--console none printed: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("hello from a tiny guest"),
        "console output went to stderr"
    );
}

/// Starts a guest that prints `ready` and then halts forever; returns once
/// it has printed (or panics after RUN_LIMIT).
fn start_halting_guest(kernel: &Path, stdin: Stdio) -> Child {
    let mut child = kvmini()
        .args(["run", "--accel", "kvm-any", "--memory", "32M", "--kernel"])
        .arg(kernel)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start kvmini");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("ready") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(RUN_LIMIT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the guest never printed its ready line");
    }
    child
}

fn halting_guest() -> Vec<u8> {
    let mut code = print(b"ready\n");
    code.extend_from_slice(&HALT);
    elf(&code)
}

#[test]
fn sigterm_and_sigint_stop_the_vm_with_128_plus_n() {
    require_kvm();
    // README: 128+N for host signal N, SIGTERM and SIGINT stopping the VM
    // cleanly (an exit status, not death by the signal).
    let k = write_kernel(&halting_guest());
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let mut child = start_halting_guest(k.as_path(), Stdio::null());
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let ret = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(ret, 0, "kill: {}", std::io::Error::last_os_error());
        let status = wait_limited(
            &mut child,
            "kvmini after a signal",
            Instant::now() + RUN_LIMIT,
        );
        let mut err = String::new();
        let _ = child
            .stderr
            .take()
            .expect("piped stderr")
            .read_to_string(&mut err);
        assert_eq!(status.code(), Some(code), "signal {sig}: {status}; {err}");
        assert!(
            err.contains(&format!("terminated by signal {sig}")),
            "{err}"
        );
    }
}

#[test]
fn ctrl_a_x_quits_with_130_and_restores_the_terminal() {
    require_kvm();
    use std::io::Write;
    let k = write_kernel(&halting_guest());
    // stdin is a terminal: the console is interactive, the escape active.
    let (mut master, slave) = open_pty();
    let before = lflags(&slave);
    let stdin = Stdio::from(slave.try_clone().expect("cannot dup the pty"));
    let mut child = start_halting_guest(k.as_path(), stdin);
    // The guest runs, so the terminal is raw: type the escape.
    assert_eq!(
        lflags(&slave) & libc::ICANON,
        0,
        "terminal not raw while the VM runs"
    );
    master
        .write_all(b"\x01x")
        .expect("cannot type into the pty");
    let status = wait_limited(
        &mut child,
        "kvmini with Ctrl-A x typed",
        Instant::now() + RUN_LIMIT,
    );
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err);
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert!(
        err.contains("terminated from the console (Ctrl-A x)"),
        "{err}"
    );
    assert_eq!(lflags(&slave), before, "terminal settings not restored");
}

#[test]
fn triple_fault_is_a_clear_error() {
    require_kvm();
    // `ud2` with no usable IDT: #UD, then #GP, #DF, triple fault.
    let mut code = print(b"about to fault\n");
    code.extend_from_slice(&[0x0f, 0x0b]);
    let k = write_kernel(&elf(&code));
    let out = run_kernel(k.as_path(), &[]);
    assert_eq!(out.status.code(), Some(3), "guest crashes exit 3");
    assert!(String::from_utf8_lossy(&out.stdout).contains("about to fault"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vcpu0: the guest triple-faulted"), "{err}");
    // The report: registers, control and segment state, pending events,
    // and the serial writes that came before the fault.
    for want in [
        "vcpu0 at KVM_EXIT_SHUTDOWN",
        "rip=0x",
        "cr0=0x",
        "efer=0x",
        "idt base=0x",
        "gdt base=0x",
        "  cs  sel=",
        "events: exception",
        "bytes at rip",
        "out  port 0x03f8 len=1 data=0xa",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn emulation_failure_is_a_clear_error() {
    require_kvm();
    // `fld qword [0x3000_0000]`: an x87 load from unbacked memory (MMIO).
    // KVM must emulate it and its emulator has no FLD, on hardware KVM and
    // software KVM alike: KVM_EXIT_INTERNAL_ERROR, suberror 1.
    let mut code = print(b"about to fail emulation\n");
    code.extend_from_slice(&[0xdd, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30]);
    code.extend_from_slice(&RESET);
    let k = write_kernel(&elf(&code));
    let out = run_kernel(k.as_path(), &[]);
    assert_eq!(out.status.code(), Some(3), "guest crashes exit 3");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (instruction emulation failed)"),
        "{err}"
    );
    assert!(
        err.contains("dd, 04, 25"),
        "names the instruction bytes: {err}"
    );
}

#[test]
fn guest_panic_is_not_a_clean_exit() {
    require_kvm();
    // What Linux prints before `panic=1` reboots it.
    let mut code = print(b"Kernel panic - not syncing: smoke test\r\n");
    code.extend_from_slice(&RESET);
    let k = write_kernel(&elf(&code));
    let out = run_kernel(k.as_path(), &[]);
    assert_eq!(out.status.code(), Some(4), "a guest panic exits 4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the guest kernel panicked: Kernel panic - not syncing: smoke test"),
        "{err}"
    );
}

/// kvmini refuses `args` with exit `code` (2: a flag's value is wrong; 1:
/// the VM could not start) and a message containing `needle`.
fn expect_error(args: &[&str], kernel: Option<&Path>, code: i32, needle: &str) {
    let mut cmd = kvmini();
    cmd.args(["run", "--accel", "kvm-any"]).args(args);
    if let Some(k) = kernel {
        cmd.arg("--kernel").arg(k);
    }
    let out = output_limited(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn accel_kvm_refuses_without_hardware_virtualization() {
    require_kvm();
    let k = write_kernel(&hello_guest());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let hw = kvmini::arch::x86_64::cpuid::cpuinfo_has_hw_virt(&cpuinfo);
    let out = run_kernel_accel(k.as_path(), "kvm", &[]);
    if hw {
        assert_eq!(out.status.code(), Some(0));
    } else {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--accel kvm: this host has no hardware virtualization"),
            "{err}"
        );
    }
}

#[test]
fn bad_input_is_rejected_cleanly() {
    require_kvm();
    let good = write_kernel(&hello_guest());
    let garbage = write_kernel(&[0x42; 4096]);
    let empty = write_kernel(&[]);
    let truncated = write_kernel(&hello_guest()[..80]);
    let missing = PathBuf::from("/nonexistent/vmlinux");
    expect_error(
        &[],
        Some(&missing),
        2,
        "cannot read kernel '/nonexistent/vmlinux'",
    );
    expect_error(&[], Some(garbage.as_path()), 1, "cannot load kernel");
    expect_error(&[], Some(empty.as_path()), 1, "cannot load kernel");
    expect_error(&[], Some(truncated.as_path()), 1, "cannot load kernel");
    expect_error(&["--memory", "0"], Some(good.as_path()), 2, "too small");
    expect_error(
        &["--memory", "lots"],
        Some(good.as_path()),
        2,
        "invalid --memory",
    );
    expect_error(
        &["--memory", "64T"],
        Some(good.as_path()),
        2,
        "more than this host has",
    );
    expect_error(
        &["--cpus", "0"],
        Some(good.as_path()),
        2,
        "--cpus 0 is out of range",
    );
    expect_error(
        &["--console", "tty"],
        Some(good.as_path()),
        2,
        "invalid --console",
    );
    // `tcg` is a mode (QEMU's software CPU); an unknown one is a usage error.
    let unknown = output_limited(
        kvmini()
            .args(["run", "--accel", "qemu", "--kernel"])
            .arg(good.as_path()),
    );
    assert_eq!(unknown.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("invalid --accel 'qemu'"));
    let long = "x".repeat(4000);
    expect_error(
        &["--cmdline", &long],
        Some(good.as_path()),
        2,
        "invalid --cmdline",
    );
    expect_error(
        &["--initrd", "/nonexistent/initrd"],
        Some(good.as_path()),
        2,
        "cannot read initrd",
    );
}

/// A socket pair whose writing end holds little (4 KiB asked, the kernel's
/// minimum given): a reader that never reads makes writes block at once.
fn stalled_socket() -> (
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
) {
    use std::os::fd::AsRawFd;
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    for (fd, opt) in [
        (writer.as_raw_fd(), libc::SO_SNDBUF),
        (reader.as_raw_fd(), libc::SO_RCVBUF),
    ] {
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt with a valid int option on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
    }
    (reader, writer)
}

/// Prints `text`, then spins (`jmp $`): a guest that never stops by itself.
fn spinning_guest(text: &[u8]) -> Vec<u8> {
    let mut code = print(text);
    code.extend_from_slice(&[0xeb, 0xfe]);
    elf(&code)
}

/// Runs kvmini with `args`, `env` added, stdout to `stdout`; kills it
/// (and fails) if it is still running after `limit`.
fn run_with_limit(
    args: &[&str],
    env: &[(&str, &str)],
    stdout: std::process::Stdio,
    limit: std::time::Duration,
) -> Output {
    let mut child = kvmini()
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start kvmini");
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "kvmini {args:?} still ran after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every thread kind runs under its filter: the test trigger makes one
/// thread of the kind make a forbidden call (getppid) right after its
/// filter is in place, and kvmini must die naming it, exit 159.
#[test]
fn a_forbidden_system_call_stops_kvmini_in_every_thread_kind() {
    require_kvm();
    let k = write_kernel(&spinning_guest(b"spinning\n"));
    let disk = TempFile::new().unwrap();
    disk.as_file().set_len(1 << 20).unwrap();
    let disk_arg = format!("path={}", disk.as_path().display());
    for kind in ["vcpu", "event-loop", "disk-io", "writer"] {
        let out = run_with_limit(
            &[
                "run",
                "--accel",
                "kvm-any",
                "--memory",
                "32M",
                "--disk",
                &disk_arg,
                "--kernel",
                k.as_path().to_str().unwrap(),
            ],
            &[(kvmini_vmm_trigger(), kind)],
            std::process::Stdio::null(),
            std::time::Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(159), "{kind}: {err}");
        let says = format!("seccomp: a thread of kind {kind} made the system call getppid (110)");
        assert!(err.contains(&says), "{kind}: {err}");
        assert!(err.contains("--seccomp off"), "{err}");
    }
}

fn kvmini_vmm_trigger() -> &'static str {
    kvmini::seccomp::TEST_TRIGGER_ENV
}

#[test]
fn seccomp_off_runs_without_filters() {
    require_kvm();
    let k = write_kernel(&hello_guest());
    let out = run_with_limit(
        &[
            "run",
            "--accel",
            "kvm-any",
            "--memory",
            "32M",
            "--seccomp",
            "off",
            "--kernel",
            k.as_path().to_str().unwrap(),
        ],
        &[(kvmini_vmm_trigger(), "vcpu")],
        std::process::Stdio::piped(),
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a tiny guest\n"
    );
}

/// `kvmini run | sleep 600`: a reader that never reads. The guest prints
/// without end; the socket fills, then kvmini's buffer (past which the
/// console is dropped). SIGTERM still stops kvmini within a second (before
/// issue 16 only SIGKILL did: the vCPU blocked in its write).
#[test]
fn sigterm_stops_a_vm_whose_console_reader_never_reads() {
    require_kvm();
    let k = write_kernel(&elf(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x', // mov al, 'x'
        0xee, // out dx, al
        0xeb, 0xfd, // jmp back to the out
    ]));
    let (reader, writer) = stalled_socket();
    let mut child = kvmini()
        .args(["run", "--accel", "kvm-any", "--memory", "32M", "--kernel"])
        .arg(k.as_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            writer,
        )))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let the guest fill the socket and kvmini's buffer.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "kvmini ended by itself"
    );
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            panic!("kvmini still ran 5 s after SIGTERM with a stalled reader");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = start.elapsed();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("stopped {took:?} after SIGTERM; stderr:\n{err}");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(
        err.contains("bytes of guest output were not written: its reader is not reading"),
        "{err}"
    );
    drop(reader);
}

/// `kvmini run 2>&1 | sleep 600`: stdout and stderr on the same socket
/// nobody reads. kvmini's own messages wait at most 100 ms for room and
/// are dropped after that, so SIGTERM still stops it within a second.
#[test]
fn sigterm_stops_kvmini_when_stderr_is_stalled_too() {
    require_kvm();
    let k = write_kernel(&elf(&[
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'x', // mov al, 'x'
        0xee, // out dx, al
        0xeb, 0xfd, // jmp back to the out
    ]));
    let (reader, writer) = stalled_socket();
    let err = writer.try_clone().unwrap();
    let mut child = kvmini()
        .args(["run", "--accel", "kvm-any", "--memory", "32M", "--kernel"])
        .arg(k.as_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            writer,
        )))
        .stderr(std::process::Stdio::from(std::os::fd::OwnedFd::from(err)))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "kvmini ended by itself"
    );
    // SAFETY: signalling our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            panic!("kvmini still ran 5 s after SIGTERM with stdout and stderr stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let took = start.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    assert_eq!(status.code(), Some(143));
    drop(reader);
}
