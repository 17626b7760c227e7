# `kvmini run ... | sleep 600`: a reader that never reads (issue 16). The
# guest prints without end; the pipe fills, then kvmini's serial buffer,
# past which its console is dropped. SIGTERM must still stop kvmini within
# a second (before issue 16 the vCPU blocked in its write to the pipe and
# only SIGKILL ended kvmini). Prints stop-ms (SIGTERM to exit, from
# /proc/uptime) and kvmini's status; tests/e2e.rs checks both.
# The guest prints a line a millisecond (~60 KB/s, 1.5 MB in 25 s: well
# past the pipe and the buffer): flat out, every byte a nested VM exit kept
# the rig's single L1 CPU so busy that L1's heartbeat stopped and run.sh
# gave L1 up (seen twice).
fifo=/tmp/kvmini-stalled.fifo
err=/tmp/kvmini-stalled.err
rm -f "$fifo" && mkfifo "$fifo"
sleep 600 <"$fifo" &
reader=$!
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --cmdline "-- while true; do echo kvmini-flood-0123456789abcdef-0123456789abcdef; usleep 1000; done" \
    >"$fifo" 2>"$err" &
pid=$!
cs() { read -r t _ </proc/uptime; echo "${t%.*}${t#*.}"; }
# The guest boots and floods: give it time to fill the pipe (64 KiB) and
# kvmini's buffer (256 KiB).
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
