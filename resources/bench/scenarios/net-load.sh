# shellcheck shell=sh disable=SC1091
# TCP load loop (issue 17), run inside the rig's L1 by
# resources/bench/net-load.sh: the same guest (bench initramfs with iperf3,
# 1 vCPU) boots again and again under each VMM in turn, on the same TAP,
# and runs an iperf3 upload then a download against a fresh iperf3 server
# in L1. Each run is classified:
#   ok            both transfers finished, the guest rebooted, the VMM exited 0
#   triple-fault  the VMM reported KVM_EXIT_SHUTDOWN (kvmini: "triple-faulted";
#                 Firecracker: "Unexpected exit reason on vcpu run: Shutdown")
#   stall         the run did not end within NETLOAD_RUN_TIMEOUT s (killed)
#   fail          anything else (an iperf3 error, a guest panic, ...)
# and reported as
#   @@NETLOAD-BEGIN <vmm> <n>
#   @@NETLOAD-RUN <vmm> <n> result=<r> rc=<rc> secs=<s> up=<Mbit/s> down=<Mbit/s>
#       rxlen=<n> rxdrop=<n>
# where rxlen and rxdrop are the guest's eth0 rx_length_errors and
# rx_dropped after both transfers (Linux's virtio-net counts a frame whose
# buffers it could not all find as a length error and a drop). A run that
# is not ok is followed by the tail of the VMM's output (guest console
# included), of L1's dmesg and, with NETLOAD_TRACE=1, of L1's KVM trace
# (exits with the guest RIP, injected exceptions and interrupts, nested
# page faults: on AMD, KVM resets a vCPU on a triple fault, so this is
# where the faulting RIP survives), prefixed with "| ". The VMM's output
# goes to a file, not to L1's console: every console byte costs L1 a serial
# port exit under emulation.
# Everything happens in a network namespace of our own.
# A VMM named kvmini-NAME is the kvmini binary $RIG_DATA/kvmini-NAME (another
# build, e.g. the one before a fix), run like kvmini.
# From $RIG_DATA: vm.sh, params (NETLOAD_RUNS, NETLOAD_FIRST, NETLOAD_SECS,
# NETLOAD_LEN (iperf3 -l; empty: its default), NETLOAD_MEM, NETLOAD_VMMS, NETLOAD_RUN_TIMEOUT, NETLOAD_TRACE) and fc/ (Firecracker with
# its loader and libraries, and fc/firecracker.sh to run it).
if [ -z "${NETLOAD_IN_NETNS:-}" ]; then
    export NETLOAD_IN_NETNS=1
    exec unshare -n sh "$0"
fi
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
[ -n "${GUEST_BENCH_INITRD:-}" ] || { echo "@@BENCH-ERROR net-load: no bench initramfs in L1 (GUEST_BENCH_INITRD)"; exit 1; }

host=192.168.100.1 guest=192.168.100.2 tap=ltap0 mac=52:54:00:12:34:56
ip link set lo up
tunctl -t $tap >/dev/null || { echo "@@BENCH-ERROR net-load cannot create TAP $tap"; exit 1; }
ip addr add $host/24 dev $tap && ip link set $tap up ||
    { echo "@@BENCH-ERROR net-load cannot configure TAP $tap"; exit 1; }

# The iperf3 server is the guest's own iperf3, from an unpacked copy of the
# bench initramfs: both ends are the same build.
root=${TMPDIR:-/tmp}/kvmini-netload-root
rm -rf "$root" && mkdir -p "$root"
(cd "$root" && cpio -id --quiet <"$GUEST_BENCH_INITRD") ||
    { echo "@@BENCH-ERROR net-load cannot unpack the bench initramfs"; exit 1; }
mkdir -p "$root/dev" "$root/proc" "$root/tmp"
mount -o bind /dev "$root/dev"
out=${TMPDIR:-/tmp}/kvmini-netload-vm.log

now() { cut -d' ' -f1 /proc/uptime; }

T=/sys/kernel/tracing
trace=0
if [ "${NETLOAD_TRACE:-0}" = 1 ]; then
    mount -t tracefs nodev $T 2>/dev/null
    if [ -d $T/events/kvm ]; then
        echo 8192 >$T/buffer_size_kb
        for e in kvm_exit kvm_inj_exception kvm_page_fault kvm_inj_virq; do
            [ -d $T/events/kvm/$e ] && echo 1 >$T/events/kvm/$e/enable
        done
        echo 1 >$T/tracing_on && trace=1
    fi
    echo "@@NETLOAD-INFO L1 KVM trace: $([ $trace = 1 ] && echo on || echo unavailable)"
fi
# receiver_rate FILE N: the Mbit/s of the Nth iperf3 "receiver" summary.
receiver_rate() {
    awk -v n="$2" '/receiver/ && /Mbits\/sec/ { if (++k == n) for (i = 2; i <= NF; i++) if ($i == "Mbits/sec") { print $(i - 1); exit } }' "$1"
}

stats=/sys/class/net/eth0/statistics
len=${NETLOAD_LEN:+-l$NETLOAD_LEN} # one word: the guest gets at most 32
cmd="iperf3 -c $host -t $NETLOAD_SECS $len -f m && echo netload-up=ok; iperf3 -c $host -t $NETLOAD_SECS $len -f m -R && echo netload-down=ok; echo netload-rx-errors \$(cat $stats/rx_length_errors $stats/rx_dropped)"
n=$NETLOAD_FIRST
last=$((NETLOAD_FIRST + NETLOAD_RUNS - 1))
while [ "$n" -le "$last" ]; do
    if [ $((n % 2)) = 1 ]; then order=$NETLOAD_VMMS; else order=$(echo "$NETLOAD_VMMS" | awk '{ for (i = NF; i > 0; i--) printf "%s ", $i }'); fi
    for vmm in $order; do
        # A fresh server per run: nothing left over from a broken run.
        chroot "$root" iperf3 -s -B $host >/tmp/kvmini-netload-server.log 2>&1 &
        server=$!
        sleep 1
        [ $trace = 1 ] && echo >$T/trace
        echo "@@NETLOAD-BEGIN $vmm $n"
        t0=$(now)
        # Own session, so the watchdog kills the VMM with its wrapper shell.
        how=$vmm bin=$KVMINI
        case $vmm in kvmini-*) how=kvmini bin=$RIG_DATA/$vmm ;; esac
        KVMINI=$bin setsid sh -c '. "$RIG_DATA/vm.sh"; bench_vm "$@"' sh --vmm "$how" --mem "$NETLOAD_MEM" \
            --cpus 1 --initrd "$GUEST_BENCH_INITRD" --net $tap --mac $mac \
            --kparams "quiet ip=$guest::$host:255.255.255.0::eth0:off" -- "$cmd" >"$out" 2>&1 &
        vm=$!
        (sleep "$NETLOAD_RUN_TIMEOUT"; echo "netload: killed after ${NETLOAD_RUN_TIMEOUT}s" >>"$out"; kill -s KILL -"$vm" 2>/dev/null) &
        watchdog=$!
        wait "$vm"
        rc=$?
        kill "$watchdog" 2>/dev/null
        secs=$(echo "$t0 $(now)" | awk '{ printf "%.1f", $2 - $1 }')
        if grep -q -e "triple-faulted" -e "exit reason on vcpu run: Shutdown" "$out"; then
            result=triple-fault
        elif grep -q "^netload: killed after" "$out"; then
            result=stall
        elif [ "$rc" = 0 ] && grep -q "netload-up=ok" "$out" && grep -q "netload-down=ok" "$out" &&
            grep -q "kvmini-guest: exit status 0" "$out"; then
            result=ok
        else
            result=fail
        fi
        up=$(receiver_rate "$out" 1) down=$(receiver_rate "$out" 2)
        rxerr=$(awk '$1 == "netload-rx-errors" && NF == 3 { print "rxlen=" $2 " rxdrop=" $3 }' "$out" | tr -d '\r')
        echo "@@NETLOAD-RUN $vmm $n result=$result rc=$rc secs=$secs up=${up:--} down=${down:--} ${rxerr:-rxlen=- rxdrop=-}"
        if [ $result != ok ]; then
            tail -n 120 "$out" | sed 's/^/| /'
            echo "| -- L1 dmesg (last 20 lines)"
            dmesg | tail -n 20 | sed 's/^/| /'
            if [ $trace = 1 ]; then
                echo "| -- L1 KVM trace (last 150 events)"
                grep -v "^#" $T/trace | tail -n 150 | sed 's/^/| /'
            fi
        fi
        kill "$server" 2>/dev/null
        wait "$server" 2>/dev/null
    done
    n=$((n + 1))
done
umount "$root/dev" 2>/dev/null
rm -rf "$root"
exit 0
