# A failing guest command is reported by the guest, and kvmini still exits 0
# (the guest rebooted normally).
exec "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M \
    --cmdline "quiet -- echo about-to-fail; exit 7"
