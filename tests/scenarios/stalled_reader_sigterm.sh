# `kvmini exec ... | sleep 600`: a reader that never reads (issue 16). The
# command prints without end on its stdout (a virtio console); the pipe
# fills, then kvmini's console buffer, past which the console stops taking
# the guest's output (backpressure). SIGTERM must still stop kvmini within
# a second (before issue 16 the VMM blocked in its write to the pipe and
# only SIGKILL ended it). Prints stop-ms (SIGTERM to exit, from
# /proc/uptime) and kvmini's status; tests/e2e.rs checks both.
# Not `kvmini run | sleep 600`, the serial console: a guest printing over
# the 16550 costs a nested VM exit per byte, and in the rig every such run
# (4 of 4: a line a millisecond twice, a line every 4 ms twice) froze L1
# right after the guest booted, L1's CPU halted with interrupts on and no
# timer to wake it (run.sh's monitor dump). The serial path under a stalled
# reader is covered on the host by crates/vmm/src/vmm/flood_tests.rs.
fifo=/tmp/kvmini-stalled.fifo
err=/tmp/kvmini-stalled.err
rm -f "$fifo" && mkfifo "$fifo"
sleep 600 <"$fifo" &
reader=$!
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M -- \
    sh -c 'while true; do echo kvmini-flood-0123456789abcdef-0123456789abcdef; done' \
    >"$fifo" 2>"$err" &
pid=$!
cs() { read -r t _ </proc/uptime; echo "${t%.*}${t#*.}"; }
# The guest boots and floods: give it time to fill the pipe (64 KiB) and
# kvmini's console buffer (256 KiB).
sleep 25
if ! kill -0 "$pid" 2>/dev/null; then
    cat "$err"
    echo "kvmini ended before the signal"
    exit 1
fi
t0=$(cs)
kill -TERM "$pid"
n=0
while kill -0 "$pid" 2>/dev/null && [ $n -lt 300 ]; do
    sleep 0.05
    n=$((n + 1))
done
if kill -0 "$pid" 2>/dev/null; then
    echo "stop-ms=never (still running 15 s after SIGTERM; SIGKILL)"
    kill -KILL "$pid"
fi
wait "$pid"
echo "kvmini-rc=$?"
t1=$(cs)
[ -n "${t1%%never*}" ] && echo "stop-ms=$(((t1 - t0) * 10))"
kill "$reader" 2>/dev/null
cat "$err"
rm -f "$fifo" "$err"
