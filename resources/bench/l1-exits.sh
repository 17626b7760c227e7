#!/usr/bin/env bash
# What one boot of the bench guest costs L1's KVM, per VMM: boots the bench
# guest (85 MB initramfs, 1 vCPU, 512 MiB) once under kvmini and once under
# Firecracker (when there) in one rig L1, and prints for each the guest's
# uptime when its command ran and L1's KVM counters for that VM (exits,
# nested page faults fixed, 4 KiB / 2 MiB mappings, halts, interrupt
# exits...), read from L1's debugfs while the guest sleeps. Every nested
# exit is a round trip through L1 under emulation, so these counts are
# what a boot costs there, and they explain boot-time differences that a
# stopwatch alone does not.
#
#   resources/bench/l1-exits.sh [--kvmini PATH] [--firecracker PATH | --no-firecracker]
#                               [--fio randread|randwrite|read|write] [--qd N]
#                               [--bs SIZE] [--smp N]
#
# --fio RW   instead of the boot alone: the guest gets a 64 MiB raw image
#            as virtio-blk and runs one fio job on it (RW = randread,
#            randwrite, read or write; O_DIRECT, libaio, 5 s); the counters are then
#            those of the job alone (read when it starts and when it ends)
#            and the line also has the job's IOPS, exits per I/O and the
#            virtio interrupts the guest took per I/O (irqs_per_io=, from its
#            /proc/interrupts: how well completions are coalesced).
# --qd N     the job's queue depth (default 16)
# --bs SIZE  the job's block size (default 4k)
# --smp N    L1's vCPUs (default 1)
#
# stdout: one line per VMM, "@@L1-EXITS <vmm> uptime=<s> exits=N pf_fixed=N ...".
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/bench/lib.sh"

kvmini="" fio="" qd=16 bs=4k smp=1
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --firecracker) BENCH_FC=$2 BENCH_FC_ASKED=1; shift 2 ;;
    --no-firecracker) BENCH_FC=""; shift ;;
    --fio) fio=$2; shift 2 ;;
    --qd) qd=$2; shift 2 ;;
    --bs) bs=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "l1-exits.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case $fio in "" | randread | randwrite | read | write) ;; *) echo "l1-exits.sh: --fio takes randread, randwrite, read or write" >&2; exit 2 ;; esac
[[ $bs =~ ^[1-9][0-9]*[kKmM]?$ ]] || { echo "l1-exits.sh: --bs '$bs' is not a size such as 4k or 1M" >&2; exit 2; }
for n in "$qd" "$smp"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "l1-exits.sh: '$n' is not a positive whole number" >&2; exit 2; }
done
bench_setup "$kvmini"
GUEST_BENCH_INITRD=$("$BENCH_DIR/build-initramfs.sh")
export GUEST_BENCH_INITRD
vmms=kvmini
if [[ -n $BENCH_FC && -x $BENCH_FC ]]; then
    bench_pack_firecracker "$BENCH_FC" "$BENCH_WORK/data/fc"
    vmms="kvmini firecracker"
fi
{
    echo "L1_EXITS_VMMS=\"$vmms\""
    echo "L1_EXITS_FIO=$fio L1_EXITS_QD=$qd L1_EXITS_BS=$bs"
} >"$BENCH_WORK/data/params"
sdir=$BENCH_WORK/scenario
mkdir -p "$sdir"
cp "$BENCH_DIR/scenarios/l1-exits.sh" "$sdir/"
"$RESOURCES_DIR/rig/run.sh" --kvmini "$KVMINI_BENCH_BIN" --scenarios "$sdir" --timeout 300 \
    --smp "$smp" --data "$BENCH_WORK/data" | tee "$BENCH_WORK/console" |
    grep -a '@@L1-EXITS' | tr -d '\r'
grep -aq '@@L1-EXITS kvmini' "$BENCH_WORK/console" || die "no figures for kvmini (console: rerun with the rig's output)"
