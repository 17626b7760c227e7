//! End-to-end tests of the direct software-CPU engine (`--accel tcg`, and
//! `auto` on hosts without vmx/svm): the real binary boots the default
//! guest on QEMU's TCG (microvm machine). They run on every host, take a
//! few seconds each, and run one at a time: several TCG machines on a
//! small host only slow each other down.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// No single run may take longer than this; a hang fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn wait_limited(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for kvmini") {
            return status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_LIMIT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs kvmini with stdin closed; returns its output and how long it took.
fn kvmini_timed(args: &[&str]) -> (Output, Duration) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("{}.{:?}", std::process::id(), std::thread::current().id());
    let out_path = temp_path(&format!("out.{tag}"));
    let err_path = temp_path(&format!("err.{tag}"));
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("cannot run kvmini");
    let status = wait_limited(&mut child, &format!("kvmini {args:?}"));
    let took = start.elapsed();
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = (
        std::fs::remove_file(&out_path),
        std::fs::remove_file(&err_path),
    );
    eprintln!(
        "---- kvmini {args:?}: {} in {took:?}\n---- stdout:\n{}\n---- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, took)
}

fn kvmini(args: &[&str]) -> Output {
    kvmini_timed(args).0
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\r', "")
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kvmini-tcg-test.{}.{name}", std::process::id()))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).collect()
}

#[test]
fn run_boots_the_default_guest_with_two_cpus() {
    let out = kvmini(&[
        "run",
        "--accel",
        "tcg",
        "--cpus",
        "2",
        "--cmdline",
        "-- uname -r; grep -c ^processor /proc/cpuinfo",
    ]);
    let stdout = text(&out.stdout);
    let l = lines(&stdout);
    assert!(l.contains(&"kvmini-guest: init reached"));
    assert!(l.iter().any(|x| x.starts_with("6.12")), "no 6.12 release");
    assert!(l.contains(&"2"), "guest does not see 2 CPUs");
    assert!(l.contains(&"kvmini-guest: exit status 0"));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn auto_picks_the_software_cpu_without_hardware_virtualization_and_says_so() {
    let out = kvmini(&["run", "--cmdline", "-- true"]);
    assert_eq!(out.status.code(), Some(0));
    // With vmx/svm auto means kvm, and says nothing about a software CPU.
    let software = !kvmini::arch::x86_64::cpuid::host_has_hw_virt();
    assert_eq!(
        text(&out.stderr).contains("QEMU's software CPU (TCG) runs the guest"),
        software,
        "{}",
        text(&out.stderr)
    );
    let quiet = kvmini(&[
        "run",
        "--quiet",
        "--console",
        "none",
        "--cmdline",
        "-- true",
    ]);
    assert_eq!(quiet.status.code(), Some(0));
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
    assert!(quiet.stdout.is_empty(), "console none wrote to stdout");
}

#[test]
fn console_file_holds_the_console() {
    let path = temp_path("console");
    let console = format!("file={}", path.display());
    let out = kvmini(&[
        "run",
        "--accel",
        "tcg",
        "--console",
        &console,
        "--cmdline",
        "-- echo hello-from-the-file-console",
    ]);
    let file = std::fs::read(&path).map(|b| text(&b));
    let _ = std::fs::remove_file(&path);
    let file = file.expect("console file not written");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        lines(&file).contains(&"hello-from-the-file-console"),
        "{file}"
    );
    assert!(!text(&out.stdout).contains("kvmini-guest"));
}

#[test]
fn a_kernel_panic_is_exit_4() {
    // The initramfs's /bin/true as init: it exits, the kernel panics
    // ("Attempted to kill init") and reboots (panic=1).
    let out = kvmini(&["run", "--accel", "tcg", "--cmdline", "rdinit=/bin/true"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the guest kernel panicked: Kernel panic - not syncing"));
}

#[test]
fn a_panicked_guest_that_does_not_reboot_is_stopped() {
    let (out, took) = kvmini_timed(&[
        "run",
        "--accel",
        "tcg",
        "--cmdline",
        "rdinit=/bin/true panic=0",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(120), "took {took:?}");
}

/// A bzImage whose real-mode entry loads an empty IDT and executes int3:
/// #GP, #DF, triple fault.
fn triple_fault_image() -> PathBuf {
    let mut k = vec![0u8; 0x1000];
    k[0x1f1] = 1; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x200..0x202].copy_from_slice(&[0xeb, 0x7e]); // jmp 0x280
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
    k[0x211] = 0x01; // LOADED_HIGH
    k[0x238..0x23c].copy_from_slice(&0x7ffu32.to_le_bytes());
    // cli; lidt [0x2a0]; int3; hlt; jmp $-1 (0x2a0: six zero bytes)
    k[0x280..0x28a].copy_from_slice(&[0xfa, 0x0f, 0x01, 0x1e, 0xa0, 0x02, 0xcc, 0xf4, 0xeb, 0xfd]);
    let p = temp_path("triple-fault.bzImage");
    std::fs::write(&p, k).unwrap();
    p
}

#[test]
fn a_triple_fault_is_exit_3() {
    let image = triple_fault_image();
    let out = kvmini(&["run", "--accel", "tcg", "--kernel", image.to_str().unwrap()]);
    let _ = std::fs::remove_file(&image);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("triple-faulted"));
}

#[test]
fn sigterm_stops_the_guest_with_143() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args([
            "run",
            "--accel",
            "tcg",
            "--console",
            "none",
            "--cmdline",
            "-- sleep 600",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_limited(&mut child, "kvmini run (SIGTERM)");
    assert_eq!(status.code(), Some(143));
}

#[test]
fn ctrl_a_x_on_a_terminal_quits_with_130() {
    // `script` gives kvmini a terminal; the default guest's shell waits.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cmd = format!(
        "{} run --accel tcg --memory 256M",
        env!("CARGO_BIN_EXE_kvmini")
    );
    let mut child = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) is needed for this test");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut typed = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if !typed && text(&seen).contains("/ #") {
                stdin.write_all(b"\x01x").unwrap();
                typed = true;
            }
        }
        (typed, seen)
    });
    let status = wait_limited(&mut child, "kvmini run on a terminal");
    let (typed, seen) = reader.join().unwrap();
    eprintln!("---- terminal:\n{}", text(&seen));
    assert!(typed, "no shell prompt");
    assert_eq!(status.code(), Some(130));
}

#[test]
fn disks_keep_guest_writes_and_read_only_ones_refuse_them() {
    let rw = temp_path("rw.img");
    let ro = temp_path("ro.img");
    let mut image = vec![0u8; 1 << 20];
    image[512..521].copy_from_slice(b"from-host");
    std::fs::write(&rw, &image).unwrap();
    std::fs::write(&ro, vec![0u8; 1 << 20]).unwrap();
    let rw_arg = format!("path={}", rw.display());
    let ro_arg = format!("path={},readonly=on", ro.display());
    let out = kvmini(&[
        "run",
        "--accel",
        "tcg",
        "--disk",
        &rw_arg,
        "--disk",
        &ro_arg,
        "--cmdline",
        "-- echo guest-read=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 9); \
         echo tcg-guest-wrote | dd of=/dev/vda bs=512 seek=4 conv=sync,fsync; \
         echo x | dd of=/dev/vdb conv=sync,fsync; echo vdb-rc=$?",
    ]);
    let written = std::fs::read(&rw).unwrap();
    let untouched = std::fs::read(&ro).unwrap().iter().all(|&b| b == 0);
    let _ = (std::fs::remove_file(&rw), std::fs::remove_file(&ro));
    let stdout = text(&out.stdout);
    let l = lines(&stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        l.contains(&"guest-read=from-host"),
        "guest read the host's bytes"
    );
    assert_eq!(
        &written[2048..2063],
        b"tcg-guest-wrote",
        "host sees the guest's write"
    );
    assert!(l.contains(&"vdb-rc=1"), "read-only disk refused the write");
    assert!(untouched, "read-only image unchanged");
}

#[test]
fn disk_rate_limits_hold_the_guest_back() {
    // 3 MiB each. At bw=512K: a second's burst, then about 5 s of refill;
    // at iops=8 (48 direct 64 KiB reads): 8 at once, then 5 s. Unlimited,
    // either read takes a fraction of a second. Whole seconds of the
    // guest's clock, a lower bound: load can only make the reads slower.
    let bw = temp_path("bw.img");
    let iops = temp_path("iops.img");
    for p in [&bw, &iops] {
        std::fs::write(p, vec![0u8; 3 << 20]).unwrap();
    }
    let bw_arg = format!("path={},bw=512K", bw.display());
    let iops_arg = format!("path={},readonly=on,iops=8", iops.display());
    let out = kvmini(&[
        "run",
        "--accel",
        "tcg",
        "--disk",
        &bw_arg,
        "--disk",
        &iops_arg,
        "--cmdline",
        "-- for d in vda vdb; do s=$(date +%s); \
         dd if=/dev/$d of=/dev/null bs=64k iflag=direct 2>/dev/null; \
         echo $d-took=$(( $(date +%s) - s )); done",
    ]);
    let _ = (std::fs::remove_file(&bw), std::fs::remove_file(&iops));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for d in ["vda", "vdb"] {
        let took: u64 = lines(&stdout)
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{d}-took=")))
            .unwrap_or_else(|| panic!("no {d}-took= line"))
            .parse()
            .unwrap();
        assert!(took >= 2, "{d}: read in {took} s, faster than its limit");
    }
}

/// The `Seccomp:` mode of QEMU, kvmini's child, once the guest's init ran
/// (QEMU is set up by then): 2 under a filter, 0 without.
fn qemu_seccomp_mode(seccomp: &str) -> String {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let console = temp_path(&format!("console-seccomp-{seccomp}"));
    let console_arg = format!("file={}", console.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args([
            "run",
            "--accel",
            "tcg",
            "--seccomp",
            seccomp,
            "--console",
            &console_arg,
            "--cmdline",
            "-- sleep 600",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut mode = None;
    while mode.is_none() && start.elapsed() < RUN_LIMIT {
        std::thread::sleep(Duration::from_millis(200));
        let booted =
            std::fs::read(&console).is_ok_and(|c| text(&c).contains("kvmini-guest: init reached"));
        if booted {
            mode = qemu_child_of(child.id()).map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Seccomp:"))
                    .expect("no Seccomp: line in /proc/PID/status")
                    .trim()
                    .to_string()
            });
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_limited(&mut child, "kvmini run (seccomp)");
    let _ = std::fs::remove_file(&console);
    assert_eq!(status.code(), Some(143));
    mode.expect("the guest's init never ran, or kvmini had no QEMU child")
}

/// The pid of the qemu-system-x86_64 whose parent is `parent`.
fn qemu_child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so after ')'.
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm.starts_with("qemu-system")).then_some(pid)
    })
}

#[test]
fn seccomp_on_runs_qemu_in_its_sandbox_and_off_without() {
    assert_eq!(qemu_seccomp_mode("on"), "2", "--seccomp on: no filter");
    assert_eq!(qemu_seccomp_mode("off"), "0", "--seccomp off: a filter");
}

#[test]
fn refusals_come_before_qemu_starts() {
    let kernel = temp_path("kernel-for-refusals");
    std::fs::write(&kernel, b"not a kernel\n").unwrap();
    let k = kernel.to_str().unwrap();
    let (net, took) = kvmini_timed(&[
        "run",
        "--accel",
        "tcg",
        "--kernel",
        k,
        "--net",
        "tap=kvmini-none0",
    ]);
    assert_eq!(net.status.code(), Some(1));
    assert!(
        text(&net.stderr).contains("--net needs hardware KVM"),
        "{}",
        text(&net.stderr)
    );
    assert!(took < Duration::from_secs(5));
    let bad = kvmini(&["run", "--accel", "tcg", "--kernel", k]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("cannot be booted"));
    let disk = temp_path("small.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let d = format!("path={}", disk.display());
    let mut args = vec!["exec", "--accel", "tcg"];
    for _ in 0..6 {
        args.extend(["--disk", &d]);
    }
    args.extend(["--", "true"]);
    let many = kvmini(&args);
    let _ = (std::fs::remove_file(&kernel), std::fs::remove_file(&disk));
    assert_eq!(many.status.code(), Some(125));
    assert!(
        text(&many.stderr).contains("at most 6 fit"),
        "{}",
        text(&many.stderr)
    );
}

#[test]
fn exec_streams_are_byte_exact_and_the_status_passes_through() {
    let out = kvmini(&[
        "exec",
        "--accel",
        "tcg",
        "--",
        "sh",
        "-c",
        "printf 'a\\0b\\r\\nno newline'; printf 'e1\\ne2' >&2; exit 42",
    ]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(out.stdout, b"a\0b\r\nno newline");
    assert!(out.stderr.ends_with(b"e1\ne2"), "{:?}", text(&out.stderr));
    let big = kvmini(&["exec", "--accel", "tcg", "--", "sh", "-c", "seq 1 100000"]);
    let expected: String = (1..=100000).map(|n| format!("{n}\n")).collect();
    assert_eq!(big.status.code(), Some(0));
    assert!(
        text(&big.stdout) == expected,
        "100000 lines did not arrive intact"
    );
}

#[test]
fn exec_share_written_by_the_guest_comes_back() {
    let dir = temp_path("share");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.txt"), "host-bytes").unwrap();
    std::fs::write(dir.join("gone.txt"), "deleted by the guest").unwrap();
    let share = format!("{}:/mnt/work", dir.display());
    let out = kvmini(&[
        "exec",
        "--accel",
        "tcg",
        "--share",
        &share,
        "--workdir",
        "/mnt/work",
        "--",
        "sh",
        "-c",
        "cat in.txt; printf 'new\\0file' > out.bin; rm gone.txt",
    ]);
    let written = std::fs::read(dir.join("out.bin"));
    let deleted = !dir.join("gone.txt").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "host-bytes");
    assert_eq!(written.expect("out.bin not copied back"), b"new\0file");
    assert!(
        deleted,
        "gone.txt, deleted in the guest, is still on the host"
    );
}

#[test]
fn exec_with_a_reader_that_does_not_read_still_stops_on_sigterm() {
    // The command floods stdout into a pipe nobody reads: kvmini's copy of
    // the stream blocks in its write. SIGTERM must still end kvmini (143),
    // as with kvmini's own VMM (issue 16), not wait for the reader.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned here only.
    let (read_end, write_end) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(["exec", "--accel", "tcg", "--", "yes", "kvmini-flood"])
        .stdin(Stdio::null())
        .stdout(write_end)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The pipe is full when what it holds stops growing (a pipe of small
    // writes is full before 64 KiB).
    let start = Instant::now();
    let (mut queued, mut before): (libc::c_int, libc::c_int) = (0, -1);
    while queued == 0 || queued != before {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kvmini ended ({status}) before the signal");
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the command's output never filled the pipe");
        }
        before = queued;
        std::thread::sleep(Duration::from_secs(1));
        use std::os::fd::AsRawFd;
        // SAFETY: FIONREAD on our open pipe end writes one c_int.
        unsafe { libc::ioctl(read_end.as_raw_fd(), libc::FIONREAD, &mut queued) };
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = Instant::now();
    while child.try_wait().unwrap().is_none() && stopping.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.try_wait().unwrap();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(read_end);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "kvmini did not stop within 30 s of SIGTERM with a stalled reader"
    );
}

#[test]
fn exec_timeout_is_124_and_console_file_holds_the_kernel_log() {
    let path = temp_path("exec-console");
    let console = format!("file={}", path.display());
    let (out, took) = kvmini_timed(&[
        "exec",
        "--accel",
        "tcg",
        "--timeout",
        "8",
        "--console",
        &console,
        // exec's kernel is quiet; this makes it say when init starts.
        "--cmdline",
        "loglevel=7",
        "--",
        "sleep",
        "600",
    ]);
    let file = std::fs::read(&path).map(|b| text(&b)).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        text(&out.stderr).contains("--timeout"),
        "{}",
        text(&out.stderr)
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(file.contains("Run /kvmini/init as init process"), "{file}");
}

#[test]
fn exec_guest_death_is_123() {
    // The exec init replaced by /bin/true: the kernel panics before the
    // command runs.
    let out = kvmini(&[
        "exec",
        "--accel",
        "tcg",
        "--cmdline",
        "rdinit=/bin/true",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(123), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("panicked"));
}
