# `poweroff -f`: the kernel powers down, which without ACPI is a halt loop
# that never exits to the VMM; kvmini sees the kernel's "reboot: Power off
# not available: System halted instead" and stops.
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --cmdline "-- poweroff -f"
echo "kvmini-rc=$?"
