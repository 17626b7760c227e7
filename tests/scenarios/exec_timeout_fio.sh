# kvmini-scenario-timeout: 300
# `exec --timeout` against a guest keeping its disk busy with fio at queue
# depth 256 (issue 16): the deadline is served on its own thread, disk I/O
# runs on the disk's, and stopping gives up a request between its data
# segments, so kvmini ends right after the limit. Two runs: `--timeout 5s`
# as the issue states it, and `--timeout 40s`, by which fio has surely been
# running for a while in the rig (the guest takes seconds to boot here).
# Prints, per run, exec's status, its wall time (exec-ms, from
# /proc/uptime), when fio started (fio-at-ms), and from kvmini's debug log
# when the VM had stopped (stopped-ms) and when it was released (ended-ms).
# A ticker in L1 (a shell waking every 0.2 s, clock in ms since the
# attempt's start) says whether L1 itself stood still with its clock
# running: one CI run overran `--timeout 5s` by 5.1 s while this script's
# `sleep 6.5` ended 3.5 s late (docs/testing.md). A late stop of an exec
# that ended with 124 is excused only when the ticker was silent for 3 s
# or more across the bound (limit + 1.5 s), until at most 1 s before
# kvmini stopped (l1-silent-N: the silence, or "none"); under fio's load
# the ticker's gaps reach ~2.2 s with kvmini on time, so such gaps excuse
# nothing, nor does a ticker that died. An excused attempt is said
# (@@KVMINI-L1-STALLED) and tried again, 3 times at most; e2e.rs judges the
# last attempt's lines and fails as not run if that one was excused too.
[ -n "$GUEST_BENCH_INITRD" ] || { echo "GUEST_BENCH_INITRD is not set (run.sh carries it)"; exit 1; }
img=/tmp/kvmini-fio.img
dd if=/dev/zero of="$img" bs=1M count=64 2>/dev/null
cs() { read -r t _ </proc/uptime; echo "${t%.*}${t#*.}"; }
fio="fio --thread --name=flood --filename=/dev/vda --direct=1 --ioengine=libaio"
fio="$fio --iodepth=256 --rw=randread --bs=256k --time_based --runtime=600"
# The ticker's silence (its readings in file $1, centiseconds since boot)
# of 3 s or more that began at or before $2 ms and ended after it, and at
# or after $3 ms, since $4 (cs), as "FROM-TO" in ms, or "none".
silent_across() {
    awk -v at="$2" -v until="$3" -v t0="$4" '
        { t = ($1 - t0) * 10 }
        NR > 1 && p <= at && t > at && t >= until && t - p >= 3000 { gap = p "-" t }
        { p = t }
        END { print gap ? gap : "none" }' "$1"
}
attempt() {
    limit=$1
    ( while :; do cs; sleep 0.2; done >/tmp/kvmini-fio.ticks ) &
    ticker=$!
    t0=$(cs)
    {
        "$KVMINI" --log-level debug exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_BENCH_INITRD" \
            --memory 512M --disk "path=$img" --timeout "${limit}s" -- sh -c "echo fio-starting; exec $fio" \
            2>/tmp/kvmini-fio.err &
        pid=$!
        # Still running 1.5 s past the limit: show where each thread is,
        # and L1's free memory, once a second, so a slow stop says why.
        (
            sleep $((limit + 1)).5
            while kill -0 "$pid" 2>/dev/null; do
                echo "late-at-ms-$limit=$((($(cs) - t0) * 10))" >&2
                grep -E '^(MemFree|MemAvailable|Cached|Shmem|AnonHugePages):' /proc/meminfo | tr -s ' ' | tr '\n' ' ' >&2
                echo >&2
                for t in /proc/"$pid"/task/*; do
                    echo "  $(cat "$t/comm") state=$(cut -d' ' -f3 "$t/stat") wchan=$(cat "$t/wchan" 2>/dev/null)" >&2
                    head -n 4 "$t/stack" 2>/dev/null | sed 's/^/      /' >&2
                done
                sleep 1
            done
        ) >/dev/null &
        watcher=$!
        wait "$pid"
        echo $? >/tmp/kvmini-fio.rc
        kill "$watcher" 2>/dev/null
    } | while IFS= read -r line; do
        case $line in fio-starting) echo "fio-at-ms-$limit=$((($(cs) - t0) * 10))" ;; esac
    done
    t1=$(cs)
    ticking=yes
    kill -0 "$ticker" 2>/dev/null || ticking=no
    kill "$ticker" 2>/dev/null
    wait "$ticker" 2>/dev/null
    # The end counts too: a stall after the ticker's last wake-up.
    cs >>/tmp/kvmini-fio.ticks
    echo "exec-rc-$limit=$(cat /tmp/kvmini-fio.rc)"
    echo "exec-ms-$limit=$(((t1 - t0) * 10))"
    # kvmini's clock (debug log): all its threads stopped, then the VM
    # released (memory, devices, the host kernel's teardown of the VM).
    stopped=$(sed -n 's/.*the VM stopped \([0-9]*\) ms.*/\1/p' /tmp/kvmini-fio.err | tail -n 1)
    echo "stopped-ms-$limit=$stopped"
    silent=none
    [ "$ticking" = yes ] || echo "the ticker died during the attempt: no stall can excuse it"
    if [ "$ticking" = yes ] && [ "$(cat /tmp/kvmini-fio.rc)" = 124 ] &&
        [ -n "$stopped" ] && [ "$stopped" -ge $((limit * 1000 + 1500)) ]; then
        silent=$(silent_across /tmp/kvmini-fio.ticks $((limit * 1000 + 1500)) $((stopped - 1000)) "$t0")
    fi
    echo "l1-silent-$limit=$silent"
    echo "ended-ms-$limit=$(sed -n 's/.*the VM ended \([0-9]*\) ms.*/\1/p' /tmp/kvmini-fio.err | tail -n 1)"
    # kvmini's messages (with its debug log: when the VM started, when the
    # limit stopped it).
    tail -n 12 /tmp/kvmini-fio.err
}
for limit in 5 40; do
    for try in 1 2 3; do
        # e2e.rs reads only the lines after the last attempt-N= line.
        echo "attempt-$limit=$try"
        attempt "$limit"
        [ "$silent" = none ] && break
        echo "@@KVMINI-L1-STALLED --timeout ${limit}s attempt $try: kvmini stopped the VM at" \
            "$stopped ms, but a 0.2 s ticker in L1 did not wake from $silent ms (shell's" \
            "clock): L1 stood still past the bound, the attempt is not judged"
    done
done
rm -f "$img" /tmp/kvmini-fio.err /tmp/kvmini-fio.rc /tmp/kvmini-fio.ticks
