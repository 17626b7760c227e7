"""Where a frozen L1 is: asks QEMU's monitor (a unix socket) twice, a
second apart, for every vCPU's registers, and prints per vCPU whether it is
halted, at which privilege level, and whether its RIP moved; then the
first raw dump. (Debian's System.map is a stub, so no function names.)

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


main()
