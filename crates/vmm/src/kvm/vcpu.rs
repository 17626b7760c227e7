//! vCPU threads: one per vCPU, named `vcpu<N>`, running `KVM_RUN` and
//! dispatching port and MMIO exits to the buses. A vCPU stops when the VM's
//! [`ExitSignal`] is raised (by itself, another vCPU or the VMM) and it is
//! kicked out of `KVM_RUN` with a signal. Each vCPU remembers its last
//! exits, and a triple fault comes with a report of its state
//! ([`crate::kvm::crash`]).

use std::io;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::Bus;
use crate::exit::{ExitSignal, VmExit};
use crate::kvm::crash::{ExitHistory, ExitKind, ExitRecord, ShutdownState};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::thread::{self, VmmThread};

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only job is to
/// make `KVM_RUN` return `EINTR` instead of the process dying.
fn install_kick_handler() -> io::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(kick_signal(), noop_handler)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()));
    });
    result
}

/// Everything a vCPU thread needs; moved into the thread.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub exit: Arc<ExitSignal>,
    /// The filter it runs under: [`ThreadKind::VcpuVhostUser`] in a VM
    /// with a vhost-user device, else [`ThreadKind::Vcpu`].
    pub kind: ThreadKind,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    index: u8,
    thread: VmmThread<()>,
}

impl Vcpu {
    /// Starts the thread `vcpu<N>`, under the vCPU seccomp filter unless
    /// `seccomp` is off.
    pub fn spawn(self, seccomp: Seccomp) -> Result<VcpuHandle, thread::Error> {
        install_kick_handler().map_err(thread::Error::Spawn)?;
        let index = self.index;
        let thread = thread::spawn(format!("vcpu{index}"), self.kind, seccomp, move || {
            // Exit counts only feed a debug-level line.
            let mut history = if log::log_enabled!(log::Level::Debug) {
                ExitHistory::counting()
            } else {
                ExitHistory::default()
            };
            self.run(&mut history)
        })?;
        Ok(VcpuHandle { index, thread })
    }

    fn run(mut self, history: &mut ExitHistory) {
        let started = Instant::now();
        // Exit timestamps: coarse (the clock's tick), see thread::clock_time.
        let since = thread::clock_time(libc::CLOCK_MONOTONIC_COARSE).unwrap_or_default();
        while !self.exit.is_raised() {
            if let Some(reason) = self.run_once(history, since) {
                self.exit.raise(reason);
            }
        }
        // Where the guest's exits went: each one is a round trip through
        // KVM (and, nested, through L1), so this says what a boot costs.
        match history.counts() {
            Some(counts) => log::debug!(
                "vcpu{} stopped after {} exits in {:.2} s: {}",
                self.index,
                history.total(),
                started.elapsed().as_secs_f64(),
                counts.summary(12)
            ),
            None => log::debug!("vcpu{} stopped", self.index),
        }
    }

    /// One `KVM_RUN`; returns why the VM must stop, if it must. Every exit
    /// goes into `history`, timed from `since` (CLOCK_MONOTONIC_COARSE).
    fn run_once(&mut self, history: &mut ExitHistory, since: Duration) -> Option<VmExit> {
        let cpu = self.index;
        let now = || {
            let t = thread::clock_time(libc::CLOCK_MONOTONIC_COARSE).unwrap_or_default();
            u64::try_from(t.saturating_sub(since).as_micros()).unwrap_or(u64::MAX)
        };
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !self.pio.read(u64::from(port), data) {
                    log::debug!("vcpu{cpu}: read of unclaimed port {port:#x}");
                    data.fill(0xff);
                }
                history.push(ExitRecord::access(now(), ExitKind::IoIn, port.into(), data));
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !self.pio.write(u64::from(port), data) {
                    log::debug!("vcpu{cpu}: write {data:x?} to unclaimed port {port:#x}");
                }
                history.push(ExitRecord::access(
                    now(),
                    ExitKind::IoOut,
                    port.into(),
                    data,
                ));
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    log::debug!("vcpu{cpu}: read of unclaimed MMIO {addr:#x}");
                    data.fill(0xff);
                }
                history.push(ExitRecord::access(now(), ExitKind::MmioRead, addr, data));
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    log::debug!("vcpu{cpu}: write to unclaimed MMIO {addr:#x}");
                }
                history.push(ExitRecord::access(now(), ExitKind::MmioWrite, addr, data));
                None
            }
            Ok(VcpuExit::Shutdown) => {
                let report = self.shutdown_state(now()).report(history);
                Some(VmExit::TripleFault {
                    cpu,
                    early: history.total() == 0,
                    report,
                })
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::PowerOff),
                KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                KVM_SYSTEM_EVENT_CRASH => Some(VmExit::GuestCrash {
                    cpu,
                    detail: "the guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into(),
                }),
                other => Some(VmExit::GuestCrash {
                    cpu,
                    detail: format!("unknown system event {other}"),
                }),
            },
            Ok(VcpuExit::FailEntry(reason, _)) => Some(VmExit::FailEntry { cpu, reason }),
            Ok(VcpuExit::InternalError) => Some(self.internal_error()),
            Ok(VcpuExit::Hlt) => Some(VmExit::PowerOff),
            Ok(other) => Some(VmExit::GuestCrash {
                cpu,
                detail: format!("unexpected KVM exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                history.push(ExitRecord::event(now(), ExitKind::Interrupted, 0));
                None
            }
            Err(e) => Some(VmExit::VcpuError {
                cpu,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR`: suberror, KVM's data words, the
    /// guest RIP and the instruction bytes there.
    fn internal_error(&mut self) -> VmExit {
        let cpu = self.index;
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so KVM filled the
        // `internal` member of the union (and, for emulation failures with
        // the instruction-bytes flag, the `emulation_failure` view of it).
        let (suberror, data, insn) = unsafe {
            let run = self.fd.get_kvm_run();
            let internal = run.__bindgen_anon_1.internal;
            let n = (internal.ndata as usize).min(internal.data.len());
            let emu = run.__bindgen_anon_1.emulation_failure;
            let insn = (internal.suberror == KVM_INTERNAL_ERROR_EMULATION
                && emu.flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0)
                .then(|| {
                    let b = emu.__bindgen_anon_1.__bindgen_anon_1;
                    b.insn_bytes[..(b.insn_size as usize).min(15)].to_vec()
                });
            (internal.suberror, internal.data[..n].to_vec(), insn)
        };
        let rip = self.fd.get_regs().map(|r| r.rip).ok();
        let insn = insn.or_else(|| rip.and_then(|rip| self.bytes_at(rip)));
        let mut detail = format!("KVM_EXIT_INTERNAL_ERROR suberror {suberror}");
        if suberror == KVM_INTERNAL_ERROR_EMULATION {
            detail.push_str(" (instruction emulation failed)");
        }
        if let Some(rip) = rip {
            detail.push_str(&format!(", rip {rip:#x}"));
        }
        if let Some(insn) = insn {
            detail.push_str(&format!(", instruction bytes {insn:02x?}"));
        }
        if !data.is_empty() {
            detail.push_str(&format!(", data {data:x?}"));
        }
        VmExit::InternalError { cpu, detail }
    }

    /// Reads up to 15 bytes at guest virtual address `rip`, if mapped.
    fn bytes_at(&self, rip: u64) -> Option<Vec<u8>> {
        self.guest_bytes(rip, 15).ok()
    }

    /// Reads `len` bytes at guest virtual address `gva` through the vCPU's
    /// page tables; stops at the page end.
    fn guest_bytes(&self, gva: u64, len: usize) -> Result<Vec<u8>, String> {
        let t = self
            .fd
            .translate_gva(gva)
            .map_err(|e| format!("cannot translate {gva:#x}: {e}"))?;
        if t.valid == 0 {
            return Err(format!("{gva:#x} is not mapped"));
        }
        let in_page = 0x1000 - (gva & 0xfff) as usize;
        let mut buf = vec![0u8; len.min(in_page)];
        self.mem
            .read_slice(&mut buf, GuestAddress(t.physical_address))
            .map_err(|e| {
                format!(
                    "{gva:#x} maps to {:#x}, not guest RAM: {e}",
                    t.physical_address
                )
            })?;
        Ok(buf)
    }

    /// What KVM can tell about this vCPU after `KVM_EXIT_SHUTDOWN`.
    fn shutdown_state(&self, at_us: u64) -> ShutdownState {
        let regs = self.fd.get_regs().map_err(|e| e.to_string());
        let code = match &regs {
            Ok(r) => self.guest_bytes(r.rip, 15),
            Err(_) => Err("registers unknown".into()),
        };
        let stack = match &regs {
            Ok(r) => self.guest_bytes(r.rsp, 64),
            Err(_) => Err("registers unknown".into()),
        };
        ShutdownState {
            cpu: self.index,
            regs,
            sregs: self.fd.get_sregs().map_err(|e| e.to_string()),
            events: self.fd.get_vcpu_events().map_err(|e| e.to_string()),
            code,
            stack,
            at_us,
        }
    }
}

impl VcpuHandle {
    /// Kicks the thread out of `KVM_RUN` until it notices the raised exit
    /// signal, then joins it; gives up after `timeout` (a thread stuck
    /// outside KVM_RUN is left behind, and the process ends it when it
    /// exits). Returns whether it stopped. The exit signal must already be
    /// raised.
    pub fn stop(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                log::warn!(
                    "vcpu{}: did not stop within {timeout:?}; not waiting for it",
                    self.index
                );
                return false;
            }
            // A kick that lands just before the thread enters KVM_RUN is lost,
            // so keep kicking until it is gone.
            let _ = self.thread.handle().kill(kick_signal());
            self.thread
                .wait_until(Some(Instant::now() + Duration::from_millis(1)));
        }
        if self.thread.join_within(Duration::ZERO).is_none() {
            log::error!("vcpu{}: the thread panicked", self.index);
        }
        true
    }
}
