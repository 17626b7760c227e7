# virtio-net over a TAP, in a network namespace of our own (only its
# addresses are used): the guest pings the host side of its TAP, sends
# NET_UP_MIB MiB of random data over TCP to a host listener, and fetches
# NET_DOWN_MIB MiB from another; both ends print the SHA-256 of what they
# sent and got, and how many bytes arrived (tests/e2e.rs compares them
# with what was sent). The TAP exists beforehand
# (busybox tunctl), as for an unprivileged user.
#
# 16 MiB up, 16 MiB down, with its own timeout:
# kvmini-scenario-timeout: 300
# busybox nc writes 1 KiB at a time, and in today's rig such small writes
# move at 1.3-2.2 Mbit/s under kvmini and Firecracker alike (net-load.sh
# --len 1024): a 64 MiB upload took 132-238 s and once overran the 300 s
# (docs/testing.md, "net_ping_tcp's upload size").
#
# The kernel hands init at most 32 words (and ends them at a second `--`),
# so the guest's command line only pings and fetches the rest of its
# script from the host, over the same TAP.
NET_UP_MIB=${NET_UP_MIB:-16}
NET_DOWN_MIB=${NET_DOWN_MIB:-16}
if [ -z "$KVMINI_IN_NETNS" ]; then
    export KVMINI_IN_NETNS=1 NET_UP_MIB NET_DOWN_MIB
    [ "$(id -u)" = 0 ] && exec unshare -n sh "$0"
    exec unshare -rn sh "$0"
fi
set -e
ip link set lo up
tunctl -t ktap0 >/dev/null
ip addr add 192.168.100.1/24 dev ktap0
ip link set ktap0 up
tmp=$(mktemp -d)

# dmesg -n 4: the kernel's info messages (a slow rig's "clocksource: Long
# readout interval", 2 min into the upload) stay off the console, where
# they once landed in the middle of a result line ("up-nc-rc=0[ 131.61]
# clocksource: ..."); errors and panics still show.
cat >"$tmp/guest.sh" <<GUEST
dmesg -n 4
up() { read t x </proc/uptime; echo \$t; }
echo up-mib=$NET_UP_MIB down-mib=$NET_DOWN_MIB
dd if=/dev/urandom of=/tmp/up bs=1M count=$NET_UP_MIB 2>/dev/null
echo guest-up-sha=\$(sha256sum </tmp/up | cut -c1-64)
t0=\$(up)
nc 192.168.100.1 5001 </tmp/up
echo up-nc-rc=\$?
echo up-secs=\$t0-\$(up)
t0=\$(up)
nc 192.168.100.1 5002 >/tmp/down
echo down-secs=\$t0-\$(up)
echo guest-down-sha=\$(sha256sum </tmp/down | cut -c1-64)
echo guest-down-bytes=\$(wc -c </tmp/down)
GUEST
nc -l -p 5000 <"$tmp/guest.sh" &
script_nc=$!
# An empty stdin that never ends: busybox nc half-closes on stdin EOF,
# which would cut the guest's upload short.
mkfifo "$tmp/hold"
exec 3<>"$tmp/hold"
nc -l -p 5001 <&3 >"$tmp/up" &
up_nc=$!
dd if=/dev/urandom of="$tmp/down" bs=1M count="$NET_DOWN_MIB" 2>/dev/null
echo "host-down-sha=$(sha256sum <"$tmp/down" | cut -c1-64)"
nc -l -p 5002 <"$tmp/down" &
down_nc=$!
set +e
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 320M \
    --net tap=ktap0,mac=52:54:00:12:34:56 \
    --cmdline "ip=192.168.100.2::192.168.100.1:255.255.255.0::eth0:off -- \
cat /sys/class/net/eth0/address; ping -c 3 192.168.100.1 && echo net-ping=ok; \
nc 192.168.100.1 5000 >/tmp/s; sh /tmp/s"
rc=$?
# The listeners end when the guest closes its connections. A guest that
# died mid-transfer never does: give them 10 s, then stop them, so the
# scenario fails now instead of at its timeout.
for i in 1 2 3 4 5 6 7 8 9 10; do
    kill -0 "$up_nc" 2>/dev/null || break
    sleep 1
done
kill "$script_nc" "$up_nc" "$down_nc" 2>/dev/null
wait
echo "host-up-sha=$(sha256sum <"$tmp/up" | cut -c1-64)"
echo "host-up-bytes=$(wc -c <"$tmp/up")"
rm -rf "$tmp"
exit $rc
