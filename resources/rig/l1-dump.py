"""Where a frozen L1 is: asks QEMU's monitor (a unix socket) twice, a
second apart, for every vCPU's registers, and prints per vCPU whether it is
halted, at which privilege level, and whether its RIP moved; then the
first raw dump, the local APIC's state and a last line "timer-stuck: yes|no
(...)" (see timer_stuck). (Debian's System.map is a stub, so no function
names.)

    python3 l1-dump.py MONITOR_SOCKET

Best effort: a failure is printed, never raised.
"""
import re
import socket
import sys
import time


def monitor(path, command):
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
    out = b""
    s.sendall(command.encode() + b"\n")
    drain(10)
    s.close()
    text = out.decode(errors="replace").replace("\r", "")
    at = text.find("CPU#")
    return text[at:] if at >= 0 else text


def cpus(dump):
    """{cpu: (rip, cpl, halted, cr3)} from `info registers -a`."""
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
        )
    return out


def main():
    try:
        first = monitor(sys.argv[1], "info registers -a")
        time.sleep(1)
        second = monitor(sys.argv[1], "info registers -a")
    except OSError as e:
        print(f"cannot ask QEMU's monitor: {e}")
        return
    a, b = cpus(first), cpus(second)
    for cpu, (rip, cpl, hlt, cr3) in a.items():
        rip2 = b.get(cpu, ("?",))[0]
        kind = "kernel address" if rip.startswith("ffff") else "low address"
        moved = "same RIP 1 s later" if rip2 == rip else f"RIP {rip2} 1 s later"
        print(f"cpu {cpu}: rip {rip} ({kind}) CPL {cpl} HLT {hlt} CR3 {cr3}; {moved}")
    print(first.strip())
    # The local APIC: whether L1's timer interrupt is pending but never
    # taken while the CPU does not move (see timer_stuck).
    try:
        lapic = monitor(sys.argv[1], "info lapic")
    except OSError as e:
        print(f"cannot ask QEMU's monitor for the local APIC: {e}")
        return
    print(lapic.strip())
    stuck = all(rip == b.get(cpu, ("?",))[0] for cpu, (rip, *_) in a.items())
    print(timer_stuck(lapic, bool(a) and stuck))


def timer_stuck(lapic, rip_stuck):
    """The verdict line run.sh reads: "timer-stuck: yes (...)" when L1's
    LAPIC timer vector sits in IRR, is not in service, is not masked, and
    the CPU's RIP did not move in a second. No program in L1 can keep an
    interrupt that L1 accepts from being taken: the emulator did not deliver
    it (QEMU TCG with a nested guest running). Seen with Firecracker in
    kvmini's place (docs/testing.md)."""
    lvtt = re.search(r"^LVTT\s+0x([0-9a-f]+)", lapic, re.M)
    irr = re.search(r"^IRR\s+(.*)$", lapic, re.M)
    isr = re.search(r"^ISR\s+(.*)$", lapic, re.M)
    if not (lvtt and irr and isr):
        return "timer-stuck: no (no local APIC state)"
    word = int(lvtt.group(1), 16)
    vector, masked = word & 0xFF, bool(word & (1 << 16))
    pending = str(vector) in irr.group(1).split()
    in_service = str(vector) in isr.group(1).split()
    if pending and not in_service and not masked and rip_stuck:
        return f"timer-stuck: yes (timer vector {vector} pending in IRR, never taken; RIP did not move)"
    return (f"timer-stuck: no (vector {vector}: pending {pending}, in service {in_service}, "
            f"masked {masked}; RIP stuck {rip_stuck})")


main()
