# A guest whose init exits panics ("Attempted to kill init!") and, with
# panic=1, reboots: kvmini must report the panic and exit 4, not 0.
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --cmdline "rdinit=/bin/true"
echo "kvmini-rc=$?"
