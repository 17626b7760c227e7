//! Shared by the integration tests: tiny guest kernels assembled byte by
//! byte, and a pseudo-terminal for tests that need an interactive console.
//! (Each test crate uses only part of it.)
#![allow(dead_code)]

/// Guest physical address the test kernels load at (1 MiB, where Linux goes).
const LOAD_ADDR: u64 = 0x10_0000;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;

/// Wraps 64-bit code in a minimal ELF64 executable loaded at `LOAD_ADDR`.
pub fn elf(code: &[u8]) -> Vec<u8> {
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
pub fn print(text: &[u8]) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03];
    for &c in text {
        code.extend_from_slice(&[0xb0, c, 0xee]);
    }
    code
}

/// `mov al, 0xfe; out 0x64, al` (i8042 CPU reset), then `hlt` in a loop.
pub const RESET: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// `cli; hlt`, then back to the `hlt`: a guest that never ends by itself.
pub const HALT: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];

/// A pseudo-terminal: (master, slave).
pub fn open_pty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two file descriptors into the two ints, which
    // outlive the call; the name, termios and winsize arguments may be null.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(
        ret,
        0,
        "TEST NOT RUN: openpty failed: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: openpty succeeded, so both are open descriptors that nothing
    // else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    }
}

/// The local-mode flags (ICANON, ECHO, ...) of a terminal.
pub fn lflags(tty: &std::fs::File) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed termios is a valid buffer for tcgetattr to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `tty` is an open terminal descriptor and `t` a valid termios.
    let ret = unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) };
    assert_eq!(ret, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    t.c_lflag
}

/// Whether this host lets a process make a user namespace, which passt
/// (`--net user`) needs for its sandbox (not in a chroot, as in
/// ../shared/fresh-machine): kvmini's own preflight probe.
pub fn passt_can_run() -> bool {
    kvmini_vmm::devices::virtio::net::passt::user_namespaces_allowed().is_ok()
}

/// Where passt cannot run, `--net user` must be refused before anything
/// boots, saying why: asserted instead of the data path, and said loudly.
pub fn refused_without_user_namespaces(test: &str, out: &std::process::Output) {
    use std::io::Write;
    // Past the harness's capture: seen even when the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: NOT RUN as written: this host refuses user namespaces (a chroot?), \
         so passt cannot run; checking the refusal instead"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(err.contains("user namespace"), "{err}");
}

/// SHA-256 of `data` as `sha256sum` prints it (the guest's busybox has the
/// same command).
pub fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The release (`uname -r`) of the kernel built in `kernel_dir` by
/// resources/kernel/build.sh, from the config it kept. The source package
/// (linux-source-6.12) moves with Debian's updates, so tests never name one.
pub fn kernel_release(kernel_dir: &std::path::Path) -> String {
    let config = kernel_dir.join("config");
    let text = std::fs::read_to_string(&config)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", config.display()));
    // "# Linux/x86_64 6.12.117 Kernel Configuration"
    text.lines()
        .find_map(|l| l.strip_prefix("# Linux/x86_64 "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release in {}", config.display()))
        .to_string()
}
