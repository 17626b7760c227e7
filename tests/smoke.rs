//! Tier 2: KVM smoke tests. Tiny guests, assembled here byte by byte, boot
//! through the real `kvmini` binary on any `/dev/kvm` (including the
//! software-assisted one on the project's machines): serial output, the
//! i8042 reset, a triple fault, an emulation failure, and bad input.
//!
//! These need `/dev/kvm`; without it they fail with a message saying so,
//! because a test that cannot run must not pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmm_sys_util::tempfile::TempFile;

/// Guest physical address the test kernels load at (1 MiB, where Linux goes).
const LOAD_ADDR: u64 = 0x10_0000;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Wraps 64-bit code in a minimal ELF64 executable loaded at `LOAD_ADDR`.
fn elf(code: &[u8]) -> Vec<u8> {
    let code_off = (EHDR_SIZE + PHDR_SIZE) as u64;
    let total = code_off + code.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00"); // 64-bit, little endian, v1
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&(LOAD_ADDR + code_off).to_le_bytes()); // e_entry
    f.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // no section headers
    assert_eq!(f.len(), EHDR_SIZE);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    f.extend_from_slice(&total.to_le_bytes()); // p_filesz
    f.extend_from_slice(&total.to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.extend_from_slice(code);
    f
}

/// `mov dx, 0x3f8`, then `mov al, c; out dx, al` for every byte of `text`.
fn print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for &c in text {
        code.extend_from_slice(&[0xb0, c, 0xee]);
    }
    code
}

/// `mov al, 0xfe; out 0x64, al` (i8042 CPU reset), then `hlt` in a loop.
const RESET: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

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

fn run_kernel(kernel: &Path, extra: &[&str]) -> Output {
    run_kernel_accel(kernel, "kvm-any", extra)
}

/// `accel`: kvm-any, because these guests run on any /dev/kvm, hardware or
/// software, unless a test is about `--accel` itself.
fn run_kernel_accel(kernel: &Path, accel: &str, extra: &[&str]) -> Output {
    let out = kvmini()
        .args(["run", "--accel", accel, "--memory", "32M", "--kernel"])
        .arg(kernel)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot start kvmini");
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
    let out = cmd.output().expect("cannot start kvmini");
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
    let unknown = kvmini()
        .args(["run", "--accel", "qemu", "--kernel"])
        .arg(good.as_path())
        .output()
        .unwrap();
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
