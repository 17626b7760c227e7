#!/usr/bin/env bash
# Build an ext4 root filesystem image with the same tree as the initramfs
# (for virtio-blk tests). Uses `mkfs.ext4 -d`: no root, no loop mounts.
# stdout: path of rootfs.ext4 (cached by content hash).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/rootfs/tree.sh"

SIZE=${KVMINI_EXT4_SIZE:-32M}
apt_install busybox-static e2fsprogs
cache=$(kvmini_cache_root)/ext4
hash=$(content_hash "$0" "$RESOURCES_DIR/rootfs/tree.sh" "$RESOURCES_DIR/rootfs/init" "$RESOURCES_DIR/rootfs/dhcp" "$RESOURCES_DIR/rootfs/shares" \
    "str:busybox-static $(pkg_version busybox-static) e2fsprogs $(pkg_version e2fsprogs) $SIZE")
out=$cache/$hash/rootfs.ext4
if [[ -f $out ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-ext4.XXXXXX")
on_exit 'rm -rf "$tmp"'
log "assembling root tree"
make_rootfs_tree "$tmp/root"
log "creating $SIZE ext4 image"
truncate -s "$SIZE" "$tmp/rootfs.ext4"
# root_owner: the root directory belongs to root even when we are not root.
mkfs.ext4 -q -F -L kvmini-root -E root_owner=0:0 -d "$tmp/root" "$tmp/rootfs.ext4" >&2 ||
    die "mkfs.ext4 -d failed (needs e2fsprogs >= 1.43)"
mkdir -p "$cache/$hash"
mv "$tmp/rootfs.ext4" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
log "ext4 image ready: $out"
echo "$out"
