# --fs in the rig: a virtiofsd (resources/virtiofsd/build.sh, carried into
# L1) serves a directory; kvmini's guest mounts it by tag at boot (init,
# kvmini.fs=), reads a seeded file, and writes, renames and deletes in it.
# L1 sees each change while the VM still runs, and only then answers
# through the share itself (an `ack` file the guest waits for): the live
# behaviour, not a copy-back after the guest's exit. Hashes and names are
# compared by tests/e2e.rs. Then `kvmini exec --fs` with a second
# virtiofsd: the command deletes and writes, then is stopped by --timeout;
# its changes are on L1 all the same (nothing waits for a clean end).
# kvmini-scenario-timeout: 240
if [ -z "$VIRTIOFSD" ] || [ ! -x "$VIRTIOFSD" ]; then
    echo "NOT RUN: no virtiofsd in L1 (VIRTIOFSD='$VIRTIOFSD')"
    exit 1
fi
set -e
share=$(mktemp -d)
dd if=/dev/urandom of="$share/seed" bs=64k count=4 2>/dev/null
echo "host-seed-sha=$(sha256sum <"$share/seed" | cut -c1-64)"
echo old >"$share/old"
mkdir "$share/dir"
cat >"$share/g.sh" <<'GUEST'
dmesg -n 4
cd /mnt/work || exit 1
echo "guest-mounted=$(grep -c ' /mnt/work virtiofs ' /proc/mounts)"
echo "guest-seed-sha=$(sha256sum <seed | cut -c1-64)"
echo from-guest >new.tmp && mv new.tmp new && rm old && echo inner >dir/file && mv dir moved
echo "guest-changed=$?"
# The host answers only once it saw all of it.
n=0
until [ -e ack ] || [ $n -ge 1200 ]; do
    sleep 0.1
    n=$((n + 1))
done
echo "guest-saw-ack=$(cat ack 2>/dev/null)"
GUEST
# start_virtiofsd SOCKET: a virtiofsd serving the share there (its pid in
# $vfsd), once the socket is there. chroot sandbox: the namespace one
# needs pivot_root, which the kernel refuses while the root is L1's
# initramfs.
start_virtiofsd() {
    "$VIRTIOFSD" --socket-path "$1" --shared-dir "$share" --sandbox chroot \
        --cache auto --log-level error &
    vfsd=$!
    n=0
    until [ -S "$1" ] || [ $n -ge 100 ]; do
        sleep 0.1
        n=$((n + 1))
    done
}
sock=/tmp/fs_live.sock
start_virtiofsd "$sock"
set +e
"$KVMINI" run --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 256M \
    --fs "tag=work,socket=$sock,mount=/mnt/work" \
    --cmdline "quiet -- sh /mnt/work/g.sh" >"$share.console" 2>&1 &
vm=$!
# L1's view while the VM runs: wait for every change, then answer.
n=0
until [ -f "$share/new" ] && [ ! -e "$share/old" ] && [ -f "$share/moved/file" ] ||
    [ $n -ge 1200 ] || ! kill -0 $vm 2>/dev/null; do
    sleep 0.1
    n=$((n + 1))
done
if kill -0 $vm 2>/dev/null; then running=yes; else running=no; fi
seen="new=$(cat "$share/new" 2>/dev/null) old=$([ -e "$share/old" ] && echo there || echo gone)"
seen="$seen moved=$(cat "$share/moved/file" 2>/dev/null) tmp=$([ -e "$share/new.tmp" ] && echo there || echo gone)"
echo acked >"$share/ack"
wait $vm
rc=$?
cat "$share.console"
echo "host-while-running=$running $seen"
echo "kvmini-rc=$rc"
# virtiofsd serves one VM and exits when it goes.
n=0
while kill -0 $vfsd 2>/dev/null && [ $n -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
done
if kill -0 $vfsd 2>/dev/null; then
    echo "virtiofsd-rc=still-running"
    kill $vfsd
else
    wait $vfsd
    echo "virtiofsd-rc=$?"
fi

# exec: served by a new virtiofsd (each serves one VM).
sock2=/tmp/fs_live2.sock
start_virtiofsd "$sock2"
"$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" --memory 128M \
    --fs "tag=work,socket=$sock2,mount=/w" --timeout 15s \
    -- sh -c 'rm /w/new && echo from-exec >/w/exec-wrote && echo exec-wrote-it && sleep 600'
echo "exec-rc=$?"
echo "host-after-exec=$(cat "$share/exec-wrote" 2>/dev/null) new=$([ -e "$share/new" ] && echo there || echo gone)"
kill $vfsd 2>/dev/null
wait $vfsd 2>/dev/null
rm -rf "$share" "$share.console"
exit $rc
