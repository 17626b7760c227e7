# Boot from the ext4 root image on virtio-blk (no initramfs), write a file
# on it and unmount cleanly; boot again from the same image, read-only, and
# read the file back.
img=/tmp/kvmini-root.ext4
cp "$GUEST_EXT4" $img
"$KVMINI" run --kernel "$GUEST_VMLINUX" --memory 128M --disk path=$img \
    --cmdline "root=/dev/vda rw init=/init -- echo persisted-by-guest > /hello.txt; mount -o remount,ro /" ||
    exit $?
"$KVMINI" run --kernel "$GUEST_VMLINUX" --memory 128M --disk path=$img,readonly=on \
    --cmdline "root=/dev/vda ro init=/init -- echo second-boot=\$(cat /hello.txt); echo root-ro=\$(cat /sys/block/vda/ro)"
rc=$?
rm -f $img
exit $rc
