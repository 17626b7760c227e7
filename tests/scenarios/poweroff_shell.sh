# `poweroff` typed at the interactive shell (busybox signals PID 1, our
# /init resets the VM): kvmini exits 0 instead of leaving a halted guest.
printf '%64s\npoweroff\n' '' |
    "$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M --cmdline "quiet"
echo "kvmini-rc=$?"
