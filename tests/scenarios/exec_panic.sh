# A guest kernel panic (here: its init exits) gives exit 123 and says so.
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --cmdline "rdinit=/bin/false" -- true
echo "exec-rc=$?"
