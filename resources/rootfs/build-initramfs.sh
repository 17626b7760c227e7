#!/usr/bin/env bash
# Build the guest initramfs: gzip'd newc cpio of busybox-static + our /init.
# stdout: path of initramfs.cpio.gz (cached by content hash).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/rootfs/tree.sh"

apt_install busybox-static cpio
cache=$(kvmini_cache_root)/initramfs
hash=$(content_hash "$0" "$RESOURCES_DIR/rootfs/tree.sh" "$RESOURCES_DIR/rootfs/init" "$RESOURCES_DIR/rootfs/dhcp" \
    "$RESOURCES_DIR/rootfs/shares" \
    "str:busybox-static $(pkg_version busybox-static)")
out=$cache/$hash/initramfs.cpio.gz
if [[ -f $out ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-initramfs.XXXXXX")
on_exit 'rm -rf "$tmp"'
log "assembling root tree"
make_rootfs_tree "$tmp/root"
log "packing cpio"
# -R 0:0: everything owned by root without needing root (or fakeroot) here.
(cd "$tmp/root" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    gzip -9n >"$tmp/initramfs.cpio.gz"
mkdir -p "$cache/$hash"
mv "$tmp/initramfs.cpio.gz" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
log "initramfs ready: $out ($(du -h "$out" | cut -f1))"
echo "$out"
