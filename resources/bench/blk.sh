#!/usr/bin/env bash
# Block benchmark (issues 4, 18): fio inside the guest, kvmini against
# QEMU's microvm and Firecracker (when there, see --firecracker; virtio-blk
# over virtio-mmio on all), same kernel, same bench
# initramfs, same raw image, same fio jobs, in one rig run, alternating.
#
#   resources/bench/blk.sh [--kvmini PATH] [--rounds N] [--runtime SECS]
#                          [--ramp SECS] [--size MIB] [--mem MIB] [--log FILE]
#                          [--host] [--firecracker PATH | --no-firecracker] [--no-qemu]
#   resources/bench/blk.sh --parse CONSOLE_LOG    # table from a saved console
#
# --kvmini   static kvmini to test (default: build target/static release)
# --rounds   boots per VMM (default 2; order alternates each round)
# --runtime  seconds per fio job (default 10), --ramp warm-up per job (2)
# --size     image size in MiB (default 256), --mem guest RAM (512)
# --log      where to keep the console (default: a file in $TMPDIR, named
#            on stderr)
# --firecracker PATH  also run Firecracker (default: ../shared/peers/
#            firecracker/firecracker beside the checkout, when it is there;
#            --no-firecracker: not); the table then has its column and the
#            kvmini/FC ratio
# --no-qemu  leave QEMU out (kvmini against Firecracker only): QEMU's
#            rounds are where the rig's L1 most often freezes
# --host     run on this host's /dev/kvm (needs vmx/svm) instead of the rig
#
# stdout: the table (metric, kvmini, QEMU, ratio kvmini/QEMU). Progress and
# anything that went wrong on stderr; a figure that could not be measured
# is shown as "missing". Exit status: 0 when every figure is there, 1 when
# some are missing, 2 usage.
# Rig figures are emulated (TCG under L1): only the ratios mean something.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/bench/lib.sh"

kvmini="" rounds=2 runtime=10 ramp=2 size=256 mem=512 log="" host=() parse=""
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --firecracker) BENCH_FC=$2 BENCH_FC_ASKED=1; shift 2 ;;
    --no-firecracker) BENCH_FC=""; shift ;;
    --no-qemu) BENCH_QEMU=0; shift ;;
    --host) host=(--host); shift ;;
    --parse) parse=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "blk.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ -n $parse ]] || ((BENCH_QEMU)) || [[ -x $BENCH_FC ]] ||
    { echo "blk.sh: --no-qemu needs Firecracker, and there is none at '$BENCH_FC' (--firecracker PATH)" >&2; exit 2; }
for n in "$rounds" "$runtime" "$ramp" "$size" "$mem"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "blk.sh: '$n' is not a whole number" >&2; exit 2; }
done

# fio terse v3 (one line per job: "3;fio-3.33;<job>;<group>;<error>;..."):
# read bandwidth KiB/s is field 7, read IOPS 8; write bandwidth 48, write
# IOPS 49 (checked against fio's JSON output). The line is searched
# anywhere in a console line (the serial console may have put something
# before it).
FIO_AWK='
inrun && match($0, /3;fio-[0-9][^;]*;/) {
    n = split(substr($0, RSTART), f, ";")
    if (n < 49) { printf "bench: %s round %s: truncated fio line for job %s\n", vmm, round, f[3] > "/dev/stderr"; next }
    if (f[5] != 0) { printf "bench: %s round %s: fio job %s failed (error %s)\n", vmm, round, f[3], f[5] > "/dev/stderr"; next }
    if (f[3] == "seq-read") emit("seq-read", f[7] / 1024)
    else if (f[3] == "seq-write") emit("seq-write", f[48] / 1024)
    else if (f[3] == "rand-read") emit("rand-read", f[8])
    else if (f[3] == "rand-write") emit("rand-write", f[49])
    else if (f[3] == "rand-read-qd1") emit("rand-read-qd1", f[8])
    else if (f[3] == "rand-write-qd1") emit("rand-write-qd1", f[49])
}
'
ROWS=("seq-read|seq read 1M QD4 MiB/s|higher" "seq-write|seq write 1M QD4 MiB/s|higher"
    "rand-read|rand read 4k QD16 IOPS|higher" "rand-write|rand write 4k QD16 IOPS|higher"
    "rand-read-qd1|rand read 4k QD1 IOPS|higher" "rand-write-qd1|rand write 4k QD1 IOPS|higher"
    "blk-secs|launch to exit s|lower")

report() {
    bench_report "$1" "$FIO_AWK" "Block benchmark: fio in the guest, virtio-blk (kvmini vs QEMU microvm)" "seq-read seq-write rand-read rand-write rand-read-qd1 rand-write-qd1" "${ROWS[@]}"
}

bench_parse_only "$parse"

bench_setup "$kvmini"
bench_peers
nvmm=$(wc -w <<<"$BENCH_VMMS")
bench_initrd=$("$BENCH_DIR/build-initramfs.sh")
data=$BENCH_WORK/data
cp "$bench_initrd" "$data/bench-initramfs.cpio"
cat >"$data/params" <<EOF
BENCH_ROUNDS=$rounds
BENCH_RUNTIME=$runtime
BENCH_RAMP=$ramp
BENCH_SIZE_MB=$size
BENCH_MEM=$mem
BENCH_VMMS="$BENCH_VMMS"
EOF
# Budget per boot: ~4 min to boot and exit (QEMU starts slowly under
# emulation) plus the six fio jobs.
timeout=$((rounds * nvmm * (240 + 6 * (runtime + ramp))))
bench_go blk "$rounds round(s) of $BENCH_VMMS" "$timeout" "${host[@]}"
