#!/usr/bin/env bash
# Network benchmark (issues 5, 18): iperf3 and ping inside the guest, kvmini
# against QEMU's microvm and Firecracker (when there, see --firecracker;
# virtio-net over virtio-mmio on a TAP on all, userspace datapath on all:
# QEMU without vhost), same kernel, same bench
# initramfs, same iperf3 at both ends, in one rig run, alternating.
#
#   resources/bench/net.sh [--kvmini PATH] [--rounds N] [--secs SECS]
#                          [--mem MIB] [--log FILE] [--host]
#                          [--firecracker PATH | --no-firecracker] [--user]
#   resources/bench/net.sh --parse CONSOLE_LOG    # table from a saved console
#
# --rounds  boots per VMM (default 2; order alternates each round)
# --secs    seconds per iperf3 direction (default 8)
# --mem     guest RAM in MiB (default 512; the bench initramfs is 85 MB)
# --log     where to keep the console; --host: this host's /dev/kvm
#
# --firecracker PATH  also run Firecracker (default: ../shared/peers/
#            firecracker/firecracker beside the checkout, when it is there;
#            --no-firecracker: not); the table then has its column and the
#            kvmini/FC ratio
# --user    also `--net user` (passt) rounds for kvmini and QEMU (each on its
#            own passt; not Firecracker, which has none): iperf3 both ways
#            against a server on L1's loopback through the guest's gateway
# stdout: the table (metric, kvmini, QEMU, ratio kvmini/QEMU); progress and
# problems on stderr; a figure that could not be measured is "missing".
# Exit status: 0 when every figure is there, 1 when some are missing, 2
# usage. Rig figures are emulated (TCG under L1): only ratios mean something.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/bench/lib.sh"

kvmini="" rounds=2 secs=8 mem=512 log="" host=() parse="" user=0
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --firecracker) BENCH_FC=$2 BENCH_FC_ASKED=1; shift 2 ;;
    --no-firecracker) BENCH_FC=""; shift ;;
    --host) host=(--host); shift ;;
    --user) user=1; shift ;;
    --parse) parse=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "net.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$rounds" "$secs" "$mem"; do
    [[ $n =~ ^[0-9]+$ ]] || { echo "net.sh: '$n' is not a whole number" >&2; exit 2; }
done

# iperf3 client output (-f m): the "receiver" summary line holds the rate
# ("... 104 Mbits/sec ... receiver"); the -R run announces itself with
# "Reverse mode", so its receiver line is host->guest. busybox ping ends
# with "round-trip min/avg/max = a/b/c ms".
NET_AWK='
inrun && /Reverse mode/ { rev[bench, vmm, round] = 1 }
inrun && /receiver/ && /Mbits\/sec/ {
    for (i = 2; i <= NF; i++) if ($i == "Mbits/sec") {
        emit((bench == "unet" ? "u" : "") (rev[bench, vmm, round] ? "net-down" : "net-up"), $(i - 1)); break
    }
}
inrun && /min\/avg\/max/ {
    split(substr($0, index($0, "= ") + 2), r, "/")
    if (r[2] != "") emit("net-rtt", r[2])
}
'
ROWS=("net-up|TCP guest->host Mbit/s|higher" "net-down|TCP host->guest Mbit/s|higher"
    "net-rtt|ping RTT avg ms|lower" "net-secs|launch to exit s|lower")

report() {
    local rows=("${ROWS[@]}")
    # --user runs (passt): their rows after the TAP's, when there were any.
    if grep -aq '@@BENCH-RUN-BEGIN unet ' "$1"; then
        rows=("${ROWS[@]:0:2}" "unet-up|passt: guest->host Mbit/s|higher"
            "unet-down|passt: host->guest Mbit/s|higher" "${ROWS[@]:2}")
    fi
    bench_report "$1" "$NET_AWK" "Network benchmark: iperf3 and ping in the guest, virtio-net on a TAP (kvmini vs QEMU microvm)" "net-up net-down net-rtt" "${rows[@]}"
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
BENCH_SECS=$secs
BENCH_MEM=$mem
BENCH_VMMS="$BENCH_VMMS"
BENCH_NET_USER=$user
EOF
timeout=$((rounds * (nvmm + 2 * user) * (240 + 2 * secs + 30)))
bench_go net "$rounds round(s) of $BENCH_VMMS" "$timeout" "${host[@]}"
