# --memory is what the guest sees (MemTotal is a little less: kernel image, reserved).
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 512M \
    --cmdline "quiet -- grep MemTotal /proc/meminfo"
