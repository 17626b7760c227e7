# shellcheck shell=sh disable=SC1091
# Share benchmark, run inside the rig's L1 by resources/bench/share.sh: a
# tree of BENCH_FILES files, BENCH_SIZE_MB MiB in all, in L1's tmpfs, made
# visible to the guest and read whole (`find | xargs cat`):
#  - share: kvmini run --fs dir= (its own virtiofsd) against QEMU's microvm
#    with vhost-user-fs and the same virtiofsd binary, same kernel and init
#    (which mounts the tag at /mnt/t);
#  - exec-fs, exec-img: kvmini exec --share, live (virtio-fs) and as a
#    disk image (packed with mke2fs -d on every run: part of its time).
# The guest prints "@@BENCH-SHARE read_secs=S bytes=N" (its own clock);
# launch to exit comes from bench_run. Rounds alternate the order.
# From $RIG_DATA: vm.sh and params (BENCH_ROUNDS, BENCH_FILES,
# BENCH_SIZE_MB, BENCH_MEM).
# virtiofsd's namespace sandbox pivots into the share, which the kernel
# refuses while / is L1's initramfs: the scenario runs in a mount namespace
# whose / is a bind mount of the old one.
if [ -z "${BENCH_IN_MOUNT_NS:-}" ]; then
    export BENCH_IN_MOUNT_NS=1
    exec unshare -m sh -c 'mkdir -p /tmp/kvmini-root && mount -o rbind / /tmp/kvmini-root &&
        cd /tmp/kvmini-root && mount -o move . / && exec chroot . sh "$0"' "$0"
fi
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
echo "@@BENCH-INFO vmms kvmini qemu"
[ -x "${VIRTIOFSD:-}" ] || { echo "@@BENCH-ERROR share: no virtiofsd in L1"; exit 1; }
export KVMINI_VIRTIOFSD=$VIRTIOFSD

tree=${TMPDIR:-/tmp}/kvmini-bench-tree
rm -rf "$tree"
mkdir -p "$tree"
echo "@@BENCH-INFO share making $BENCH_FILES files, $BENCH_SIZE_MB MiB, in $tree"
# 100 directories; each file the same share of the total, the same text
# block (contents do not matter to a copy, sizes and counts do). One awk
# process writes them all: a fork per file costs minutes under emulation.
per=$((BENCH_SIZE_MB * 1024 / BENCH_FILES))
[ "$per" -ge 1 ] || { echo "@@BENCH-ERROR share: under 1 KiB per file"; exit 1; }
awk -v dir="$tree" -v files="$BENCH_FILES" -v kib="$per" 'BEGIN {
    srand(1); line = ""
    for (i = 0; i < 63; i++) line = line sprintf("%c", 97 + int(rand() * 26))
    line = line "\n"; block = ""
    for (i = 0; i < kib * 16; i++) block = block line
    for (d = 0; d < 100; d++) system("mkdir -p " dir "/d" d)
    for (i = 0; i < files; i++) {
        f = dir "/d" (i % 100) "/f" i
        printf "%s", block > f
        close(f)
    }
}' || { echo "@@BENCH-ERROR share: cannot make the tree in $tree"; exit 1; }
cat >"$tree/read.sh" <<'GUEST'
t0=$(cut -d' ' -f1 /proc/uptime)
n=$(find /mnt/t -type f ! -name read.sh | xargs cat | wc -c)
t1=$(cut -d' ' -f1 /proc/uptime)
echo "@@BENCH-SHARE read_secs=$(echo "$t0 $t1" | awk '{ printf "%.2f", $2 - $1 }') bytes=$n"
GUEST
echo "@@BENCH-INFO share tree ready: $(du -sk "$tree" | cut -f1) KiB"
echo "@@BENCH-INFO share bytes=$((BENCH_FILES * per * 1024))"

# kvmini exec --share, --share-via $1. exec exits with the command's
# status: 0 is the guest's "exit status 0", which the parser wants to see.
exec_read() {
    bench_vm --vmm kvmini-exec --mem "$BENCH_MEM" --cpus 1 --fs "$tree" --share-via "$1" \
        -- sh /mnt/t/read.sh && echo "kvmini-guest: exit status 0"
}

round=1 rc=0
while [ $round -le "$BENCH_ROUNDS" ]; do
    if [ $((round % 2)) = 1 ]; then order="kvmini qemu"; else order="qemu kvmini"; fi
    for vmm in $order; do
        bench_run share "$vmm" "$round" bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 \
            --kparams quiet --fs "$tree" -- sh /mnt/t/read.sh || rc=1
    done
    bench_run exec-fs kvmini "$round" exec_read auto || rc=1
    bench_run exec-img kvmini "$round" exec_read image || rc=1
    round=$((round + 1))
done
rm -rf "$tree"
exit $rc
