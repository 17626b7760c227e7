#!/bin/sh
# scenario-runner.sh TIMEOUT SCENARIO.sh...
# Runs each scenario script with `sh`, each under its own timeout, and frames
# its output with machine-parseable markers (parsed by tests/e2e.rs):
#   @@KVMINI-SCENARIO-BEGIN <name>
#   ...scenario output (stdout+stderr)...
#   [@@KVMINI-SCENARIO-TIMEOUT <name> after <n>s]
#   @@KVMINI-SCENARIO-END <name> rc=<n> secs=<n>
# POSIX sh: runs under busybox sh inside the rig's L1 and under the host's sh
# when hardware KVM is available. Scenarios get KVMINI, GUEST_VMLINUX,
# GUEST_BZIMAGE, GUEST_INITRD, GUEST_EXT4 (ext4 image with the same busybox
# tree as the initramfs) from the environment.
# A scenario that needs longer than TIMEOUT says so in a line
#   # kvmini-scenario-timeout: SECONDS
# (only ever raises the timeout; run.sh budgets the rig for it).
default_timeout=$1
shift

# stuck_dump: what a timed-out scenario's VMMs were doing, before they are
# killed: each kvmini thread's state, CPU ticks, wait channel and the top of
# its kernel stack, and L1's KVM counters of each VM read twice, 2 s apart
# (exits that do not move: a guest halted and waiting for an event that
# never comes; exits that do: a guest or VMM still working). One line each,
# so the e2e report's last lines show it.
# Only the scenario's own kvmini processes (session SID) and their VMs.
stuck_dump() {
    [ -d /sys/kernel/debug/kvm ] || mount -t debugfs none /sys/kernel/debug 2>/dev/null
    kpids=""
    for p in /proc/[0-9]*; do
        [ "$(cat "$p/comm" 2>/dev/null)" = kvmini ] || continue
        [ "$(sed 's/^.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f4)" = "$1" ] || continue
        kpids="$kpids ${p#/proc/}"
        for t in "$p"/task/*; do
            st=$(sed 's/^.*) //' "$t/stat" 2>/dev/null | cut -d' ' -f1,12,13)
            stack=$(head -n 3 "$t/stack" 2>/dev/null | sed 's/^\[<[^>]*>\] //; s/+.*//' | tr '\n' ' ')
            echo "@@KVMINI-STUCK kvmini ${p#/proc/} $(cat "$t/comm" 2>/dev/null): state/utime/stime=$st wchan=$(cat "$t/wchan" 2>/dev/null) stack: $stack"
        done
    done
    for round in 1 2; do
        for d in $(for k in $kpids; do echo /sys/kernel/debug/kvm/"$k"-*; done); do
            [ -d "$d" ] || continue
            line=""
            for c in exits halt_exits mmio_exits io_exits irq_injections; do
                line="$line $c=$(cat "$d/$c" 2>/dev/null)"
            done
            echo "@@KVMINI-STUCK kvm ${d##*/} reading $round:$line"
        done
        [ $round = 2 ] || sleep 2
    done
}

for s in "$@"; do
    name=$(basename "$s" .sh)
    timeout=$default_timeout
    own=$(sed -n 's/^# kvmini-scenario-timeout: *\([0-9][0-9]*\).*/\1/p' "$s" | head -n 1)
    [ -n "$own" ] && [ "$own" -gt "$timeout" ] && timeout=$own
    echo "@@KVMINI-SCENARIO-BEGIN $name"
    start=$(date +%s)
    # Own session/process group, so a timeout kills the scenario AND the
    # kvmini it started (`timeout` would only kill the direct child).
    setsid sh "$s" </dev/null 2>&1 &
    pid=$!
    (
        sleep "$timeout"
        echo "@@KVMINI-SCENARIO-TIMEOUT $name after ${timeout}s"
        # The dump must not delay the kill for long, whatever it meets.
        ( sleep 20; kill -s KILL -"$pid" ) >/dev/null 2>&1 &
        guard=$!
        stuck_dump "$pid"
        kill -s KILL -"$pid" 2>/dev/null
        kill "$guard" 2>/dev/null
        # Still here 30 s after SIGKILL: a process is stuck in the kernel
        # (seen when L1's KVM wedges); only a fresh L1 helps.
        sleep 30
        echo "@@KVMINI-RIG-BROKEN $name did not die 30s after SIGKILL"
    ) &
    watchdog=$!
    wait "$pid"
    rc=$?
    kill "$watchdog" 2>/dev/null
    echo "@@KVMINI-SCENARIO-END $name rc=$rc secs=$(($(date +%s) - start))"
    # What a scenario left in L1's page cache (a Debian guest's writes to
    # its disk) must not slow the next: exec_timeout_fio overran its 5 s
    # limit by 11-15 s twice right after debian_panic, and took 5.25 s run
    # first. Written back and dropped between scenarios, outside both.
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
done
