# Two guests on one bridge, in a network namespace of our own: kvmini
# creates each guest's TAP itself (it has CAP_NET_ADMIN in the namespace)
# and says so; we add the TAPs to the bridge as they appear. Guest A pings
# guest B, then sends it a line over TCP, which B prints; A says a-sent=ok
# only once its nc has succeeded. (The kernel hands init at most 32 words:
# keep the guest commands short.)
if [ -z "$KVMINI_IN_NETNS" ]; then
    export KVMINI_IN_NETNS=1
    [ "$(id -u)" = 0 ] && exec unshare -n sh "$0"
    exec unshare -rn sh "$0"
fi
ip link set lo up
brctl addbr kbr0 || exit 1
ip link set kbr0 up
tmp=$(mktemp -d)
(
    for t in ktapb ktapa; do
        n=0
        until ip link show "$t" >/dev/null 2>&1; do
            n=$((n + 1))
            [ $n -lt 600 ] || { echo "TAP $t never appeared"; exit 1; }
            sleep 0.1
        done
        brctl addif kbr0 "$t" && ip link set "$t" up && echo "bridged $t"
    done
) &
# B waits at most 100 s (its guest clock) for A's line.
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --net tap=ktapb \
    --cmdline "quiet ip=10.0.0.12:::255.255.255.0::eth0:off -- \
timeout 100 nc -l -p 7000 >/tmp/m; echo b-got=\$(cat /tmp/m)" >"$tmp/b.log" 2>&1 &
b=$!
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --net tap=ktapa \
    --cmdline "quiet ip=10.0.0.11:::255.255.255.0::eth0:off -- \
ping -c 1 -w 90 10.0.0.12 >/dev/null; ping -c 2 10.0.0.12 && echo a-ping=ok; \
until echo hello-from-a | nc 10.0.0.12 7000 && echo a-sent=ok; do sleep 1; done"
rca=$?
wait $b
rcb=$?
echo "---- guest B (rc=$rcb)"
cat "$tmp/b.log"
rm -rf "$tmp"
[ $rca = 0 ] && [ $rcb = 0 ]
