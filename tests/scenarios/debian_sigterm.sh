# kvmini-scenario-timeout: 400
# SIGTERM to kvmini while Debian 12 (resources/debian) runs: kvmini presses
# the ACPI power button, systemd-logind powers the guest off (the console
# shows systemd stopping units), kvmini exits 143 and says the guest shut
# down; the image is clean under e2fsck -fn.
# The console is read as it comes (as debian_poweroff does), not polled
# from a file with a grep every second: the polled form froze the rig's L1
# far more often (docs/testing.md, "The stuck timer").
[ -n "$GUEST_DEBIAN_DISK" ] || { echo "GUEST_DEBIAN_DISK is not set (run.sh: GUEST_DEBIAN)"; exit 1; }
disk=$GUEST_DEBIAN_DISK
if [ -f "$disk" ]; then
    cp "$disk" /tmp/kvmini-debian.ext4 && disk=/tmp/kvmini-debian.ext4
fi
pidfile=/tmp/kvmini-debian-sigterm.pid t0file=/tmp/kvmini-debian-sigterm.t0
rm -f "$pidfile" "$t0file"
{
    "$KVMINI" run --kernel "$GUEST_DEBIAN_KERNEL" --initrd "$GUEST_DEBIAN_INITRD" \
        --cpus 2 --memory 1G --disk "path=$disk" --shutdown-timeout 120 \
        --cmdline "root=/dev/vda rw kvmini.test=wait" &
    echo $! >"$pidfile"
    wait $!
    rc=$?
    echo "kvmini-rc=$rc"
    [ -f "$t0file" ] && echo "shutdown-secs=$(($(date +%s) - $(cat "$t0file")))"
} 2>&1 | while IFS= read -r line; do
    printf '%s\n' "$line"
    case $line in
    *"kvmini-debian: action=wait"*)
        # Let systemd-logind settle before the button press.
        sleep 3
        date +%s >"$t0file"
        kill -TERM "$(cat "$pidfile")"
        ;;
    esac
done
[ -f "$t0file" ] || echo "the guest never got ready"
e2fsck -fn "$disk" >/tmp/kvmini-e2fsck.log 2>&1
echo "e2fsck-rc=$?"
tail -n 3 /tmp/kvmini-e2fsck.log
rm -f "$pidfile" "$t0file"
[ "$disk" = "$GUEST_DEBIAN_DISK" ] || rm -f "$disk"
