# shellcheck shell=sh disable=SC1091
# Boot and memory benchmark, run inside the rig's L1 (or on the host with
# --host) by resources/bench/boot.sh. The default guest (vmlinux + busybox
# initramfs), 1 vCPU, BENCH_MEM MiB, under kvmini, QEMU's microvm and, when
# BENCH_VMMS names it, Firecracker:
#  0. one untimed "warmup" boot (see below);
#  1. "boot" runs: launch to exit after the guest ran `true` and rebooted,
#     BENCH_REPEATS times per VMM, alternating kvmini/QEMU, QEMU/kvmini, ...
#  1b. "exec" runs: `kvmini exec -- true` (process start to exit, the
#     command's status returned) against QEMU doing the same job (boot,
#     run `true`, power off), alternating the same way;
#  2. "rss" runs (one per VMM): the guest prints @@BENCH-READY and sleeps;
#     meanwhile we read the VMM process's VmRSS and the resident part of its
#     guest-RAM mapping from /proc/PID/smaps (@@BENCH-RSS ...).
# From $RIG_DATA: vm.sh and params (BENCH_REPEATS, BENCH_MEM, BENCH_VMMS).
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
echo "@@BENCH-INFO vmms $BENCH_VMMS"

rc=0
# One untimed boot first, of the last VMM in the list: the first VM in a
# freshly booted L1 reaches its exit ~1.2 s sooner than every later one
# (measured under kvmini: the guest's memmap set-up took 15 ms in L1's
# first VM, 1.03 s in the next, with huge pages in both; see
# docs/benchmarks.md), so without it round 1's first VMM gets a run no
# other VMM can get. Its time is printed as `warmup`, counted nowhere.
bench_run warmup "${BENCH_VMMS##* }" 0 bench_vm --vmm "${BENCH_VMMS##* }" --mem "$BENCH_MEM" \
    --cpus 1 --kparams quiet -- true || :
i=1
while [ $i -le "$BENCH_REPEATS" ]; do
    if [ $((i % 2)) = 1 ]; then order=$BENCH_VMMS; else order=$(echo "$BENCH_VMMS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }'); fi
    for vmm in $order; do
        bench_run boot "$vmm" "$i" bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 \
            --kparams quiet -- true || rc=1
    done
    for vmm in $order; do
        how=$vmm
        [ "$vmm" = kvmini ] && how=kvmini-exec
        bench_run exec "$vmm" "$i" bench_vm --vmm "$how" --mem "$BENCH_MEM" --cpus 1 \
            --kparams quiet -- true || rc=1
    done
    i=$((i + 1))
done

# rss_of PID MIB: "vmrss_kb=N guest_kb=M". Guest RAM is the VMM's one
# anonymous mapping of MIB MiB (QEMU keeps a guard page in a mapping of its
# own, so allow 4 MiB of slack); guest_kb is how much of it is resident,
# i.e. the guest RAM touched so far. guest_kb=0 means no such mapping was
# found (the parser then reports the figure as missing).
rss_of() {
    vmrss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status")
    guest=$(awk -v want=$(($2 * 1024)) '
        /^[0-9a-f]+-[0-9a-f]+ / { ram = 0; next }
        /^Size:/ { ram = ($2 >= want && $2 <= want + 4096); next }
        /^Rss:/ && ram { sum += $2 }
        END { print sum + 0 }' "/proc/$1/smaps")
    echo "vmrss_kb=$vmrss guest_kb=$guest"
}

rss_run() {
    vmm=$1 out=/tmp/bench-rss-$1.out
    case $vmm in kvmini) name=kvmini ;; qemu) name=qemu-system-x86_64 ;; firecracker) name=firecracker ;; esac
    bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 --kparams quiet \
        -- "echo @@BENCH-READY; sleep 10" >"$out" 2>&1 &
    job=$!
    n=0
    until grep -q '^@@BENCH-READY' "$out" 2>/dev/null; do
        n=$((n + 1))
        if [ $n -gt 600 ] || ! kill -0 $job 2>/dev/null; then
            cat "$out"
            echo "@@BENCH-ERROR rss $vmm: the guest never printed @@BENCH-READY"
            wait $job
            return 1
        fi
        sleep 0.5
    done
    sleep 3
    if [ "$vmm" = firecracker ]; then
        # Run through its loader (vm.sh), so its name is the loader's.
        pid=$(for p in /proc/[0-9]*; do
            tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q 'fc/firecracker --no-api' && echo "${p#/proc/}"
        done | head -n 1)
    else
        pid=$(pidof "$name" | awk '{ print $1 }')
    fi
    if [ -n "$pid" ]; then
        sample=$(rss_of "$pid" "$BENCH_MEM")
    else
        echo "@@BENCH-ERROR rss $vmm: no $name process to measure"
    fi
    wait $job
    st=$?
    cat "$out"
    [ -n "$pid" ] && echo "@@BENCH-RSS $vmm pid=$pid $sample"
    return $st
}
for vmm in $BENCH_VMMS; do
    bench_run rss "$vmm" 1 rss_run "$vmm" || rc=1
done
exit $rc
