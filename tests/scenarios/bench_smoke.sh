# kvmini-scenario-timeout: 240
# kvmini bench end to end, every workload once (--repeat 1, no warm-up, small
# sizes): startup, memory, cpu and density must hold a measured number for
# the VM, the container (crun + cgroup v2 in L1) and the host; block and
# network are skipped with their reasons (no fio/iperf3 in the default
# guest root filesystem; the network workload is not wired in yet).
$KVMINI bench --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 192M \
    --repeat 1 --warmup 0 --cpu-work 4M --working-set 64M --density 2 --budget 1G \
    --timeout 120s --json /tmp/bench-smoke.json
echo "bench-rc=$?"
grep -c '"status": "measured"' /tmp/bench-smoke.json | sed 's/^/bench-measured-cells=/'
