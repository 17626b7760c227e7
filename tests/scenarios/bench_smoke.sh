# kvmini-scenario-timeout: 400
# kvmini bench end to end, every workload once (--repeat 1, no warm-up, small
# sizes): every cell of every workload must hold a measured number for the
# VM, the container (crun + cgroup v2 in L1) and the host. Startup, memory,
# cpu and density run on the default guest initramfs; block (fio on an 8 MiB
# scratch file: the VM's virtio-blk disk) and network (iperf3 and ping over
# a TAP, a veth pair, loopback) on the bench initramfs, which run.sh carries
# into L1 when GUEST_BENCH_INITRD is set (tests/e2e.rs sets it). The VM
# needs 2 x 85 MiB + 64 MiB of RAM to boot that initramfs: 288M.
$KVMINI bench --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" \
    ${GUEST_BENCH_INITRD:+--tools-initrd "$GUEST_BENCH_INITRD"} --memory 288M \
    --repeat 1 --warmup 0 --cpu-work 4M --working-set 64M --density 2 --budget 1G \
    --io-size 8M --net-time 1s --timeout 120s --json /tmp/bench-smoke.json
echo "bench-rc=$?"
grep -c '"status": "measured"' /tmp/bench-smoke.json | sed 's/^/bench-measured-cells=/'
# Nothing the network workload made may be left behind.
echo "bench-leftover-links=$(ls /sys/class/net | grep -c -e '^kbt' -e '^kbv')"
