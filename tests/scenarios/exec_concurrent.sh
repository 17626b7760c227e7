# Four kvmini exec at once on one host: no fixed paths, ports or names clash.
for i in 1 2 3 4; do
    "$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 96M -- \
        sh -c "echo run-$i-says-hi; exit $((40 + i))" >/tmp/concurrent-$i.out 2>&1 &
    eval "pid$i=\$!"
done
for i in 1 2 3 4; do
    eval "wait \$pid$i"
    echo "run-$i-rc=$? output=$(cat /tmp/concurrent-$i.out)"
done
