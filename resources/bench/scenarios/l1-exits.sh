# shellcheck shell=sh disable=SC1091
# Inside the rig's L1 (resources/bench/l1-exits.sh): one boot of the bench
# guest per VMM in $L1_EXITS_VMMS; while the guest sleeps after its
# command, L1's KVM counters of that VM (debugfs, /sys/kernel/debug/kvm/
# PID-FD/) are read every 0.3 s, and the last reading is printed:
#   @@L1-EXITS <vmm> uptime=<guest uptime at its command> name=value...
# With $L1_EXITS_FIO (randread, randwrite, read, write) the guest runs one fio
# job on a virtio-blk image instead, and the counters are the job's alone:
# the readings when the guest says it starts and when it is done (it
# sleeps around the job, so both readings are taken while it is idle);
# the line then also has iops=, exits_per_io= and, per VMM thread name,
# its CPU time in ms (ms_NAME=), how often it was scheduled in (runs_)
# and its ticks in user space outside the guest, in the kernel and in the
# guest (user_, sys_, guest_; /proc's stat), and the virtio interrupts the
# guest took during the job (irqs=, irqs_per_io=: its /proc/interrupts,
# every line naming a virtio device, read right before and after fio).
. "$RIG_DATA/params"
. "$RIG_DATA/vm.sh"
mount -t debugfs none /sys/kernel/debug 2>/dev/null
[ -d /sys/kernel/debug/kvm ] || { echo "@@BENCH-ERROR l1-exits: no KVM debugfs in L1"; exit 1; }
counters="exits pf_fixed pages_4k pages_2m io_exits mmio_exits irq_exits halt_exits halt_wakeup irq_window_exits insn_emulation irq_injections"
# irqs WHEN: the guest command that prints its virtio interrupt lines, each
# prefixed "@@IRQ-WHEN" (the IRQ number that follows is padded with spaces).
# The kernel command line carries it: no quotes (Firecracker's JSON has it
# too), and few words: init gets at most 32, and the fio job's command is
# 30 of them.
irqs() { echo "sed -n /virtio/s/^/@@IRQ-$1/p /proc/interrupts"; }
for vmm in $L1_EXITS_VMMS; do
    rm -f /tmp/l1-exits /tmp/l1-exits-start /tmp/l1-exits-end
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
                [ $ok = 1 ] || continue
                if [ -n "${L1_EXITS_FIO:-}" ]; then
                    # The VMM's threads (the directory is PID-FD), summed
                    # by name: CPU time (ms) and times scheduled in.
                    pid=${d##*/} && pid=${pid%%-*}
                    set --
                    for t in /proc/"$pid"/task/*; do set -- "$@" "$t/comm" "$t/schedstat" "$t/stat"; done
                    line="$line$(awk 'FILENAME ~ /comm$/ { c = $0; gsub(/[^A-Za-z0-9_]/, "_", c); next }
                        FILENAME ~ /schedstat$/ { ms[c] += $1 / 1e6; n[c] += $3; next }
                        { sub(/^.*\) /, ""); u[c] += $12 - $41; s[c] += $13; g[c] += $41 }
                        END { for (c in ms) printf " ms_%s=%d runs_%s=%d user_%s=%d sys_%s=%d guest_%s=%d", c, ms[c], c, n[c], c, u[c], c, s[c], c, g[c] }' "$@" 2>/dev/null)"
                fi
                echo "$line" >/tmp/l1-exits.new && mv /tmp/l1-exits.new /tmp/l1-exits
                # The job's bounds: the first complete reading after each
                # of the guest's markers.
                for m in start end; do
                    [ -f /tmp/l1-exits-$m ] && continue
                    grep -aq "@@FIO-$m" /tmp/l1-exits-vm.log 2>/dev/null && cp /tmp/l1-exits /tmp/l1-exits-$m
                    break
                done
            done
            sleep 0.3
        done
    ) &
    poller=$!
    if [ -z "${L1_EXITS_FIO:-}" ]; then
        bench_vm --vmm "$vmm" --mem 512 --cpus 1 --initrd "$GUEST_BENCH_INITRD" --kparams quiet \
            -- "cat /proc/uptime; sleep 2" >/tmp/l1-exits-vm.log 2>&1
    else
        img=/tmp/l1-exits.img
        dd if=/dev/zero of=$img bs=1M count=64 2>/dev/null
        job="bench-fio --thread --output-format=terse --filename=/dev/vda --direct=1 --ioengine=libaio"
        job="$job --bs=$L1_EXITS_BS --iodepth=$L1_EXITS_QD --rw=$L1_EXITS_FIO --time_based --runtime=5 --name=job"
        bench_vm --vmm "$vmm" --mem 512 --cpus 1 --initrd "$GUEST_BENCH_INITRD" --kparams quiet \
            --disk $img -- "cat /proc/uptime; echo @@FIO-start; sleep 1; $(irqs start); $job; $(irqs end); echo @@FIO-end; sleep 2" \
            >/tmp/l1-exits-vm.log 2>&1
        rm -f $img
    fi
    kill "$poller"
    wait "$poller" 2>/dev/null
    up=$(grep -m1 -E '^[0-9]+\.[0-9]+ ' /tmp/l1-exits-vm.log | cut -d' ' -f1 | tr -d '\r')
    if [ -z "${L1_EXITS_FIO:-}" ]; then
        echo "@@L1-EXITS $vmm uptime=${up:-missing}$(cat /tmp/l1-exits 2>/dev/null)"
        continue
    fi
    # terse v3: read IOPS field 8 and runtime (ms) 9, write IOPS 49 and
    # runtime 50.
    ios=$(tr -d '\r' </tmp/l1-exits-vm.log | awk -F';' '/3;fio-/ { sub(/^.*3;fio-/, "3;fio-"); split($0, f, ";"); print f[8] * f[9] / 1000 + f[49] * f[50] / 1000, f[8] + f[49]; exit }')
    if [ -z "$ios" ] || [ ! -f /tmp/l1-exits-start ] || [ ! -f /tmp/l1-exits-end ]; then
        echo "@@L1-EXITS $vmm fio=missing (console: $(tail -c 600 /tmp/l1-exits-vm.log | tr '\r\n' '  '))"
        continue
    fi
    # Interrupts: the counts after "N:" on each line (one per guest CPU),
    # summed over the virtio lines; end minus start.
    irq=$(tr -d '\r' </tmp/l1-exits-vm.log | awk '/^@@IRQ-(start|end)/ {
            w = ($0 ~ /^@@IRQ-start/) ? "start" : "end"
            sub(/^@@IRQ-(start|end) */, "")
            for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) t[w] += $i
            seen[w] = 1 }
        END { if (seen["start"] && seen["end"]) print t["end"] - t["start"] }')
    echo "$ios $(cat /tmp/l1-exits-start) / $(cat /tmp/l1-exits-end)" | awk -v vmm="$vmm" -v irq="${irq:-missing}" '{
        n = $1; iops = $2; i = 3
        while ($i != "/") { split($i, kv, "="); a[kv[1]] = kv[2]; i++ }
        line = ""
        for (i++; i <= NF; i++) { split($i, kv, "="); d[kv[1]] = kv[2] - a[kv[1]]; line = line " " kv[1] "=" d[kv[1]] }
        irqs = (irq == "missing" ? "irqs=missing" : sprintf("irqs=%d irqs_per_io=%.2f", irq, (n > 0 ? irq / n : 0)))
        printf "@@L1-EXITS %s iops=%s ios=%d exits_per_io=%.2f %s%s\n", vmm, iops, n, (n > 0 ? d["exits"] / n : 0), irqs, line
    }'
done
