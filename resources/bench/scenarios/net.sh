# shellcheck shell=sh disable=SC1091
# Network benchmark, run inside the rig's L1 (or on the host with --host) by
# resources/bench/net.sh: the same guest (bench initramfs with iperf3) boots
# under kvmini and under QEMU's microvm, each with one virtio-net NIC on the
# same TAP (userspace virtio-net on both: QEMU without vhost), and measures
# TCP guest->host and host->guest (iperf3 against a server on the TAP's
# host side, the same iperf3 binary) and ping round trips. Rounds alternate
# the order of the VMMs. Everything happens in a network namespace of our
# own: only its addresses are used.
# With BENCH_NET_USER=1 each round also runs kvmini and QEMU with
# `--net user` (each on its own passt; run "unet"): iperf3 against a server
# on L1's loopback, reached through the guest's gateway address. passt
# copies the TAP's address and default route for the guest, sandboxes
# itself with pivot_root (refused while / is L1's initramfs) and a user
# namespace (refused in a chroot): so the scenario runs in a mount
# namespace whose / is a bind mount of the old one moved over it.
# From $RIG_DATA: vm.sh, bench-initramfs.cpio and params (BENCH_ROUNDS,
# BENCH_SECS, BENCH_MEM, BENCH_VMMS, BENCH_NET_USER).
. "$RIG_DATA/params"
if [ -z "${BENCH_IN_NETNS:-}" ]; then
    export BENCH_IN_NETNS=1
    [ "${BENCH_NET_USER:-0}" = 1 ] || exec unshare -n sh "$0"
    exec unshare -n -m sh -c 'mkdir -p /tmp/kvmini-root && mount -o rbind / /tmp/kvmini-root &&
        cd /tmp/kvmini-root && mount -o move . / && exec chroot . sh "$1"' sh "$0"
fi
. "$RIG_DATA/vm.sh"
echo "@@BENCH-INFO vmms $BENCH_VMMS"

host=192.168.100.1 guest=192.168.100.2 tap=btap0
ip link set lo up
tunctl -t $tap >/dev/null || { echo "@@BENCH-ERROR net cannot create TAP $tap"; exit 1; }
ip addr add $host/24 dev $tap && ip link set $tap up ||
    { echo "@@BENCH-ERROR net cannot configure TAP $tap"; exit 1; }

# The iperf3 server: the guest's own iperf3, run from an unpacked copy of
# the bench initramfs, so both ends are the same build.
root=${TMPDIR:-/tmp}/kvmini-bench-netroot
rm -rf "$root" && mkdir -p "$root"
(cd "$root" && cpio -id --quiet <"$RIG_DATA/bench-initramfs.cpio") ||
    { echo "@@BENCH-ERROR net cannot unpack the bench initramfs"; exit 1; }
mkdir -p "$root/dev" "$root/proc" "$root/tmp"
mount -o bind /dev "$root/dev"
chroot "$root" iperf3 -s -B $host >/tmp/kvmini-bench-iperf3-server.log 2>&1 &
server=$!
sleep 1
kill -0 $server 2>/dev/null || { cat /tmp/kvmini-bench-iperf3-server.log; echo "@@BENCH-ERROR net iperf3 server did not start"; exit 1; }
gw=192.168.100.254 userver=""
if [ "${BENCH_NET_USER:-0}" = 1 ]; then
    # passt's template: an interface with a default route (nothing behind it).
    ip route add default via $gw dev $tap onlink
    chroot "$root" iperf3 -s -B 127.0.0.1 >/tmp/kvmini-bench-iperf3-userver.log 2>&1 &
    userver=$!
    sleep 1
    kill -0 $userver 2>/dev/null || { cat /tmp/kvmini-bench-iperf3-userver.log; echo "@@BENCH-ERROR net iperf3 loopback server did not start"; exit 1; }
fi

cmd="iperf3 -c $host -t $BENCH_SECS -f m; iperf3 -c $host -t $BENCH_SECS -f m -R; ping -c 10 $host"
ucmd="iperf3 -c $gw -t $BENCH_SECS -f m; iperf3 -c $gw -t $BENCH_SECS -f m -R"
round=1 rc=0
while [ $round -le "$BENCH_ROUNDS" ]; do
    if [ $((round % 2)) = 1 ]; then order=$BENCH_VMMS; else order=$(echo "$BENCH_VMMS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }'); fi
    for vmm in $order; do
        bench_run net "$vmm" "$round" bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 \
            --initrd "$RIG_DATA/bench-initramfs.cpio" --net $tap \
            --kparams "quiet ip=$guest::$host:255.255.255.0::eth0:off" -- "$cmd" || rc=1
        if [ "${BENCH_NET_USER:-0}" = 1 ] && [ "$vmm" != firecracker ]; then
            bench_run unet "$vmm" "$round" bench_vm --vmm "$vmm" --mem "$BENCH_MEM" --cpus 1 \
                --initrd "$RIG_DATA/bench-initramfs.cpio" --net user --kparams "quiet" -- "$ucmd" || rc=1
        fi
    done
    round=$((round + 1))
done
kill $server $userver 2>/dev/null
umount "$root/dev" 2>/dev/null
rm -rf "$root"
exit $rc
