# --net user in the rig: kvmini's own virtio-net over passt, run by a user
# without privileges (uid/gid 65534 through util-linux setpriv, no
# capabilities, only /dev/kvm opened up to it). In a network namespace of
# our own with a TAP that holds a default route (passt copies the guest's
# addresses from it; nothing is behind it). The guest gets its address by
# DHCP from passt, fetches its script and then 2 MiB from busybox httpd
# on L1's loopback through its gateway address (hashes compared by
# tests/e2e.rs); then L1 uploads 2 MiB through forward=tcp:18080:8080 to
# nc in the guest, which answers with the hash of what it got.
# kvmini-scenario-timeout: 240
if [ -z "$KVMINI_IN_NETNS" ]; then
    export KVMINI_IN_NETNS=1
    exec unshare -n sh "$0"
fi
set -e
ip link set lo up
tunctl -t kdef0 >/dev/null
ip addr add 10.77.0.1/24 dev kdef0
ip link set kdef0 up
ip route add default via 10.77.0.2 dev kdef0 onlink
tmp=$(mktemp -d)
chmod 755 "$tmp"
dd if=/dev/urandom of="$tmp/file" bs=1M count=2 2>/dev/null
dd if=/dev/urandom of="$tmp/up" bs=1M count=2 2>/dev/null
echo "host-file-sha=$(sha256sum <"$tmp/file" | cut -c1-64)"
echo "host-up-sha=$(sha256sum <"$tmp/up" | cut -c1-64)"
cat >"$tmp/g.sh" <<'GUEST'
dmesg -n 4
echo guest-addr=$(ip -4 addr show eth0 | awk '/inet / {print $2}')
echo guest-got-sha=$(wget -qO- http://10.77.0.2:8081/file | sha256sum | cut -c1-64)
nc -l -p 8080 -e sh -c 'head -c 2097152 | sha256sum | cut -c1-64'
echo guest-served=$?
# Stay up until L1 has the answer: frames still on their way when the
# guest powers off are lost.
n=0
until wget -qO- http://10.77.0.2:8081/done >/dev/null 2>&1 || [ $n -ge 120 ]; do
    sleep 1
    n=$((n + 1))
done
GUEST
chmod 644 "$tmp"/*
httpd -p 127.0.0.1:8081 -h "$tmp"
chmod 666 /dev/kvm
# The heartbeat port, for the $KVMINI wrapper's "kvmini-start" line.
chmod 666 /dev/ttyS1 2>/dev/null || true
# passt sandboxes itself with pivot_root, which the kernel refuses while
# the root is the initramfs (rootfs, as L1's is), and with a user
# namespace, which it refuses in a chroot: so kvmini runs in a mount
# namespace whose / is a bind mount of the old one, moved over it (as
# switch_root does).
run_as_nobody() {
    unshare -m sh -c 'mkdir -p /tmp/kvmini-root && mount -o rbind / /tmp/kvmini-root &&
        cd /tmp/kvmini-root && mount -o move . / &&
        exec chroot . /usr/bin/setpriv --reuid=65534 --regid=65534 \
            --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"' sh "$@"
}
run_as_nobody sh -c 'echo runner-uid=$(id -u) runner-caps=$(awk "/^CapEff/ {print \$2}" /proc/self/status)'
(
    n=0
    until nc 127.0.0.1 18080 <"$tmp/up" >"$tmp/answer" 2>/dev/null && [ -s "$tmp/answer" ]; do
        n=$((n + 1))
        [ $n -lt 200 ] || break
        sleep 1
    done
    # Printed after kvmini exits (below), not here: a line printed now
    # would land in the middle of the guest's console output.
    touch "$tmp/done"
) &
uploader=$!
set +e
run_as_nobody "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --net user,forward=tcp:18080:8080 \
    --cmdline "quiet -- wget -qO- http://10.77.0.2:8081/g.sh | sh"
rc=$?
# Done already when the guest got its answer through; not if kvmini failed.
kill $uploader 2>/dev/null
wait $uploader
echo "upload-answer=$(cat "$tmp/answer" 2>/dev/null)"
rm -rf "$tmp"
exit $rc
