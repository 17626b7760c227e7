//! Seccomp: each VMM thread that touches guest data runs under an
//! allow-list of system calls for its kind ([`ThreadKind`], lists in
//! [`filters`]), installed by the thread itself before it serves the guest
//! (after every device, file and TAP is open), with `PR_SET_NO_NEW_PRIVS`.
//! A call outside the list traps (SECCOMP_RET_TRAP): the SIGSYS handler
//! here writes which thread kind made which call (number and name) to
//! stderr with async-signal-safe calls only, and exits
//! [`EXIT_SECCOMP`]. `--seccomp off` runs without filters, for debugging.
//!
//! Filters are built with rust-vmm's `seccompiler` (the BPF compiler
//! Firecracker and Cloud Hypervisor use): rules by syscall number and
//! argument, compiled to classic BPF, no libseccomp C library to link
//! statically.

pub mod filters;
#[cfg(test)]
mod guest_paths;
pub mod names;

use std::cell::Cell;
use std::fmt;
use std::sync::Once;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// kvmini's exit code when a thread made a forbidden system call: 128 +
/// SIGSYS, as a shell reports a process SIGSYS killed.
pub const EXIT_SECCOMP: i32 = 128 + libc::SIGSYS;

/// The environment variable that makes a thread of the kind it names
/// (`vcpu`, `event-loop`, `disk-io`, `writer`) make one forbidden system
/// call right after installing its filter: the tests prove each filter
/// that way. Read once, at thread start.
pub const TEST_TRIGGER_ENV: &str = "KVMINI_TEST_SECCOMP_VIOLATION";

/// Whether the threads run under their filters (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    #[default]
    On,
    Off,
}

impl Seccomp {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "on" => Some(Self::On),
            "off" => Some(Self::Off),
            _ => None,
        }
    }

    /// The flag value that selects this mode.
    pub fn name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

/// The kinds of VMM thread, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// `vcpu<N>`: KVM_RUN and the port/MMIO exits it dispatches.
    Vcpu,
    /// `vcpu<N>` of a VM with a vhost-user device (`--fs`): also the
    /// device's messages to its backend on activation and reset.
    VcpuVhostUser,
    /// `event-loop`: virtio-net, virtio-console, console input.
    EventLoop,
    /// `disk<N>`: one disk's requests.
    DiskIo,
    /// `writer-*`: one output stream's writes to the host.
    Writer,
}

impl ThreadKind {
    pub const ALL: [Self; 5] = [
        Self::Vcpu,
        Self::VcpuVhostUser,
        Self::EventLoop,
        Self::DiskIo,
        Self::Writer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vcpu",
            Self::VcpuVhostUser => "vcpu-vhost-user",
            Self::EventLoop => "event-loop",
            Self::DiskIo => "disk-io",
            Self::Writer => "writer",
        }
    }

    fn index(self) -> u8 {
        match self {
            Self::Vcpu => 1,
            Self::EventLoop => 2,
            Self::DiskIo => 3,
            Self::Writer => 4,
            Self::VcpuVhostUser => 5,
        }
    }
}

#[derive(Debug)]
pub enum Error {
    /// The allow-list did not compile (a kvmini bug).
    Compile(ThreadKind, seccompiler::Error),
    /// The kernel refused the filter or PR_SET_NO_NEW_PRIVS.
    Install(ThreadKind, seccompiler::Error),
    /// The SIGSYS handler could not be installed.
    Handler(std::io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compile(k, e) => write!(f, "cannot build the {} seccomp filter: {e}", k.name()),
            Self::Install(k, e) => write!(
                f,
                "cannot install the {} seccomp filter: {e} (a kernel without seccomp? \
                 --seccomp off runs without filters)",
                k.name()
            ),
            Self::Handler(e) => write!(f, "cannot install the SIGSYS handler: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The BPF program of `kind`'s allow-list: listed calls are allowed,
/// every other traps.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(
        filters::rules(kind).map_err(|e| Error::Compile(kind, e.into()))?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Compile(kind, e.into()))?;
    BpfProgram::try_from(filter).map_err(|e| Error::Compile(kind, e.into()))
}

/// Installs `kind`'s filter on the calling thread (and PR_SET_NO_NEW_PRIVS
/// on the process), after the SIGSYS handler.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    let program = compile(kind)?;
    install_sigsys_handler()?;
    THREAD_KIND.with(|k| k.set(kind.index()));
    seccompiler::apply_filter(&program).map_err(|e| Error::Install(kind, e))
}

/// Whether the test trigger asks a `kind` thread to misbehave.
pub fn test_trigger(kind: ThreadKind) -> bool {
    std::env::var(TEST_TRIGGER_ENV).is_ok_and(|v| v == kind.name())
}

/// The forbidden call the test trigger makes: `getppid`, harmless if the
/// filter is missing (the test then fails because kvmini lives on).
pub fn make_forbidden_call() {
    // SAFETY: getppid takes no arguments and touches no memory.
    unsafe { libc::syscall(libc::SYS_getppid) };
}

thread_local! {
    /// The calling thread's kind ([`ThreadKind::index`]), 0 if it has no
    /// filter; read by the SIGSYS handler (a plain TLS read, no lazy
    /// initialisation, so it is async-signal-safe).
    static THREAD_KIND: Cell<u8> = const { Cell::new(0) };
}

fn install_sigsys_handler() -> Result<(), Error> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // glibc opens /proc/sys/vm/overcommit_memory the first time it
        // gives memory of a thread's heap back (heap_trim -> shrink_heap):
        // under a filter that open would end kvmini at a random moment
        // (it did, for a vCPU thread resetting devices). No trimming, no
        // open: the threads' heaps keep their peak size (small; guest RAM
        // is its own mapping).
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigsys as extern "C" fn(_, _, _) as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `act` is fully initialised and `on_sigsys` only makes
        // async-signal-safe calls (write, _exit); the old action is not
        // needed.
        if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
            result = Err(Error::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// Offset of `si_syscall` in the kernel's `siginfo_t` on x86_64: signo,
/// errno, code (3 x 4 bytes), padding to 16, then `_sigsys { void
/// *_call_addr; int _syscall; unsigned int _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers,
    // and for SIGSYS from seccomp it fills `_sigsys`; the read stays inside
    // the 128-byte structure.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    // A walk over a constant array: nothing allocates in the handler.
    let index = THREAD_KIND.with(Cell::get);
    let kind = ThreadKind::ALL
        .iter()
        .find(|k| k.index() == index)
        .map_or("unfiltered", |k| k.name());
    let mut msg = Message::new();
    msg.push(b"kvmini: error: seccomp: a thread of kind ");
    msg.push(kind.as_bytes());
    msg.push(b" made the system call ");
    msg.push(names::name(i64::from(nr)).as_bytes());
    msg.push(b" (");
    msg.push_number(nr);
    msg.push(
        b"), which its allow-list forbids: kvmini stopped the VM (a kvmini bug, or a guest \
          attacking it; --seccomp off runs without filters, for debugging)\n",
    );
    msg.write_to_stderr();
    // SAFETY: _exit is async-signal-safe and ends the whole process.
    unsafe { libc::_exit(EXIT_SECCOMP) };
}

/// A message built on the stack, without allocating (signal handler).
struct Message {
    buf: [u8; 512],
    len: usize,
}

impl Message {
    fn new() -> Self {
        Self {
            buf: [0; 512],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i32) {
        let mut digits = [0u8; 12];
        let mut i = digits.len();
        let negative = n < 0;
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if negative {
            i -= 1;
            digits[i] = b'-';
        }
        self.push(&digits[i..]);
    }

    fn write_to_stderr(&self) {
        // SAFETY: write(2) is async-signal-safe; the buffer is valid for
        // `len` bytes.
        unsafe { libc::write(libc::STDERR_FILENO, self.buf.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in ThreadKind::ALL {
            let p = compile(kind).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.is_empty() && p.len() < 4096, "{kind:?}: {}", p.len());
            eprintln!("{kind:?}: {} BPF instructions", p.len());
        }
    }

    #[test]
    fn the_message_is_built_without_allocating() {
        let mut m = Message::new();
        m.push(b"call ");
        m.push_number(39);
        m.push(b" ");
        m.push_number(-7);
        m.push(b" ");
        m.push_number(i32::MIN);
        assert_eq!(&m.buf[..m.len], b"call 39 -7 -2147483648");
        let mut long = Message::new();
        long.push(&[b'x'; 600]);
        assert_eq!(long.len, 512);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Seccomp::parse("on"), Some(Seccomp::On));
        assert_eq!(Seccomp::parse("off"), Some(Seccomp::Off));
        assert_eq!(Seccomp::parse("yes"), None);
        assert_eq!(Seccomp::default(), Seccomp::On);
        for s in [Seccomp::On, Seccomp::Off] {
            assert_eq!(Seccomp::parse(s.name()), Some(s));
        }
    }
}
