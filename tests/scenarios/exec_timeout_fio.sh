# kvmini-scenario-timeout: 300
# `exec --timeout` against a guest keeping its disk busy with fio at queue
# depth 256 (issue 16): the deadline is served on its own thread, disk I/O
# runs on the disk's, and stopping gives up a request between its data
# segments, so kvmini ends right after the limit. Two runs: `--timeout 5s`
# as the issue states it, and `--timeout 40s`, by which fio has surely been
# running for a while in the rig (the guest takes seconds to boot here).
# Prints, per run, exec's status, its wall time (exec-ms, from
# /proc/uptime), and when fio started (fio-at-ms).
[ -n "$GUEST_BENCH_INITRD" ] || { echo "GUEST_BENCH_INITRD is not set (run.sh carries it)"; exit 1; }
img=/tmp/kvmini-fio.img
dd if=/dev/zero of="$img" bs=1M count=64 2>/dev/null
cs() { read -r t _ </proc/uptime; echo "${t%.*}${t#*.}"; }
fio="fio --thread --name=flood --filename=/dev/vda --direct=1 --ioengine=libaio"
fio="$fio --iodepth=256 --rw=randread --bs=256k --time_based --runtime=600"
for limit in 5 40; do
    t0=$(cs)
    {
        "$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_BENCH_INITRD" --memory 512M \
            --disk "path=$img" --timeout "${limit}s" -- sh -c "echo fio-starting; exec $fio" \
            2>/tmp/kvmini-fio.err
        echo $? >/tmp/kvmini-fio.rc
    } | while IFS= read -r line; do
        case $line in fio-starting) echo "fio-at-ms-$limit=$((($(cs) - t0) * 10))" ;; esac
    done
    t1=$(cs)
    echo "exec-rc-$limit=$(cat /tmp/kvmini-fio.rc)"
    echo "exec-ms-$limit=$(((t1 - t0) * 10))"
    tail -n 3 /tmp/kvmini-fio.err
done
rm -f "$img" /tmp/kvmini-fio.err /tmp/kvmini-fio.rc
