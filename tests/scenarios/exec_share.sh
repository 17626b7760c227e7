# --share --share-via image (the copy kept on KVM hosts too; exec_share_live
# has the live one): the guest reads a host file and changes the share as a process
# with write access could: creates files (text and binary, in new
# directories), changes, deletes, renames (a file and a directory), chmods,
# replaces a directory by a file; all of it reaches the host. A read-only
# share is read by the guest, refuses writes (the kernel says it is
# read-only) and stays unchanged.
rw=/tmp/share-rw
# Fresh every run (in host mode /tmp outlives the scenario).
rm -rf $rw /tmp/share-ro
mkdir -p $rw/olddir/sub $rw/gone/deep $rw/dirfile /tmp/share-ro
echo "from-the-host" >$rw/input.txt
echo bye >$rw/del.txt
echo moved >$rw/old-name.txt
echo y >$rw/olddir/sub/y
echo z >$rw/gone/deep/z
echo x >$rw/dirfile/x
echo "echo hi" >$rw/script.sh && chmod 644 $rw/script.sh
echo "read-only-content" >/tmp/share-ro/keep.txt
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --share-via image --share $rw:/mnt/rw --share /tmp/share-ro:/mnt/ro:ro -w /mnt/rw -- \
    sh -c 'echo "guest read: $(cat input.txt)"; mkdir -p out/deeper && echo written-by-guest > out/deeper/result.txt &&
        printf "\000\001\377\r\n" > out/bin; echo changed > input.txt;
        rm del.txt; mv old-name.txt new-name.txt; mv olddir newdir; chmod 755 script.sh;
        rm -r gone; rm -r dirfile && echo now-a-file > dirfile;
        echo "ro-read=$(cat /mnt/ro/keep.txt)";
        if touch /mnt/ro/new 2>/tmp/ro.err; then echo ro-writable; else echo "ro-refused=$(cat /tmp/ro.err)"; fi'
echo "exec-rc=$?"
echo "host-result=$(cat $rw/out/deeper/result.txt)"
echo "host-input=$(cat $rw/input.txt)"
echo "host-bin=$(od -An -tx1 $rw/out/bin | tr -d ' ')"
echo "host-ro=$(ls /tmp/share-ro | tr '\n' ' ')"
echo "host-tree=$(cd $rw && find . | sort | tr '\n' ' ')"
echo "host-moved=$(cat $rw/new-name.txt) $(cat $rw/newdir/sub/y) $(cat $rw/dirfile)"
echo "host-mode=$(stat -c %a $rw/script.sh)"
echo "host-ro-content=$(cat /tmp/share-ro/keep.txt)"
