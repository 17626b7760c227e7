# --timeout kills a command that does not finish: exit 124 and a message.
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --timeout 8s -- sleep 600
echo "exec-rc=$?"
