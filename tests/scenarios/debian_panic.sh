# kvmini-scenario-timeout: 400
# Debian 12 (resources/debian) panics (sysrq c): its pvpanic driver tells
# kvmini, which exits 4 (guest panic), although the panic=1 guest resets.
[ -n "$GUEST_DEBIAN_DISK" ] || { echo "GUEST_DEBIAN_DISK is not set (run.sh: GUEST_DEBIAN)"; exit 1; }
disk=$GUEST_DEBIAN_DISK
if [ -f "$disk" ]; then
    cp "$disk" /tmp/kvmini-debian.ext4 && disk=/tmp/kvmini-debian.ext4
fi
"$KVMINI" run --kernel "$GUEST_DEBIAN_KERNEL" --initrd "$GUEST_DEBIAN_INITRD" \
    --cpus 1 --memory 1G --disk "path=$disk" --cmdline "root=/dev/vda rw kvmini.test=panic"
echo "kvmini-rc=$?"
[ "$disk" = "$GUEST_DEBIAN_DISK" ] || rm -f "$disk"
