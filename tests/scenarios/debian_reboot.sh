# kvmini-scenario-timeout: 400
# Debian 12 (resources/debian) runs `systemctl reboot` once booted: with
# kvmini's default reboot=k the kernel resets through the i8042, and
# kvmini exits 0.
[ -n "$GUEST_DEBIAN_DISK" ] || { echo "GUEST_DEBIAN_DISK is not set (run.sh: GUEST_DEBIAN)"; exit 1; }
disk=$GUEST_DEBIAN_DISK
if [ -f "$disk" ]; then
    cp "$disk" /tmp/kvmini-debian.ext4 && disk=/tmp/kvmini-debian.ext4
fi
"$KVMINI" run --kernel "$GUEST_DEBIAN_KERNEL" --initrd "$GUEST_DEBIAN_INITRD" \
    --cpus 2 --memory 1G --disk "path=$disk" --cmdline "root=/dev/vda rw kvmini.test=reboot"
echo "kvmini-rc=$?"
[ "$disk" = "$GUEST_DEBIAN_DISK" ] || rm -f "$disk"
