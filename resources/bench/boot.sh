#!/usr/bin/env bash
# Boot and memory benchmark: kvmini against QEMU's microvm and Firecracker
# (when there, see --firecracker) in one rig run,
# the default guest (vmlinux + busybox initramfs), 1 vCPU, 128 MiB:
#  - launch to exit: the VMM starts, the guest runs `true`, reboots, the VMM
#    exits; REPEATS runs per VMM, alternating; min/median/max and ratio;
#  - `kvmini exec -- true`, process start to exit, against each peer doing
#    the same job (boot, run `true`, reboot); alternating, same statistics;
#  - VMM RSS overhead: VmRSS of the VMM process minus the resident part of
#    its guest-RAM mapping (the guest RAM touched), sampled from
#    /proc/PID/status and /proc/PID/smaps while the booted guest sleeps.
#
#   resources/bench/boot.sh [--kvmini PATH] [--repeats N] [--mem MIB]
#                           [--kvmini-flags FLAGS] [--log FILE] [--host]
#                           [--firecracker PATH | --no-firecracker] [--smp N]
#   resources/bench/boot.sh --parse CONSOLE_LOG
#
# --smp N    vCPUs of the rig's L1 (default 2, run.sh's; 1 as the e2e suite:
#            an L1 with two froze in round 4 of two runs, see
#            docs/benchmarks.md)
# --firecracker PATH  also run Firecracker (default: ../shared/peers/
#            firecracker/firecracker beside the checkout, when it is there;
#            --no-firecracker: not); the table then has its column and the
#            kvmini/FC ratio
# --kvmini-flags: extra flags for every kvmini run and exec (e.g.
# "--seccomp off": boot.sh with and without it measures the filters).
# stdout: the table; progress on stderr; a figure that could not be
# measured is "missing". Exit status 0 when every figure is there, 1 when
# some are missing, 2 usage.
# Rig figures are emulated (TCG under L1): only the ratios mean something.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/bench/lib.sh"

kvmini="" repeats=5 mem=128 log="" host=() parse="" kflags="" rig_args=()
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --kvmini-flags) kflags=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --firecracker) BENCH_FC=$2 BENCH_FC_ASKED=1; shift 2 ;;
    --no-firecracker) BENCH_FC=""; shift ;;
    --host) host=(--host); shift ;;
    --smp) rig_args+=(--smp "$2"); shift 2 ;;
    --parse) parse=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "boot.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$repeats" "$mem" ${rig_args[1]:+"${rig_args[1]}"}; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "boot.sh: '$n' is not a whole number" >&2; exit 2; }
done

RSS_AWK='
inrun && /@@BENCH-RSS / {
    vmrss = guest = ""
    for (i = 1; i <= NF; i++) {
        if ($i ~ /^vmrss_kb=/) { vmrss = substr($i, 10) }
        if ($i ~ /^guest_kb=/) { guest = substr($i, 10) }
    }
    if (vmrss == "" || guest == "" || guest == 0) {
        printf "bench: rss %s: no guest-RAM mapping found (VmRSS %s kB), overhead unknown\n", vmm, vmrss > "/dev/stderr"
        next
    }
    emit("rss-vmrss", vmrss / 1024); emit("rss-guest", guest / 1024)
    emit("rss-overhead", (vmrss - guest) / 1024)
}
'
ROWS=("boot-secs|launch to exit s|lower" "exec-secs|exec -- true s|lower" "rss-overhead|VMM RSS overhead MiB|lower"
    "rss-vmrss|VmRSS MiB|lower" "rss-guest|guest RAM touched MiB|-")

report() {
    bench_report "$1" "$RSS_AWK" "Boot and memory: 1 vCPU, ${mem} MiB, default guest (kvmini${kflags:+ $kflags} vs QEMU microvm)" "boot-secs exec-secs rss-overhead" "${ROWS[@]}"
}

bench_parse_only "$parse"

bench_setup "$kvmini"
bench_peers
nvmm=$(wc -w <<<"$BENCH_VMMS")
cat >"$BENCH_WORK/data/params" <<EOF2
BENCH_REPEATS=$repeats
BENCH_MEM=$mem
BENCH_VMMS="$BENCH_VMMS"
BENCH_KVMINI_FLAGS="$kflags"
EOF2
timeout=$(((repeats * 2 + 1) * nvmm * 240))
bench_go boot "$repeats boot(s) and exec(s) per VMM and one RSS run each" "$timeout" "${host[@]}" "${rig_args[@]}"
