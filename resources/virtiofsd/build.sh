#!/usr/bin/env bash
# Provide virtiofsd, the virtio-fs project's vhost-user file server (Rust,
# published on crates.io), for `--fs` and the rig's virtio-fs scenarios.
# Debian 12 has no package of it: it is built with cargo from crates.io at
# a pinned version, with Debian's libseccomp and libcap-ng headers.
#
# stdout: the path of the virtiofsd binary.
# KVMINI_VIRTIOFSD=PATH names one to use instead. Otherwise the build is cached
# under $(kvmini_cache_root)/virtiofsd/<hash>, hash = sha256 of (this script
# + the pinned version); a second run only prints the path.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

VERSION=1.14.0

if [[ -n ${KVMINI_VIRTIOFSD:-} ]]; then
    [[ -x $KVMINI_VIRTIOFSD ]] || die "KVMINI_VIRTIOFSD=$KVMINI_VIRTIOFSD is not an executable"
    echo "$KVMINI_VIRTIOFSD"
    exit 0
fi
cache=$(kvmini_cache_root)/virtiofsd
hash=$(content_hash "$0" "str:virtiofsd $VERSION")
out=$cache/$hash/bin/virtiofsd
if [[ -x $out ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

apt_install libseccomp-dev libcap-ng-dev pkg-config
command -v cargo >/dev/null ||
    die "cargo is needed to build virtiofsd $VERSION (install Rust with rustup, or put a virtiofsd on PATH in KVMINI_VIRTIOFSD)"
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/build.XXXXXX")
on_exit 'rm -rf "$tmp"'
log "building virtiofsd $VERSION from crates.io (takes a few minutes, once)"
# --locked: the dependency versions virtiofsd was released with.
run_logged "$tmp/build.log" "cargo install virtiofsd $VERSION" \
    cargo install --locked --quiet --version "$VERSION" --root "$tmp/root" \
    --target-dir "$tmp/target" virtiofsd
mkdir -p "$cache/$hash"
rm -rf "$cache/$hash/bin"
mv "$tmp/root/bin" "$cache/$hash/bin"
log "virtiofsd ready: $out"
echo "$out"
