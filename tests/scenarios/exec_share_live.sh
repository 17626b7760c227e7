# exec --share on KVM is live (virtio-fs; --share-via auto chose it, and
# kvmini started virtiofsd itself, in its namespace sandbox): the command
# deletes and creates, and L1 has the result; a read-only share refuses
# writes; a --timeout that fires after a write leaves the write on L1.
# The guest cannot reach L1's files outside the share: not through `..`,
# nor a symlink L1 put in the share pointing out, nor absolute symlinks
# or hard links it makes itself; what it makes belongs to the share's
# owner (kvmini runs as root here), and device nodes are refused.
# Compared by tests/e2e.rs.
# kvmini-scenario-timeout: 240
if [ -z "$VIRTIOFSD" ] || [ ! -x "$VIRTIOFSD" ]; then
    echo "NOT RUN: no virtiofsd in L1 (VIRTIOFSD='$VIRTIOFSD')"
    exit 1
fi
export KVMINI_VIRTIOFSD="$VIRTIOFSD"
# virtiofsd's namespace sandbox pivots into the share, which the kernel
# refuses while the root is L1's initramfs (rootfs): so kvmini runs in a
# mount namespace whose / is a bind mount of the old one (as net_user).
in_mount_ns() {
    unshare -m sh -c 'mkdir -p /tmp/kvmini-root && mount -o rbind / /tmp/kvmini-root &&
        cd /tmp/kvmini-root && mount -o move . / && exec chroot . "$@"' sh "$@"
}
tmp=$(mktemp -d)
share=$tmp/share outside=$tmp/outside
mkdir "$share" "$outside"
echo canary >"$outside/canary"
echo old >"$share/old"
ln -s "$outside/canary" "$share/host-abs"
ln -s ../outside "$share/host-up"
# A user's tree (kvmini runs as root here): what the guest makes must be
# that user's, and it must not make device nodes.
chown -R 1000:1000 "$share"
before=$(cat /etc/hostname 2>/dev/null; sha256sum "$outside/canary" | cut -c1-64)
exec_vm() {
    in_mount_ns "$KVMINI" exec --kernel "$GUEST_VMLINUX" --initrd "$GUEST_INITRD" \
        --memory 128M "$@"
}
exec_vm --share "$share:/w" -- sh -c '
    rm /w/old && echo from-exec >/w/new && echo changed=$?
    echo "guest-dotdot=$(cd /w/.. && pwd) $(ls /w/.. | grep -c canary)"
    echo "guest-host-abs=$(cat /w/host-abs 2>/dev/null || echo unreadable)"
    echo "guest-host-up=$(cat /w/host-up/canary 2>/dev/null || echo unreadable)"
    echo pwned >/w/host-abs 2>/dev/null; echo pwned >/w/host-up/canary 2>/dev/null
    ln -s /etc/hostname /w/guest-abs && echo pwned >>/w/guest-abs
    ln /w/new /w/hard && echo hard-inside=ok
    ln /etc/passwd /w/hard-out 2>/dev/null && echo hard-out=made || echo hard-out=refused
    mknod /w/null c 1 3 2>/dev/null && echo mknod=made || echo mknod=refused
    true'
echo "exec-rc=$?"
echo "host-new=$(cat "$share/new" 2>/dev/null) old=$([ -e "$share/old" ] && echo there || echo gone)"
echo "host-hard=$(cat "$share/hard" 2>/dev/null) links=$(stat -c %h "$share/new")"
echo "host-guest-abs=$(readlink "$share/guest-abs")"
echo "host-owner=$(stat -c %u:%g "$share/new") null=$([ -e "$share/null" ] && echo there || echo absent)"
after=$(cat /etc/hostname 2>/dev/null; sha256sum "$outside/canary" | cut -c1-64)
[ "$before" = "$after" ] && echo "host-outside=unchanged" || echo "host-outside=CHANGED"
echo "host-outside-files=$(ls "$outside" | tr '\n' ' ')"
echo "host-share-files=$(ls "$share" | tr '\n' ' ')"

exec_vm --share "$share:/r:ro" -- sh -c 'echo x >/r/nope; echo "ro-write-rc=$?"; cat /r/new'
echo "ro-exec-rc=$?"
echo "host-ro=$([ -e "$share/nope" ] && echo written || echo refused)"

exec_vm --share "$share:/w" --timeout 15s -- sh -c 'echo late >/w/late && echo wrote-late; sleep 600'
echo "timeout-rc=$?"
echo "host-late=$(cat "$share/late" 2>/dev/null)"

# The image share is still there when asked for.
exec_vm --share "$share:/w" --share-via image -- sh -c 'echo via-image >/w/img'
echo "image-rc=$? host-img=$(cat "$share/img" 2>/dev/null)"
rm -rf "$tmp"
