# shellcheck shell=sh disable=SC1091
# Inside the rig's L1 (resources/bench/l1-exits.sh): one boot of the bench
# guest per VMM in $L1_EXITS_VMMS; while the guest sleeps after its
# command, L1's KVM counters of that VM (debugfs, /sys/kernel/debug/kvm/
# PID-FD/) are read every 0.3 s, and the last reading is printed:
#   @@L1-EXITS <vmm> uptime=<guest uptime at its command> name=value...
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
mount -t debugfs none /sys/kernel/debug 2>/dev/null
[ -d /sys/kernel/debug/kvm ] || { echo "@@BENCH-ERROR l1-exits: no KVM debugfs in L1"; exit 1; }
counters="exits pf_fixed pages_4k pages_2m io_exits mmio_exits irq_exits halt_exits halt_wakeup irq_window_exits insn_emulation irq_injections"
for vmm in $L1_EXITS_VMMS; do
    (
        while :; do
            for d in /sys/kernel/debug/kvm/*-*; do
                [ -d "$d" ] || continue
                # A VM that ends mid-reading takes its directory along:
                # only a complete reading replaces the last one.
                line="" ok=1
                for c in $counters; do
                    [ -f "$d/$c" ] || continue
                    v=$(cat "$d/$c" 2>/dev/null) && [ -n "$v" ] || { ok=0; break; }
                    line="$line $c=$v"
                done
                [ $ok = 1 ] && echo "$line" >/tmp/l1-exits.new && mv /tmp/l1-exits.new /tmp/l1-exits
            done
            sleep 0.3
        done
    ) &
    poller=$!
    bench_vm --vmm "$vmm" --mem 512 --cpus 1 --initrd "$GUEST_BENCH_INITRD" --kparams quiet \
        -- "cat /proc/uptime; sleep 2" >/tmp/l1-exits-vm.log 2>&1
    kill "$poller"
    wait "$poller" 2>/dev/null
    up=$(grep -m1 -E '^[0-9]+\.[0-9]+ ' /tmp/l1-exits-vm.log | cut -d' ' -f1 | tr -d '\r')
    echo "@@L1-EXITS $vmm uptime=${up:-missing}$(cat /tmp/l1-exits 2>/dev/null)"
    rm -f /tmp/l1-exits
done
