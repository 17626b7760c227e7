# kvmini-scenario-timeout: 400
# SIGTERM to kvmini while Debian 12 (resources/debian) runs: kvmini presses
# the ACPI power button, systemd-logind powers the guest off (the console
# shows systemd stopping units), kvmini exits 143 and says the guest shut
# down; the image is clean under e2fsck -fn.
[ -n "$GUEST_DEBIAN_DISK" ] || { echo "GUEST_DEBIAN_DISK is not set (run.sh: GUEST_DEBIAN)"; exit 1; }
disk=$GUEST_DEBIAN_DISK
if [ -f "$disk" ]; then
    cp "$disk" /tmp/kvmini-debian.ext4 && disk=/tmp/kvmini-debian.ext4
fi
log=/tmp/kvmini-debian-sigterm.log
"$KVMINI" run --kernel "$GUEST_DEBIAN_KERNEL" --initrd "$GUEST_DEBIAN_INITRD" \
    --cpus 2 --memory 1G --disk "path=$disk" --shutdown-timeout 120 \
    --cmdline "root=/dev/vda rw kvmini.test=wait" >"$log" 2>&1 &
pid=$!
n=0
until grep -q "kvmini-debian: action=wait" "$log"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $n -ge 300 ]; then
        cat "$log"
        echo "the guest never got ready"
        kill -KILL "$pid" 2>/dev/null
        exit 1
    fi
    sleep 1
    n=$((n + 1))
done
# Let systemd-logind settle before the button press.
sleep 3
t0=$(date +%s)
kill -TERM "$pid"
wait "$pid"
rc=$?
t1=$(date +%s)
cat "$log"
echo "kvmini-rc=$rc"
echo "shutdown-secs=$((t1 - t0))"
e2fsck -fn "$disk" >/tmp/kvmini-e2fsck.log 2>&1
echo "e2fsck-rc=$?"
tail -n 3 /tmp/kvmini-e2fsck.log
rm -f "$log"
[ "$disk" = "$GUEST_DEBIAN_DISK" ] || rm -f "$disk"
