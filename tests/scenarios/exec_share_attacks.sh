# --share --share-via image against a hostile guest (issue 13; the live
# share has its own in exec_share_live). Three runs on one share:
# 1. plant symlinks: at the old predictable temporary names, a directory
#    replaced by a symlink to outside, links to /, .. and the share's parent;
# 2. write through what was planted, and replace it;
# 3. send a hand-made archive entry named 1/upper/../../.. on the share port
#    before the init's own archive (busybox tar would strip the ../).
# The host must carry symlinks back as symlinks, never follow them, refuse
# run 3's archive whole, and leave every file outside the share unchanged
# (hash of a canary tree before and after).
a=/tmp/attack
mkdir -p $a/share/d $a/canary/.ssh
echo "ssh-ed25519 AAAA host-key" >$a/canary/.ssh/authorized_keys
echo victim >$a/victim
echo inside >$a/share/d/file
canary_hash() {
    (cd $a && find canary victim | sort | xargs stat -c '%n %a %F %s' &&
        find canary victim -type f | sort | xargs sha256sum) | sha256sum | cut -d' ' -f1
}
before=$(canary_hash)
run() {
    "$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
        --share-via image --share $a/share:/mnt/s -w /mnt/s -- sh -c "$1"
}
run 'i=1; while [ $i -le 300 ]; do ln -s /tmp/attack/victim .kvmini-copy.$i; i=$((i + 1)); done
    rm -r d && ln -s /tmp/attack/canary/.ssh d; ln -s / root; ln -s .. up; ln -s /tmp/attack esc
    ln -s /tmp/attack/canary .kvmini-staging-0'
echo "plant-rc=$?"
echo "host-d=$(readlink $a/share/d) host-copy=$(readlink $a/share/.kvmini-copy.300)"
run 'echo pwned >.kvmini-copy.7; rm .kvmini-copy.8 && echo pwned >.kvmini-copy.8
    rm d && mkdir d && echo pwned >d/authorized_keys; echo pwned >esc/victim
    rm up && mkdir up && echo pwned >up/victim; rm root; rm -r .kvmini-staging-0'
echo "write-rc=$?"
echo "host-written=$(cat $a/share/.kvmini-copy.8) $(stat -c %F $a/share/d) $(cat $a/share/up/victim)"
run 'hdr() { # NAME SIZE: a ustar header for a regular file, by hand
        f=/tmp/hdr
        { printf "%s" "$1"; head -c $((100 - ${#1})) /dev/zero
          printf "%07o\0%07o\0%07o\0%011o\0%011o\0        0" 420 0 0 "$2" 0
          head -c 100 /dev/zero; printf ustar; head -c 1 /dev/zero; printf 00
          head -c 247 /dev/zero; } >$f
        sum=$(od -An -v -tu1 $f | awk "{for (i = 1; i <= NF; i++) s += \$i} END {print s}")
        printf "%06o\0 " "$sum" | dd of=$f bs=1 seek=148 conv=notrunc 2>/dev/null
        cat $f
    }
    { hdr 1/upper/../../../../tmp/attack/canary/evil 5; printf "evil\n"; head -c 1531 /dev/zero; } >/dev/hvc3
    echo pwned >not-copied-back'
echo "raw-rc=$?"
after=$(canary_hash)
[ -n "$before" ] && [ "$before" = "$after" ] && echo "canary=unchanged" || echo "canary=CHANGED $before $after"
echo "host-raw=$(ls $a/share/not-copied-back 2>&1 | grep -c 'No such file')"
echo "host-outside=$(ls -a $a | tr '\n' ' ')"
