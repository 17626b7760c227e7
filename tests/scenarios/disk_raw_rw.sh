# virtio-blk data path on raw images: the guest reads bytes the host put on
# /dev/vda, writes bytes the host then finds in the image file, and cannot
# write to a read-only /dev/vdb. The guest's commands come on a third disk,
# /dev/vdc (a shell script padded with zeros), to stay under the kernel's
# limit of 32 init arguments.
rw=/tmp/kvmini-disk-rw.img ro=/tmp/kvmini-disk-ro.img script=/tmp/kvmini-disk-script.img
dd if=/dev/zero of=$rw bs=1024 count=4096 2>/dev/null
dd if=/dev/zero of=$ro bs=1024 count=1024 2>/dev/null
dd if=/dev/zero of=$script bs=1024 count=4 2>/dev/null
printf 'host-wrote-this' | dd of=$rw bs=512 seek=1 conv=notrunc 2>/dev/null
cat >/tmp/kvmini-disk-script.sh <<'GUEST'
echo guest-read=$(dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null | head -c 15)
echo guest-wrote-this | dd of=/dev/vda bs=512 seek=8 conv=sync,fsync 2>/dev/null
echo vda-sectors=$(cat /sys/block/vda/size)
echo vdb-ro=$(cat /sys/block/vdb/ro)
echo x | dd of=/dev/vdb conv=sync,fsync 2>/dev/null
echo vdb-write-rc=$?
exit 0
GUEST
dd if=/tmp/kvmini-disk-script.sh of=$script conv=notrunc 2>/dev/null
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --disk path=$rw --disk path=$ro,readonly=on --disk path=$script,readonly=on \
    --cmdline "-- sh /dev/vdc"
rc=$?
echo "host-read=$(dd if=$rw bs=512 skip=8 count=1 2>/dev/null | head -c 16)"
echo "ro-image-nonzero-bytes=$(tr -d '\000' <$ro | wc -c)"
rm -f $rw $ro $script /tmp/kvmini-disk-script.sh
exit $rc
