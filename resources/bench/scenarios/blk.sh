# shellcheck shell=sh disable=SC1091
# Block benchmark, run inside the rig's L1 (or on the host with --host) by
# resources/bench/blk.sh: the same guest (bench initramfs with fio) boots
# under kvmini and under QEMU's microvm, each with the same raw image as
# virtio-blk /dev/vda, and runs the same fio jobs; rounds alternate the
# order (kvmini first, then QEMU first, ...) so both VMMs see the same
# conditions on average.
# From $RIG_DATA: vm.sh, bench-initramfs.cpio and params (BENCH_ROUNDS,
# BENCH_RUNTIME, BENCH_RAMP, BENCH_SIZE_MB, BENCH_MEM, BENCH_VMMS).
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
echo "@@BENCH-INFO vmms $BENCH_VMMS"

img=${TMPDIR:-/tmp}/kvmini-bench-blk.img
# A fully written image (not sparse), so reads copy real pages on every
# VMM; it lives in L1's tmpfs, so the figures are the VMMs' I/O paths, not
# a disk's.
echo "@@BENCH-INFO blk preparing ${BENCH_SIZE_MB} MiB image $img"
dd if=/dev/zero of="$img" bs=1M count="$BENCH_SIZE_MB" 2>/dev/null ||
    { echo "@@BENCH-ERROR blk cannot write $img (space in $(dirname "$img")?)"; exit 1; }

# One fio invocation, six jobs one after the other (stonewall), terse
# output (one line per job, "3;fio-3.33;<job>;..."). Options before the
# first --name are global. --thread: fio's shared state needs only SysV shm.
# Linux hands init at most 32 words after "--" (more panic the guest, and
# kvmini refuses them): 29 here, so bs=4k is global and the QD1 jobs use
# fio's default iodepth of 1.
fio="bench-fio --thread --output-format=terse --filename=/dev/vda --direct=1 --ioengine=libaio"
fio="$fio --time_based --runtime=$BENCH_RUNTIME --ramp_time=$BENCH_RAMP --stonewall --bs=4k"
fio="$fio --name=seq-read --rw=read --bs=1M --iodepth=4"
fio="$fio --name=seq-write --rw=write --bs=1M --iodepth=4"
fio="$fio --name=rand-read --rw=randread --iodepth=16"
fio="$fio --name=rand-write --rw=randwrite --iodepth=16"
fio="$fio --name=rand-read-qd1 --rw=randread"
fio="$fio --name=rand-write-qd1 --rw=randwrite"
[ "$(echo "$fio" | wc -w)" -le 32 ] ||
    { echo "@@BENCH-ERROR blk the fio command has more than 32 words"; exit 1; }

round=1 rc=0
while [ $round -le "$BENCH_ROUNDS" ]; do
    # Alternate who goes first: kvmini qemu, then qemu kvmini, ...
    if [ $((round % 2)) = 1 ]; then order=$BENCH_VMMS; else order=$(echo "$BENCH_VMMS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }'); fi
    for vmm in $order; do
        bench_run blk "$vmm" "$round" bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 \
            --initrd "$RIG_DATA/bench-initramfs.cpio" --kparams quiet --disk "$img" \
            -- "$fio" || rc=1
    done
    round=$((round + 1))
done
rm -f "$img"
exit $rc
