//! End-to-end tests of the emulated fallback (`kvmini run --accel emulated`):
//! the real binary boots the default guest inside QEMU TCG with nested KVM.
//! They run on every host (hardware virtualization or not), need no root
//! beyond what installing QEMU on first use needs, and take ~20 s each under
//! TCG, so they run one at a time and there are few of them.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::{
    elf, lflags, open_pty, passt_can_run, print, refused_without_user_namespaces, sha256, HALT,
    RESET,
};

/// One emulated machine at a time: several TCG machines on a small host
/// would only slow each other down past any sensible timeout.
static SERIAL: Mutex<()> = Mutex::new(());

/// What kvmini says when the emulated machine froze (src/emulated.rs): a
/// known problem of nested KVM under TCG, the rig's own only if it came
/// before the inner kvmini started (its last step says what L1 was doing).
const L1_FROZE: &str = "the emulated machine stopped responding";
/// The last step once the inner kvmini runs (resources/rig/emulated-init):
/// a freeze after it may be kvmini's doing, and is not rerun.
const INNER_KVMINI_RUNNING: &str = "last step: running kvmini";

/// No single run may take longer than this; a hang fails the test.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// Runs kvmini once, killing it after RUN_LIMIT.
fn kvmini_once(args: &[&str]) -> Output {
    kvmini_once_env(args, &[])
}

/// Runs kvmini once with extra environment variables, killing it after
/// RUN_LIMIT.
fn kvmini_once_env(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Output {
    let dir = std::env::temp_dir();
    let tag = format!(
        "kvmini-emulated-test-out.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let (out_path, err_path) = (
        dir.join(format!("{tag}.out")),
        dir.join(format!("{tag}.err")),
    );
    let out_file = std::fs::File::create(&out_path).expect("cannot create a temp file");
    let err_file = std::fs::File::create(&err_path).expect("cannot create a temp file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .spawn()
        .expect("cannot run kvmini");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for kvmini") {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvmini {args:?} did not finish within {RUN_LIMIT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    eprintln!(
        "---- kvmini {args:?}: {}\n---- stdout:\n{}\n---- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs kvmini. A run whose emulated machine froze before the inner kvmini
/// started (L1's own set-up: the rig's failure) is run once more, with a
/// warning on stderr (past the harness's capture), and only then. A freeze
/// while the inner kvmini ran is a result like any other: the test judges
/// it (and fails).
fn kvmini(args: &[&str]) -> Output {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = kvmini_once(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.contains(L1_FROZE) || stderr.contains(INNER_KVMINI_RUNNING) {
        return out;
    }
    let _ = writeln!(
        std::io::stderr(),
        "emulated: WARNING: the emulated machine froze before the inner kvmini started, running kvmini {args:?}; running it once more"
    );
    kvmini_once(args)
}

/// A resources directory whose emulated.sh only records that it ran: a
/// run that reaches it would start QEMU next.
struct FakeResources {
    dir: PathBuf,
    marker: PathBuf,
}

impl FakeResources {
    fn new(name: &str) -> Self {
        let dir = temp_path(name);
        let marker = dir.join("emulated.sh-ran");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rig")).unwrap();
        std::fs::write(
            dir.join("rig/emulated.sh"),
            format!("touch '{}'\nexit 1\n", marker.display()),
        )
        .unwrap();
        Self { dir, marker }
    }

    /// Runs kvmini with these resources; returns its output and whether it
    /// got as far as preparing the emulated machine.
    fn run(&self, args: &[&str]) -> (Output, bool) {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let out = kvmini_once_env(args, &[("KVMINI_RESOURCES", self.dir.as_os_str())]);
        (out, self.marker.exists())
    }
}

impl Drop for FakeResources {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\r', "")
}

/// A temporary file path unique to this process and test.
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "kvmini-emulated-test.{}.{name}",
        std::process::id()
    ))
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().map(str::trim).collect()
}

/// No report markers or L1 boot messages leak into the guest console.
fn assert_pristine(console: &str) {
    assert!(
        !console.contains("@@KVMINI-EMU"),
        "report marker on the console"
    );
    assert!(
        !console.contains("cloud-amd64"),
        "L1 kernel messages on the console"
    );
}

#[test]
fn boots_the_default_guest_with_two_cpus() {
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--cpus",
        "2",
        "--cmdline",
        "-- uname -r; grep -c ^processor /proc/cpuinfo",
    ]);
    let stdout = text(&out.stdout);
    let l = lines(&stdout);
    assert!(
        l.contains(&"kvmini-guest: init reached"),
        "guest /init not reached"
    );
    assert!(
        l.iter().any(|x| x.starts_with("6.12")),
        "no 6.12 kernel release in the output"
    );
    assert!(l.contains(&"2"), "guest does not see 2 CPUs");
    assert!(l.contains(&"kvmini-guest: exit status 0"));
    assert_pristine(&stdout);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn console_file_holds_the_console() {
    let path = temp_path("console");
    let _ = std::fs::remove_file(&path);
    let console = format!("file={}", path.display());
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--console",
        &console,
        "--memory",
        "256M",
        "--cmdline",
        "-- echo hello-from-the-file-console",
    ]);
    let file = std::fs::read(&path).map(|b| text(&b));
    let _ = std::fs::remove_file(&path);
    let file = file.expect("console file not written");
    assert_eq!(out.status.code(), Some(0));
    let l = lines(&file);
    assert!(l.contains(&"hello-from-the-file-console"), "{file}");
    assert!(l.contains(&"kvmini-guest: exit status 0"));
    assert_pristine(&file);
    assert!(
        !text(&out.stdout).contains("kvmini-guest"),
        "console output on stdout despite --console file="
    );
}

#[test]
fn inner_errors_and_exit_status_come_out() {
    // Passes the host's format check (bzImage magic) but cannot be loaded:
    // the kvmini inside the emulated machine fails, and its message and
    // exit status 1 must reach us. Only the inner kvmini loads kernels
    // ("cannot load kernel"; the outer one only checks the format), and it
    // knows the kernel as /guest/kernel, which the outer kvmini renames to
    // the user's path on the way out: the message below proves both.
    let path = temp_path("truncated-bzimage");
    let mut image = vec![0u8; 0x1000];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(&path, &image).unwrap();
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--kernel",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let inner = format!("kvmini: error: cannot load kernel '{}'", path.display());
    assert!(
        stderr.contains(&inner),
        "the inner kvmini's error ({inner}...) did not come out: {stderr}"
    );
    assert!(!stderr.contains("@@KVMINI-EMU"), "report marker on stderr");
    assert!(
        !stderr.contains("stopped without reporting"),
        "the inner exit status was lost"
    );
}

/// A tiny guest (tests/common) as a kernel file.
fn tiny_kernel(name: &str, code: &[u8]) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, elf(code)).unwrap();
    path
}

#[test]
fn guest_crash_exits_3_through_the_fallback() {
    // `ud2` with no usable IDT: a triple fault, which only the inner kvmini
    // (on L1's /dev/kvm) sees; its status 3 must be ours.
    let mut code = print(b"about to fault\n");
    code.extend_from_slice(&[0x0f, 0x0b]);
    let k = tiny_kernel("triple-fault", &code);
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--memory",
        "32M",
        "--kernel",
        k.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&k);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(text(&out.stdout).contains("about to fault"));
    assert!(
        stderr.contains("vcpu0: the guest triple-faulted"),
        "{stderr}"
    );
}

#[test]
fn guest_panic_exits_4_through_the_fallback() {
    // What Linux prints before `panic=1` reboots it; the inner kvmini
    // watches the console and exits 4.
    let mut code = print(b"Kernel panic - not syncing: emulated test\r\n");
    code.extend_from_slice(&RESET);
    let k = tiny_kernel("panic", &code);
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--memory",
        "32M",
        "--kernel",
        k.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&k);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("the guest kernel panicked: Kernel panic - not syncing: emulated test"),
        "{stderr}"
    );
}

#[test]
fn ctrl_a_x_exits_130_through_the_fallback() {
    use std::io::Read;
    // On a terminal, QEMU's console multiplexer takes Ctrl-A x; kvmini
    // must then exit 130, as with hardware KVM, and restore the terminal.
    let mut code = print(b"ready for ctrl-a x\n");
    code.extend_from_slice(&HALT);
    let k = tiny_kernel("halts", &code);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut master, slave) = open_pty();
    let before = lflags(&slave);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(["run", "--accel", "emulated", "--memory", "32M", "--kernel"])
        .arg(&k)
        .stdin(slave.try_clone().expect("cannot dup the pty"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run kvmini");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if text(&seen).contains("ready for ctrl-a x") {
                let _ = tx.send(());
            }
        }
        seen
    });
    let ready = rx.recv_timeout(Duration::from_secs(300)).is_ok();
    if ready {
        master
            .write_all(b"\x01x")
            .expect("cannot type into the pty");
    }
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if !ready || start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&k);
            if ready {
                panic!("kvmini did not exit within 120 s of Ctrl-A x");
            }
            panic!("the guest never printed its ready line");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&k);
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let console = text(&reader.join().unwrap_or_default());
    eprintln!("---- console:\n{console}\n---- stderr:\n{err}");
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("quit with Ctrl-A x"), "{err}");
    assert_eq!(lflags(&slave), before, "terminal settings not restored");
}

#[test]
fn bad_kernel_fails_before_starting_qemu() {
    let path = temp_path("not-a-kernel");
    std::fs::write(&path, b"this is not a kernel\n").unwrap();
    // Proof that no emulated machine was prepared (QEMU starts only after
    // that), not a wall-clock bound: an emulated.sh that records having run.
    let fake = FakeResources::new("resources-bad-kernel");
    let (out, prepared) = fake.run(&[
        "run",
        "--accel",
        "emulated",
        "--kernel",
        path.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot be booted") && stderr.contains(&*path.to_string_lossy()),
        "unclear error: {stderr}"
    );
    assert!(!prepared, "the emulated machine was prepared: {stderr}");
}

#[test]
fn net_is_refused_with_the_reason() {
    let path = temp_path("kernel-for-net");
    std::fs::write(&path, b"never booted\n").unwrap();
    let fake = FakeResources::new("resources-net");
    let (out, prepared) = fake.run(&[
        "run",
        "--accel",
        "emulated",
        "--kernel",
        path.to_str().unwrap(),
        "--net",
        "tap=kvmini-none0",
    ]);
    let _ = std::fs::remove_file(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("--net tap= needs hardware KVM") && stderr.contains("--net user"),
        "unclear error: {stderr}"
    );
    assert!(!prepared, "the emulated machine was prepared: {stderr}");
}

/// What the two tests above rely on: kvmini does run the fake emulated.sh
/// once its checks pass (so "not prepared" there means something).
#[test]
fn fake_resources_see_a_prepared_machine() {
    let fake = FakeResources::new("resources-good");
    let k = tiny_kernel("good-for-fake", &RESET);
    let (out, prepared) = fake.run(&[
        "run",
        "--accel",
        "emulated",
        "--kernel",
        k.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&k);
    assert!(prepared, "emulated.sh never ran: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn disks_pass_through_and_keep_guest_writes() {
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
        "emulated",
        "--disk",
        &rw_arg,
        "--disk",
        &ro_arg,
        "--cmdline",
        "-- echo guest-read=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 9); \
         echo emu-guest-wrote | dd of=/dev/vda bs=512 seek=4 conv=sync,fsync; \
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
        b"emu-guest-wrote",
        "host sees the guest's write"
    );
    assert!(l.contains(&"vdb-rc=1"), "read-only disk refused the write");
    assert!(untouched, "read-only image unchanged");
}

/// A cached test artefact, built on first use by its resources/ script.
fn artefact(script: &str) -> PathBuf {
    let relative = script.strip_prefix("resources/").unwrap_or(script);
    kvmini::guest::build_artefact(relative).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ext4_root_written_by_the_guest_is_clean_on_the_host() {
    let kernel = artefact("resources/kernel/build.sh").join("vmlinux");
    let image = temp_path("root.ext4");
    std::fs::copy(artefact("resources/rootfs/build-ext4.sh"), &image).unwrap();
    let disk = format!("path={}", image.display());
    let out = kvmini(&[
        "run",
        "--accel",
        "emulated",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk",
        &disk,
        "--cmdline",
        "root=/dev/vda rw init=/init -- echo persisted-by-guest > /hello.txt; \
         mount -o remount,ro /",
    ]);
    let cat = Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs) is needed for this test");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&image)
        .output()
        .expect("e2fsck (e2fsprogs) is needed for this test");
    let _ = std::fs::remove_file(&image);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("kvmini-guest: exit status 0"));
    assert_eq!(
        text(&cat.stdout),
        "persisted-by-guest\n",
        "the host reads the guest's file"
    );
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}\n{}",
        text(&fsck.stdout),
        text(&fsck.stderr)
    );
}

#[test]
fn exec_returns_output_and_status_through_the_fallback() {
    // Issue 8's "done when": `kvmini exec -- uname -r` on a host without
    // hardware virtualization (auto picks the fallback here; forced so the
    // test means the same on every host).
    let out = kvmini(&["exec", "--accel", "emulated", "--", "uname", "-r"]);
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}\n",
            common::kernel_release(&artefact("resources/kernel/build.sh"))
        )
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("@@KVMINI-EMU"), "report marker on stderr");
    assert!(!stderr.contains("cached:"), "build chatter on stderr");
}

#[test]
fn exec_share_stderr_and_status_through_the_fallback() {
    let dir = temp_path("share");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.txt"), "host-bytes").unwrap();
    std::fs::write(dir.join("gone.txt"), "deleted by the guest").unwrap();
    let share = format!("{}:/mnt/work", dir.display());
    let out = kvmini(&[
        "exec",
        "--accel",
        "emulated",
        "--share",
        &share,
        "--workdir",
        "/mnt/work",
        "--",
        "sh",
        "-c",
        "cat in.txt; echo to-stderr >&2; printf 'new\\0file' > out.bin; rm gone.txt; exit 42",
    ]);
    let written = std::fs::read(dir.join("out.bin"));
    let deleted = !dir.join("gone.txt").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(text(&out.stdout), "host-bytes");
    assert!(
        text(&out.stderr).ends_with("to-stderr\n"),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(written.expect("out.bin not copied back"), b"new\0file");
    assert!(
        deleted,
        "gone.txt, deleted in the guest, is still on the host"
    );
}

#[test]
fn exec_refuses_accel_kvm_without_hardware_virtualization() {
    let out = kvmini(&["exec", "--accel", "kvm", "--", "true"]);
    if kvmini::arch::x86_64::cpuid::host_has_hw_virt() {
        // Hardware KVM: the command simply runs.
        assert_eq!(out.status.code(), Some(0));
        return;
    }
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("no hardware virtualization"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn default_guest_shell_prompt_through_the_fallback() {
    // The README's first command, `kvmini run` with no arguments, on a host
    // without hardware virtualization: the default guest boots to a shell
    // prompt, runs what is typed, and `poweroff` ends kvmini with 0.
    use std::io::{Read, Write};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmini"))
        .args(["run", "--accel", "emulated", "--memory", "256M"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run kvmini");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // A hung machine must fail the test, not hang it: kill kvmini after 300 s.
    let (done, cancelled) = std::sync::mpsc::channel::<()>();
    let pid = child.id().to_string();
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(Duration::from_secs(300)).is_err() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
    });
    let mut seen = Vec::new();
    let mut typed = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if !typed && text(&seen).contains("/ #") {
            stdin.write_all(b"echo typed-$((6*7))\npoweroff\n").unwrap();
            typed = true;
        }
    }
    let status = child.wait().unwrap();
    let _ = done.send(());
    let _ = watchdog.join();
    let console = text(&seen);
    eprintln!("---- console:\n{console}");
    assert!(typed, "no shell prompt");
    assert!(console.contains("typed-42"), "typed command did not run");
    assert!(
        console.contains("kvmini-guest: poweroff requested"),
        "the guest did not power off on `poweroff`"
    );
    assert_eq!(status.code(), Some(0));
}

/// `--net user` through the fallback: the guest's connections to its
/// gateway reach this host's loopback (through the emulated machine's NIC
/// on a passt here and the inner kvmini's own passt), and a forward carries
/// a connection from this host into the guest. Hashes compared.
#[test]
fn user_net_through_the_fallback() {
    if !passt_can_run() {
        let out = kvmini(&["exec", "--accel", "emulated", "--net", "user", "--", "true"]);
        return refused_without_user_namespaces("user_net_through_the_fallback", &out);
    }
    use std::io::Read;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let want = sha256(&body);
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    // `/done` answers 404 until the host has the guest's line: a guest that
    // powered off right after writing would lose it on the way.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host_done = done.clone();
    std::thread::spawn(move || {
        for s in server.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = [0u8; 1024];
            let n = s.read(&mut req).unwrap_or(0);
            if text(&req[..n]).starts_with("GET /done ") {
                let status = if done.load(std::sync::atomic::Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "404 Not Found"
                };
                let _ = write!(s, "HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    let fwd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = fwd.local_addr().unwrap().port();
    drop(fwd);
    // The guest fetches, then serves one line on its port 8080 (to every
    // connection: one made before the guest listened may reach it late)
    // and asks until the host has it.
    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}'); \
         wget -qO- http://$gw:{port}/f | sha256sum; \
         nc -ll -p 8080 -e echo from-the-guest & \
         until wget -qO- http://$gw:{port}/done 2>/dev/null; do sleep 1; done"
    );
    let net = format!("user,forward=tcp:{host_port}:8080");
    let vm = std::thread::spawn(move || {
        kvmini(&[
            "exec", "--accel", "emulated", "--net", &net, "--", "sh", "-c", &script,
        ])
    });
    let start = Instant::now();
    let said = loop {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "the guest's server never answered on host port {host_port}"
        );
        if vm.is_finished() {
            let out = vm.join().unwrap();
            panic!(
                "kvmini ended ({}) before the host reached the guest's server: {}",
                out.status,
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", host_port)) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Debian 12's passt completes a forwarded connection towards the
        // guest only once the host side sends something or closes its
        // sending side (docs/testing.md): do both.
        let _ = s.write_all(b"hello\n");
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        if !got.is_empty() {
            break text(&got);
        }
    };
    host_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = vm.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("{want}  -")),
        "the guest's copy of the host's file differs: {}",
        text(&out.stdout)
    );
    assert_eq!(said, "from-the-guest\n");
}
