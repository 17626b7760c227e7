# --rootfs: the command runs in the ext4 image (read-only on the host side,
# writable in the guest through an overlay); the image is left unchanged.
sum=$(sha256sum "$GUEST_EXT4" | cut -d' ' -f1)
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --rootfs "$GUEST_EXT4" \
    --memory 128M -- \
    sh -c 'echo "root=$(awk "\$2 == \"/\" { print \$3 }" /proc/mounts | tail -n 1)"; echo scratch > /made-in-guest && echo "wrote=$(cat /made-in-guest)"'
echo "exec-rc=$?"
[ "$(sha256sum "$GUEST_EXT4" | cut -d' ' -f1)" = "$sum" ] && echo "image-unchanged"
