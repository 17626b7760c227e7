"""Where a frozen L1 is: asks QEMU's monitor (a unix socket) twice, a
second apart, for every vCPU's registers, and prints per vCPU whether it is
halted, at which privilege level, and whether its RIP moved; then the
first raw dump, the local APIC's state and the lines "timer-stuck: yes|no
(...)" (see timer_stuck) and "timer-pending: yes|no|?" (see timer_pending). (Debian's System.map is a stub, so no function
names.)

    python3 l1-dump.py MONITOR_SOCKET
    python3 l1-dump.py --revive MONITOR_SOCKET

--revive (after a dump said "timer-stuck: yes" or "timer-pending: yes"): presses and releases a
key on L1's keyboard controller, up to three times. The keyboard's
interrupt reaches L1's local APIC through the IO-APIC, which makes QEMU
look at the APIC's pending interrupts again; in the rig the lost timer
interrupt was then taken (IRR empty, the timer re-armed a second later),
though not after every key press (docs/testing.md). Then
prints "revived: yes" once the timer vector is no longer pending in both
of two samples a second apart (from a second after each key), else
"revived: no (...)".

Best effort: a failure is printed, never raised.
"""
import re
import socket
import sys
import time


def monitor(path, *commands):
    """The outputs of `commands`, sent in order over one connection."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    out = b""

    def drain(limit):
        nonlocal out
        end = time.time() + limit
        while time.time() < end:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if out.endswith(b"(qemu) "):
                break

    drain(3)  # banner and first prompt
    results = []
    for command in commands:
        out = b""
        s.sendall(command.encode() + b"\n")
        drain(10)
        text = out.decode(errors="replace").replace("\r", "")
        at = text.find("CPU#")
        results.append(text[at:] if at >= 0 else text)
    s.close()
    return results


def snapshot(path):
    """Registers and local APIC from one instant: the vCPUs are stopped
    while both are read, then resumed."""
    _, regs, lapic, _ = monitor(path, "stop", "info registers -a", "info lapic", "cont")
    return regs, lapic


def cpus(dump):
    """{cpu: (rip, cpl, halted, cr3, rflags, interrupt shadow)} from
    `info registers -a`."""
    out = {}
    parts = re.split(r"(?m)^CPU#(\d+)", dump)
    for i in range(1, len(parts) - 1, 2):
        body = parts[i + 1]

        def field(pattern):
            m = re.search(pattern, body)
            return m.group(1) if m else "?"

        out[parts[i]] = (
            field(r"[ER]IP=([0-9a-f]+)"),
            field(r"CPL=(\d)"),
            field(r"HLT=(\d)"),
            field(r"CR3=([0-9a-f]+)"),
            field(r"RFL=([0-9a-f]+)"),
            field(r"II=(\d)"),
        )
    return out


def revive(path, tries=3, limit=20):
    """Up to `tries` key presses, each followed by the two-sample check,
    within `limit` seconds in all (run.sh's watch loop waits meanwhile);
    prints each check's IRR and the verdict."""
    deadline = time.time() + limit
    for n in range(1, tries + 1):
        if time.time() > deadline:
            print(f"revived: no (gave up after {limit} s and {n - 1} key press(es))")
            return
        try:
            monitor(path, "sendkey shift")
            time.sleep(1)
            regs1, lapic1 = snapshot(path)
            time.sleep(1)
            regs2, lapic2 = snapshot(path)
        except OSError as e:
            print(f"revived: no (cannot ask QEMU's monitor: {e})")
            return
        irr = re.search(r"^IRR\s+(.*)$", lapic2, re.M)
        verdict = timer_pending(lapic1, lapic2)
        print(f"key press {n}: IRR {irr.group(1).strip() if irr else '?'}; {verdict}")
        if verdict == "timer-pending: no":  # both samples read, not pending
            print(f"revived: yes (the timer interrupt was taken after {n} key press(es))")
            return
    print(f"revived: no (the timer interrupt stayed pending through {tries} key presses)")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--revive":
        revive(sys.argv[2])
        return
    if len(sys.argv) != 2:
        print("usage: l1-dump.py [--revive] MONITOR_SOCKET")
        return
    try:
        first, lapic1 = snapshot(sys.argv[1])
        time.sleep(1)
        second, lapic2 = snapshot(sys.argv[1])
    except OSError as e:
        print(f"cannot ask QEMU's monitor: {e}")
        return
    a, b = cpus(first), cpus(second)
    for cpu, (rip, cpl, hlt, cr3, *_) in a.items():
        rip2 = b.get(cpu, ("?",))[0]
        kind = "kernel address" if rip.startswith("ffff") else "low address"
        moved = "same RIP 1 s later" if rip2 == rip else f"RIP {rip2} 1 s later"
        print(f"cpu {cpu}: rip {rip} ({kind}) CPL {cpl} HLT {hlt} CR3 {cr3}; {moved}")
    print(first.strip())
    print(lapic2.strip())
    # `info lapic` and the flags are those of the monitor's current CPU,
    # CPU 0 (the e2e L1 has one).
    print(timer_stuck(lapic1, lapic2, a.get("0"), b.get("0")))
    print(timer_pending(lapic1, lapic2))


def timer_pending(lapic1, lapic2):
    """ "timer-pending: yes" when the timer vector is pending and above the
    priority in both snapshots, whatever RFLAGS.IF said at those two
    instants (a busy CPU is often caught with interrupts off): not proof
    of the emulator's failure, enough for run.sh to try a revival, which
    is harmless if nothing was stuck."""
    p1, p2 = timer_state(lapic1), timer_state(lapic2)
    if p1 is None or p2 is None:
        return "timer-pending: ? (no local APIC state)"
    return f"timer-pending: {'yes' if p1[1] and p2[1] else 'no'}"


def timer_state(lapic):
    """(timer vector, pending in IRR and not in service, unmasked, above
    the processor priority), or None without local APIC state."""
    lvtt = re.search(r"^LVTT\s+0x([0-9a-f]+)", lapic, re.M)
    irr = re.search(r"^IRR\s+(.*)$", lapic, re.M)
    isr = re.search(r"^ISR\s+(.*)$", lapic, re.M)
    ppr = re.search(r"PPR 0x([0-9a-f]+)", lapic)
    if not (lvtt and irr and isr and ppr):
        return None
    word = int(lvtt.group(1), 16)
    vector = word & 0xFF

    def vectors(text):  # "236 48(level)" -> {236, 48}
        return {int(m) for m in re.findall(r"(\d+)(?:\(level\))?", text)}
    return (vector, not word & (1 << 16) and vector in vectors(irr.group(1))
            and vector not in vectors(isr.group(1))
            and vector >> 4 > int(ppr.group(1), 16) >> 4)


def timer_stuck(lapic1, lapic2, regs1, regs2):
    """The verdict line run.sh reads: "timer-stuck: yes (...)" when, in
    both snapshots a second apart (each read with the vCPUs stopped, so
    registers and APIC are from one instant), L1's LAPIC timer vector is pending in IRR,
    not in service, not masked, above the processor priority, and the CPU
    has interrupts enabled (RFLAGS.IF, no interrupt shadow): an x86 CPU
    takes such an interrupt before its next instruction, halted or not, so
    leaving it pending for a second is the emulator's failure (QEMU TCG
    with a nested guest), which no program in L1 can cause. Seen with
    Firecracker in kvmini's place (docs/testing.md). A CPU spinning with
    interrupts disabled is not this: that could be L1's own kernel."""
    def enabled(regs):
        if not regs or regs[4] == "?":
            return False
        return bool(int(regs[4], 16) & 0x200) and regs[5] == "0"

    p1, p2 = timer_state(lapic1), timer_state(lapic2)
    if p1 is None or p2 is None:
        return "timer-stuck: no (no local APIC state)"
    if p1[1] and p2[1] and enabled(regs1) and enabled(regs2):
        return (f"timer-stuck: yes (timer vector {p1[0]} pending and deliverable for 1 s with "
                "interrupts enabled, never taken)")
    return (f"timer-stuck: no (vector {p1[0]}: deliverable {p1[1]}, then {p2[1]}; "
            f"interrupts enabled {enabled(regs1)}, then {enabled(regs2)})")


try:
    main()
except Exception as e:  # best effort: say what failed, never raise
    print(f"l1-dump.py failed: {e!r}")
