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

mod common;
use common::{passt_can_run, refused_without_user_namespaces, sha256};

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
    // A TAP needs kvmini's own virtio-net: refused, pointing at --net user.
    let err = text(&net.stderr);
    assert!(err.contains("--net tap= needs hardware KVM"), "{err}");
    assert!(err.contains("use --net user"), "{err}");
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

// ---- --net user (passt), as a user without privileges ----

/// A directory everyone may read, holding what an unprivileged kvmini
/// needs: its own binary and the default guest's kernel and initramfs
/// (built or taken from the cache as this user; the unprivileged one has
/// no cache and could not install packages to build them).
fn unprivileged_kit() -> PathBuf {
    static KIT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KIT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("resources");
        let script = |s: &str| {
            let out = Command::new("bash")
                .arg(root.join(s))
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {s}: {e}"));
            assert!(out.status.success(), "{s} failed");
            PathBuf::from(text(&out.stdout).trim())
        };
        let kernel = script("kernel/build.sh").join("vmlinux");
        let initrd = script("rootfs/build-initramfs.sh");
        let kit = temp_path("kit");
        let _ = std::fs::remove_dir_all(&kit);
        std::fs::create_dir_all(&kit).unwrap();
        for (from, to) in [
            (PathBuf::from(env!("CARGO_BIN_EXE_kvmini")), "kvmini"),
            (kernel, "vmlinux"),
            (initrd, "initrd"),
        ] {
            std::fs::copy(&from, kit.join(to))
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&kit, std::fs::Permissions::from_mode(0o755)).unwrap();
        kit
    })
    .clone()
}

/// `kvmini exec --accel tcg --kernel .. --initrd .. ARGS` as a user without
/// privileges: `nobody` (through setpriv, no capabilities) when the tests
/// run as root, else the tests' own user.
fn unprivileged_exec(args: &[String]) -> Command {
    let kit = unprivileged_kit();
    let mut all: Vec<String> = vec![
        "exec".into(),
        "--accel".into(),
        "tcg".into(),
        "--kernel".into(),
        kit.join("vmlinux").display().to_string(),
        "--initrd".into(),
        kit.join("initrd").display().to_string(),
    ];
    all.extend(args.iter().cloned());
    let kvmini = kit.join("kvmini");
    // SAFETY: geteuid has no preconditions.
    let mut c = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(kvmini);
        c
    } else {
        Command::new(kvmini)
    };
    c.args(all)
        .env("HOME", std::env::temp_dir())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("KVMINI_CACHE_DIR")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    c
}

/// A host port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Serves `body` to every HTTP request on the host's loopback, until the
/// test ends; returns the port.
fn serve_on_loopback(body: Vec<u8>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    port
}

fn output_limited(mut c: Command, what: &str) -> Output {
    let out = temp_path(&format!("uout.{}", free_port()));
    let err = temp_path(&format!("uerr.{}", free_port()));
    let mut child = c
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("cannot start kvmini");
    let status = wait_limited(&mut child, what);
    let o = Output {
        status,
        stdout: std::fs::read(&out).unwrap_or_default(),
        stderr: std::fs::read(&err).unwrap_or_default(),
    };
    let _ = (std::fs::remove_file(&out), std::fs::remove_file(&err));
    eprintln!(
        "---- {what}: {}\n---- stdout:\n{}\n---- stderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// The gateway the guest got by DHCP reaches the host's loopback, as the
/// user who runs kvmini: the guest fetches 1 MiB from a server only the
/// host's 127.0.0.1 can reach, and its hash matches.
#[test]
fn user_net_reaches_the_hosts_loopback_without_privileges() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if passt_cannot_run_here("user_net_reaches_the_hosts_loopback_without_privileges") {
        return;
    }
    let body = payload(1 << 20, 7);
    let want = sha256(&body);
    let port = serve_on_loopback(body);
    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); \
         wget -qO- http://$gw:{port}/file | sha256sum; echo uid=$(id -u)"
    );
    let out = output_limited(
        unprivileged_exec(&[
            "--net".into(),
            "user".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            script,
        ]),
        "exec --net user (fetch)",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{want}  -")),
        "the guest's copy differs or never came: {stdout:?} (want {want})"
    );
}

/// An HTTP server on the host's loopback through which guests say when
/// their server listens (`/ready-NAME`) and learn when the host has what
/// it wanted (`/done-NAME`: 404 until then), so that no connection is
/// made before the guest listens (passt would hold it, waiting for the
/// guest, and might hand it over late) and no guest powers off while its
/// answer is still on the way.
struct Coordinator {
    port: u16,
    ready: std::sync::Arc<Mutex<Vec<String>>>,
    done: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Coordinator {
    fn new() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ready = std::sync::Arc::new(Mutex::new(Vec::new()));
        let done = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let (r, d) = (ready.clone(), done.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).unwrap_or(0);
                let req = text(&req[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let ok = if let Some(name) = path.strip_prefix("/ready-") {
                    r.lock().unwrap().push(name.to_string());
                    true
                } else if let Some(name) = path.strip_prefix("/done-") {
                    d.lock().unwrap().iter().any(|x| x == name)
                } else {
                    false
                };
                let status = if ok { "200 OK" } else { "404 Not Found" };
                let _ = write!(s, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        Self { port, ready, done }
    }

    /// The guest's part, for `name`: once `server` (a command that listens
    /// on port 8080) runs in the background and listens, say so, then wait
    /// for the host.
    fn guest_script(&self, name: &str, server: &str) -> String {
        let p = self.port;
        format!(
            "gw=$(ip route | awk '/^default/ {{print $3}}'); {server} & \
             until netstat -ltn | grep -q ':8080 '; do sleep 0.2; done; \
             wget -qO- http://$gw:{p}/ready-{name}; \
             until wget -qO- http://$gw:{p}/done-{name} 2>/dev/null; do sleep 1; done"
        )
    }

    fn wait_ready(&self, name: &str, limit: Duration) {
        let start = Instant::now();
        while !self.ready.lock().unwrap().iter().any(|x| x == name) {
            assert!(
                start.elapsed() < limit,
                "guest {name} never said it listens"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn done(&self, name: &str) {
        self.done.lock().unwrap().push(name.to_string());
    }
}

/// Connects to host port `port`, sends `input` and reads to the end, with
/// a time limit on every step.
fn talk(port: u16, input: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to host port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(input)
        .unwrap_or_else(|e| panic!("sending to host port {port}: {e}"));
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("reading from host port {port}: {e}"));
    got
}

/// `forward=tcp:HOSTPORT:GUESTPORT`: the host connects to its HOSTPORT and
/// reaches a server in the guest, both ways: it uploads 512 KiB, the guest
/// answers with the hash of what it got, then with 408,893 bytes of its
/// own.
#[test]
fn user_net_forward_reaches_the_guest_both_ways() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if passt_cannot_run_here("user_net_forward_reaches_the_guest_both_ways") {
        return;
    }
    let up = payload(512 << 10, 11);
    let up_hash = sha256(&up);
    let down: String = (1..=70000).map(|n| format!("{n}\n")).collect();
    let host_port = free_port();
    let co = Coordinator::new();
    let script = co.guest_script(
        "fw",
        "nc -l -p 8080 -e sh -c 'head -c 524288 | sha256sum; seq 1 70000'",
    );
    let c = unprivileged_exec(&[
        "--net".into(),
        format!("user,forward=tcp:{host_port}:8080"),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script,
    ]);
    let vm = std::thread::spawn(move || output_limited(c, "exec --net user,forward=..."));
    co.wait_ready("fw", Duration::from_secs(120));
    let got = text(&talk(host_port, &up));
    co.done("fw");
    let out = vm.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (hash_line, rest) = got.split_once('\n').expect("no hash line from the guest");
    assert_eq!(
        hash_line,
        format!("{up_hash}  -"),
        "the upload arrived changed"
    );
    assert!(
        rest == down,
        "the guest's {} bytes came back changed",
        down.len()
    );
}

/// Four `exec --net user` at once, each with its own passt and forward:
/// each host port reaches its own guest, and all four finish cleanly.
#[test]
fn four_user_net_guests_at_once_do_not_clash() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if passt_cannot_run_here("four_user_net_guests_at_once_do_not_clash") {
        return;
    }
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let co = Coordinator::new();
    let vms: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let script =
                co.guest_script(&i.to_string(), &format!("nc -l -p 8080 -e echo guest-{i}"));
            let c = unprivileged_exec(&[
                "--net".into(),
                format!("user,forward=tcp:{port}:8080"),
                "--".into(),
                "sh".into(),
                "-c".into(),
                script,
            ]);
            std::thread::spawn(move || output_limited(c, &format!("exec guest-{i}")))
        })
        .collect();
    let mut said = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        co.wait_ready(&i.to_string(), Duration::from_secs(240));
        said.push(text(&talk(port, b"")));
        co.done(&i.to_string());
    }
    let outs: Vec<Output> = vms.into_iter().map(|v| v.join().unwrap()).collect();
    for (i, s) in said.iter().enumerate() {
        assert_eq!(
            s,
            &format!("guest-{i}\n"),
            "host port {} reached another guest",
            ports[i]
        );
    }
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.status.code(), Some(0), "guest-{i}: {}", text(&o.stderr));
    }
}

/// A forwarded host port that is taken is refused before anything boots,
/// naming the port, exit 125 (exec's own errors); `run` says 1.
#[test]
fn user_net_refuses_a_taken_port_before_booting() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let fw = format!("user,forward=tcp:{port}:80");
    let out = output_limited(
        unprivileged_exec(&["--net".into(), fw.clone(), "--".into(), "true".into()]),
        "exec with a taken port",
    );
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("host port {port} is already in use")),
        "{err}"
    );
    let out = kvmini(&["run", "--accel", "tcg", "--net", &fw]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("host port {port} is already in use")),
        "{err}"
    );
    assert!(!err.contains("starting the guest"));
}

/// Where this host cannot run passt: checks that an unprivileged `exec
/// --net user` is refused with the reason, and says the data path of
/// `test` was not run. Returns whether that was the case.
fn passt_cannot_run_here(test: &str) -> bool {
    if passt_can_run() {
        return false;
    }
    let out = output_limited(
        unprivileged_exec(&["--net".into(), "user".into(), "--".into(), "true".into()]),
        "exec --net user without user namespaces",
    );
    refused_without_user_namespaces(test, &out);
    true
}
