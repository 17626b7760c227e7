#!/usr/bin/env bash
# Fetch the rig's L1 kernel: Debian's linux-image-*-cloud-amd64 (the version
# linux-image-cloud-amd64 depends on), unpacked into the cache without
# installing it. KVM, TUN, veth and bridge are uncompressed modules there.
# stdout: the unpacked package root (has boot/vmlinuz-* and lib/modules/*).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [[ -z $pkg ]]; then
    apt_install apt-utils >/dev/null 2>&1 || true
    log "apt knows no linux-image-cloud-amd64; running apt-get update"
    apt_update
    pkg=$(apt-cache depends linux-image-cloud-amd64 |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[[ -n $pkg ]] || die "cannot resolve linux-image-cloud-amd64 (check apt sources)"

out=$(kvmini_cache_root)/rig/$pkg
if [[ -f $out/.done ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi
mkdir -p "$out.tmp"
log "downloading $pkg"
(cd "$out.tmp" && apt-get download -q -oAcquire::Retries=5 "$pkg" >&2) || die "apt-get download $pkg failed"
log "unpacking $pkg"
dpkg-deb -x "$out.tmp"/"$pkg"_*.deb "$out.tmp/root"
rm -rf "$out"
mv "$out.tmp/root" "$out"
rm -rf "$out.tmp"
touch "$out/.done"
echo "$out"
