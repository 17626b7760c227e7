# --share: the guest reads a host file, writes new files (text and binary,
# in a new directory) that appear on the host afterwards; a read-only share
# is read by the guest, refuses writes (the kernel says it is read-only) and
# stays unchanged.
mkdir -p /tmp/share-rw /tmp/share-ro
echo "from-the-host" >/tmp/share-rw/input.txt
echo "read-only-content" >/tmp/share-ro/keep.txt
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --share /tmp/share-rw:/mnt/rw --share /tmp/share-ro:/mnt/ro:ro -w /mnt/rw -- \
    sh -c 'echo "guest read: $(cat input.txt)"; mkdir -p out/deeper && echo written-by-guest > out/deeper/result.txt &&
        printf "\000\001\377\r\n" > out/bin; echo changed > input.txt;
        echo "ro-read=$(cat /mnt/ro/keep.txt)";
        if touch /mnt/ro/new 2>/tmp/ro.err; then echo ro-writable; else echo "ro-refused=$(cat /tmp/ro.err)"; fi'
echo "exec-rc=$?"
echo "host-result=$(cat /tmp/share-rw/out/deeper/result.txt)"
echo "host-input=$(cat /tmp/share-rw/input.txt)"
echo "host-bin=$(od -An -tx1 /tmp/share-rw/out/bin | tr -d ' ')"
echo "host-ro=$(ls /tmp/share-ro | tr '\n' ' ')"
echo "host-ro-content=$(cat /tmp/share-ro/keep.txt)"
