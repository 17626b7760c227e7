//! What a vCPU can say about a guest crash: a ring of its most recent
//! exits ([`ExitHistory`], kept on every exit at the cost of a copy), and
//! the report made on `KVM_EXIT_SHUTDOWN` (a triple fault) from KVM's
//! registers, segments, pending events, the bytes at the guest's RIP and
//! RSP and that ring ([`ShutdownState::report`]), so a failure explains
//! itself without a rerun.
//!
//! On AMD, KVM re-initialises the vCPU when it sees the shutdown (the VMCB
//! is undefined after a SHUTDOWN intercept), so the registers it returns
//! are the INIT state, not the faulting one; the report says so when it
//! sees that state, and the exit ring is then the best evidence.

use std::fmt::Write as _;

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs, kvm_vcpu_events};

/// How many of a vCPU's most recent exits it remembers.
pub const EXIT_HISTORY: usize = 16;

/// What kind of exit a [`ExitRecord`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// `KVM_RUN` returned `EINTR`/`EAGAIN` (a signal, a kick).
    Interrupted,
    /// Any other exit; `addr` holds KVM's exit reason.
    Other,
}

/// One exit: when, what, where and which bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// Microseconds since the vCPU thread started, to the coarse clock's
    /// tick (1-10 ms): exits between two ticks share a time.
    pub at_us: u64,
    pub kind: ExitKind,
    /// Port, guest-physical address, or (for [`ExitKind::Other`]) the exit
    /// reason.
    pub addr: u64,
    /// Access width in bytes (0 when there was no access).
    pub len: u8,
    /// The bytes written, or returned to the guest for reads, as a
    /// little-endian number (the first 8).
    pub data: u64,
}

impl ExitRecord {
    /// A port or MMIO access of `bytes`.
    pub fn access(at_us: u64, kind: ExitKind, addr: u64, bytes: &[u8]) -> Self {
        let mut data = [0u8; 8];
        let n = bytes.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
        Self {
            at_us,
            kind,
            addr,
            len: u8::try_from(bytes.len()).unwrap_or(u8::MAX),
            data: u64::from_le_bytes(data),
        }
    }

    /// An exit without an access.
    pub fn event(at_us: u64, kind: ExitKind, reason: u64) -> Self {
        Self {
            at_us,
            kind,
            addr: reason,
            len: 0,
            data: 0,
        }
    }
}

/// How many distinct (kind, port or address) pairs [`ExitCounts`] counts
/// one by one; a guest touching more (it chooses the addresses) cannot
/// grow the table: the rest are counted together.
pub const EXIT_COUNT_SLOTS: usize = 32;

/// Exits of one vCPU counted by kind and port/address: what a boot costs in
/// exits, and where (logged at debug level when the vCPU stops). Bounded to
/// [`EXIT_COUNT_SLOTS`] pairs plus one "elsewhere" count.
#[derive(Debug, Default)]
pub struct ExitCounts {
    slots: Vec<(ExitKind, u64, u64)>,
    elsewhere: u64,
}

impl ExitCounts {
    pub fn add(&mut self, kind: ExitKind, addr: u64) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|(k, a, _)| *k == kind && *a == addr)
        {
            slot.2 += 1;
        } else if self.slots.len() < EXIT_COUNT_SLOTS {
            self.slots.push((kind, addr, 1));
        } else {
            self.elsewhere += 1;
        }
    }

    /// The `top` most frequent pairs, most frequent first, e.g.
    /// "io-out 0x3f8 x812, mmio-write 0xd0000050 x40, 3 elsewhere".
    pub fn summary(&self, top: usize) -> String {
        let mut sorted: Vec<_> = self.slots.iter().collect();
        sorted.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        let rest: u64 = sorted.iter().skip(top).map(|s| s.2).sum::<u64>() + self.elsewhere;
        let mut out: Vec<String> = sorted
            .iter()
            .take(top)
            .map(|(kind, addr, n)| format!("{} {addr:#x} x{n}", kind.label()))
            .collect();
        if rest > 0 {
            out.push(format!("{rest} elsewhere"));
        }
        out.join(", ")
    }
}

impl ExitKind {
    fn label(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// The last [`EXIT_HISTORY`] exits of one vCPU, and all of them counted.
#[derive(Debug, Default)]
pub struct ExitHistory {
    ring: [Option<ExitRecord>; EXIT_HISTORY],
    next: usize,
    total: u64,
    /// Only kept when asked for ([`ExitHistory::counting`]): a scan per
    /// exit on the vCPU's hot path, for a debug-level line.
    counts: Option<ExitCounts>,
}

impl ExitHistory {
    /// A history that also counts every exit by kind and port/address.
    pub fn counting() -> Self {
        Self {
            counts: Some(ExitCounts::default()),
            ..Self::default()
        }
    }

    pub fn push(&mut self, record: ExitRecord) {
        if let Some(c) = &mut self.counts {
            c.add(record.kind, record.addr);
        }
        self.ring[self.next] = Some(record);
        self.next = (self.next + 1) % EXIT_HISTORY;
        self.total += 1;
    }

    /// The exits counted by kind and port/address, if counted.
    pub fn counts(&self) -> Option<&ExitCounts> {
        self.counts.as_ref()
    }

    /// Exits seen since the vCPU started.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The remembered exits, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &ExitRecord> {
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).flatten()
    }
}

/// Everything KVM could tell about a vCPU when it stopped; each part is
/// `Err` with KVM's error when it could not be read.
pub struct ShutdownState {
    pub cpu: u8,
    pub regs: Result<kvm_regs, String>,
    pub sregs: Result<kvm_sregs, String>,
    pub events: Result<kvm_vcpu_events, String>,
    /// Up to 15 bytes at RIP, or why not.
    pub code: Result<Vec<u8>, String>,
    /// 64 bytes at RSP, or why not.
    pub stack: Result<Vec<u8>, String>,
    /// Microseconds since the vCPU thread started, to the coarse clock's
    /// tick (1-10 ms): exits between two ticks share a time.
    pub at_us: u64,
}

/// The state of an x86 CPU right after INIT/RESET: real mode at
/// F000:FFF0. KVM puts an AMD vCPU there when it reports a shutdown.
pub fn is_init_state(regs: &kvm_regs, sregs: &kvm_sregs) -> bool {
    regs.rip == 0xfff0
        && sregs.cs.selector == 0xf000
        && sregs.cs.base == 0xffff_0000
        && sregs.cr0 & 1 == 0
        && sregs.efer == 0
}

fn segment(out: &mut String, name: &str, s: &kvm_segment) {
    let _ = writeln!(
        out,
        "  {name:<3} sel={:#06x} base={:#018x} limit={:#010x} type={:#x} s={} dpl={} p={} db={} l={} g={} avl={} unusable={}",
        s.selector, s.base, s.limit, s.type_, s.s, s.dpl, s.present, s.db, s.l, s.g, s.avl, s.unusable
    );
}

fn table(out: &mut String, name: &str, t: &kvm_dtable) {
    let _ = writeln!(out, "  {name} base={:#018x} limit={:#06x}", t.base, t.limit);
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl ShutdownState {
    /// A multi-line report: registers, control registers and segments,
    /// pending events, code and stack bytes, and the last exits.
    pub fn report(&self, history: &ExitHistory) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "vcpu{} at KVM_EXIT_SHUTDOWN, {:.3} s after it started, exit #{}:",
            self.cpu,
            self.at_us as f64 / 1e6,
            history.total() + 1
        );
        if let (Ok(regs), Ok(sregs)) = (&self.regs, &self.sregs) {
            if is_init_state(regs, sregs) {
                let _ = writeln!(
                    out,
                    "  NOTE: KVM already put this vCPU in its INIT state (real mode at \
                     f000:fff0), as it does on AMD after a shutdown: the registers below \
                     are not the faulting state; the exits below are the last evidence."
                );
            }
        }
        match &self.regs {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  rip={:#018x} rsp={:#018x} rflags={:#010x}",
                    r.rip, r.rsp, r.rflags
                );
                let _ = writeln!(
                    out,
                    "  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}",
                    r.rax, r.rbx, r.rcx, r.rdx
                );
                let _ = writeln!(
                    out,
                    "  rsi={:#018x} rdi={:#018x} rbp={:#018x} r8 ={:#018x}",
                    r.rsi, r.rdi, r.rbp, r.r8
                );
                let _ = writeln!(
                    out,
                    "  r9 ={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}",
                    r.r9, r.r10, r.r11, r.r12
                );
                let _ = writeln!(
                    out,
                    "  r13={:#018x} r14={:#018x} r15={:#018x}",
                    r.r13, r.r14, r.r15
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  registers: cannot read them: {e}");
            }
        }
        match &self.sregs {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "  cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} cr8={:#x}",
                    s.cr0, s.cr2, s.cr3, s.cr4, s.cr8
                );
                let _ = writeln!(
                    out,
                    "  efer={:#x} apic_base={:#x} pending interrupt bitmap={:x?}",
                    s.efer, s.apic_base, s.interrupt_bitmap
                );
                for (name, seg) in [
                    ("cs", &s.cs),
                    ("ss", &s.ss),
                    ("ds", &s.ds),
                    ("es", &s.es),
                    ("fs", &s.fs),
                    ("gs", &s.gs),
                    ("tr", &s.tr),
                    ("ldt", &s.ldt),
                ] {
                    segment(&mut out, name, seg);
                }
                table(&mut out, "gdt", &s.gdt);
                table(&mut out, "idt", &s.idt);
            }
            Err(e) => {
                let _ = writeln!(out, "  special registers: cannot read them: {e}");
            }
        }
        match &self.events {
            Ok(e) => {
                let _ = writeln!(
                    out,
                    "  events: exception injected={} pending={} nr={} has_error_code={} error_code={:#x} \
                     payload={}:{:#x}; interrupt injected={} nr={} soft={} shadow={}; \
                     nmi injected={} pending={} masked={}; triple_fault pending={}; flags={:#x}",
                    e.exception.injected,
                    e.exception.pending,
                    e.exception.nr,
                    e.exception.has_error_code,
                    e.exception.error_code,
                    e.exception_has_payload,
                    e.exception_payload,
                    e.interrupt.injected,
                    e.interrupt.nr,
                    e.interrupt.soft,
                    e.interrupt.shadow,
                    e.nmi.injected,
                    e.nmi.pending,
                    e.nmi.masked,
                    e.triple_fault.pending,
                    e.flags
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  events: cannot read them: {e}");
            }
        }
        match &self.code {
            Ok(b) => {
                let _ = writeln!(out, "  bytes at rip: {}", hex(b));
            }
            Err(e) => {
                let _ = writeln!(out, "  bytes at rip: {e}");
            }
        }
        match &self.stack {
            Ok(b) => {
                for (i, chunk) in b.chunks(32).enumerate() {
                    let _ = writeln!(out, "  stack +{:#04x}: {}", i * 32, hex(chunk));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  stack: {e}");
            }
        }
        let records: Vec<&ExitRecord> = history.records().collect();
        let _ = writeln!(
            out,
            "  last {} of {} exits, oldest first (t = s since the vCPU started):",
            records.len(),
            history.total()
        );
        for r in records {
            let t = r.at_us as f64 / 1e6;
            let _ = match r.kind {
                ExitKind::IoIn | ExitKind::IoOut | ExitKind::MmioRead | ExitKind::MmioWrite => {
                    let (what, width) = match r.kind {
                        ExitKind::IoIn => ("in   port", 6),
                        ExitKind::IoOut => ("out  port", 6),
                        ExitKind::MmioRead => ("mmio read ", 12),
                        _ => ("mmio write", 12),
                    };
                    writeln!(
                        out,
                        "    t={t:.6} {what} {:#0width$x} len={} data={:#x}",
                        r.addr, r.len, r.data
                    )
                }
                ExitKind::Interrupted => writeln!(out, "    t={t:.6} interrupted (EINTR)"),
                ExitKind::Other => writeln!(out, "    t={t:.6} exit reason {}", r.addr),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_state() -> (kvm_regs, kvm_sregs) {
        let regs = kvm_regs {
            rip: 0xfff0,
            rflags: 2,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xffff_0000;
        (regs, sregs)
    }

    #[test]
    fn exit_counts_rank_by_frequency_and_stay_bounded() {
        let mut c = ExitCounts::default();
        for _ in 0..5 {
            c.add(ExitKind::IoOut, 0x3f8);
        }
        c.add(ExitKind::MmioWrite, 0xd000_0050);
        c.add(ExitKind::MmioWrite, 0xd000_0050);
        c.add(ExitKind::IoIn, 0x3fd);
        assert_eq!(
            c.summary(2),
            "io-out 0x3f8 x5, mmio-write 0xd0000050 x2, 1 elsewhere"
        );
        // A guest touching ever new addresses cannot grow the table.
        for addr in 0..10_000u64 {
            c.add(ExitKind::MmioRead, 0x1000_0000 + addr);
        }
        assert_eq!(c.slots.len(), EXIT_COUNT_SLOTS);
        let total: u64 = c.slots.iter().map(|s| s.2).sum::<u64>() + c.elsewhere;
        assert_eq!(total, 8 + 10_000, "every exit is counted once");
        assert!(c.summary(1).starts_with("io-out 0x3f8 x5, "));
    }

    #[test]
    fn only_a_counting_history_counts() {
        let mut plain = ExitHistory::default();
        let mut counting = ExitHistory::counting();
        for h in [&mut plain, &mut counting] {
            h.push(ExitRecord::access(1, ExitKind::IoOut, 0x3f8, b"a"));
        }
        assert!(plain.counts().is_none());
        assert_eq!(counting.counts().unwrap().summary(4), "io-out 0x3f8 x1");
    }

    #[test]
    fn history_keeps_the_last_exits_in_order() {
        let mut h = ExitHistory::default();
        assert_eq!(h.records().count(), 0);
        for i in 0..(EXIT_HISTORY as u64 + 5) {
            h.push(ExitRecord::access(i, ExitKind::IoOut, 0x3f8, &[i as u8]));
        }
        let seen: Vec<u64> = h.records().map(|r| r.at_us).collect();
        assert_eq!(seen, (5..EXIT_HISTORY as u64 + 5).collect::<Vec<_>>());
        assert_eq!(h.total(), EXIT_HISTORY as u64 + 5);
        let r = ExitRecord::access(0, ExitKind::MmioWrite, 0xd000_0064, &[1, 2, 3, 4]);
        assert_eq!((r.len, r.data), (4, 0x0403_0201));
        let wide = ExitRecord::access(0, ExitKind::MmioRead, 0, &[0xff; 10]);
        assert_eq!((wide.len, wide.data), (10, u64::MAX));
    }

    #[test]
    fn report_names_every_part_and_flags_the_init_state() {
        let mut h = ExitHistory::default();
        h.push(ExitRecord::access(
            1_500_000,
            ExitKind::MmioRead,
            0xd000_0060,
            &[1, 0, 0, 0],
        ));
        h.push(ExitRecord::event(1_600_000, ExitKind::Interrupted, 0));
        let mut regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rsp: 0xffff_c900_0000_3f00,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr0: 0x8005_0033,
            cr3: 0x0123_4000,
            cr4: 0x3606f0,
            efer: 0xd01,
            ..Default::default()
        };
        sregs.idt.base = 0xffff_fe00_0000_0000;
        sregs.gdt.base = 0xffff_fe00_0000_1000;
        let state = |regs, sregs| ShutdownState {
            cpu: 0,
            regs: Ok(regs),
            sregs: Ok(sregs),
            events: Ok(kvm_vcpu_events::default()),
            code: Ok(vec![0x0f, 0x0b]),
            stack: Err("not mapped".into()),
            at_us: 2_000_000,
        };
        let text = state(regs, sregs).report(&h);
        for want in [
            "vcpu0 at KVM_EXIT_SHUTDOWN, 2.000 s",
            "rip=0xffffffff81000000",
            "cr0=0x80050033",
            "cr3=0x0000000001234000",
            "efer=0xd01",
            "idt base=0xfffffe0000000000",
            "gdt base=0xfffffe0000001000",
            "  cs  sel=",
            "  tr  sel=",
            "events: exception injected=0",
            "bytes at rip: 0f 0b",
            "stack: not mapped",
            "last 2 of 2 exits",
            "t=1.500000 mmio read  0x00d0000060 len=4 data=0x1",
            "t=1.600000 interrupted",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("INIT state"));
        (regs, sregs) = init_state();
        assert!(is_init_state(&regs, &sregs));
        assert!(state(regs, sregs).report(&h).contains("INIT state"));
        let broken = ShutdownState {
            cpu: 1,
            regs: Err("EIO".into()),
            sregs: Err("EIO".into()),
            events: Err("EIO".into()),
            code: Err("no registers".into()),
            stack: Err("no registers".into()),
            at_us: 0,
        };
        let text = broken.report(&ExitHistory::default());
        assert!(text.contains("registers: cannot read them: EIO"), "{text}");
        assert!(text.contains("last 0 of 0 exits"), "{text}");
    }
}
