#!/usr/bin/env bash
# The "full OS" guest: a Debian 12 system from Debian's own packages
# (systemd, udev, Debian's cloud kernel and its initramfs-tools initramfs;
# nothing built for kvmini; dbus too, without which systemd-logind does not
# run and the ACPI power button powers nothing off), as an ext4 disk image, with that kernel and
# initrd beside it. Boot it with:
#   kvmini run --kernel DIR/vmlinuz --initrd DIR/initrd.img --cpus 2 --memory 1G \
#       --disk path=COPY-OF-DIR/rootfs.ext4 --cmdline "root=/dev/vda rw"
# (kvmini writes to the image: boot a copy, the cached one is shared.)
#
# What is in it, on top of mmdebstrap's minbase variant:
# - root has no password, and the serial console (ttyS0) logs root in;
# - kvmini-test.service (resources/debian/kvmini-test) prints a marker line,
#   `systemctl is-system-running` and facts the tests check, and does what
#   `kvmini.test=ACTION` on the kernel command line asks (poweroff, reboot,
#   nothing);
# - no documentation, man pages or locales; apt lists and caches removed.
#
# stdout: the directory holding rootfs.ext4, vmlinuz, initrd.img (cached by
# content hash under the kvmini cache; the key includes the kernel package's
# version, so a Debian kernel update makes a new image).
# Cold build: ~1 minute on a quiet host, ~4 with other builds running
# (it downloads the packages each time; see docs/testing.md).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
HERE=$RESOURCES_DIR/debian

SIZE=${KVMINI_DEBIAN_SIZE:-1G}
SUITE=bookworm
MIRROR=${KVMINI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${KVMINI_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}

apt_install mmdebstrap e2fsprogs
# The kernel package linux-image-cloud-amd64 points to today: part of the key.
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [[ -z $kpkg ]]; then
    log "apt knows no linux-image-cloud-amd64; running apt-get update"
    apt_update
    kpkg=$(apt-cache depends linux-image-cloud-amd64 |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
fi
[[ -n $kpkg ]] || die "cannot resolve linux-image-cloud-amd64 (check the apt sources: Debian 12 expected)"
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2; exit }')

cache=$(kvmini_cache_root)/debian
hash=$(content_hash "$0" "$HERE/customize.sh" "$HERE/kvmini-test" "$HERE/kvmini-test.service" \
    "str:$SUITE $kpkg $kver $SIZE mmdebstrap $(pkg_version mmdebstrap) e2fsprogs $(pkg_version e2fsprogs)")
out=$cache/$hash
if [[ -f $out/.done ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

((EUID == 0)) || die "building the Debian image needs root (mmdebstrap installs packages into a directory tree owned by root); run it as root or with sudo"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-debian.XXXXXX")
# An interrupted mmdebstrap may leave its mounts (proc, sys, dev/pts) in the
# tree: never delete through them.
on_exit 'awk -v t="$tmp/" "index(\$2, t) == 1 { print \$2 }" /proc/mounts | sort -r | xargs -r umount -l; rm -rf --one-file-system "$tmp"'
start=$SECONDS
log "building a Debian 12 tree with $kpkg ($kver) in $tmp (mmdebstrap, minbase; 1-4 minutes)"
# Leave out what a test VM never reads: documentation, man pages, locales.
excludes=()
for p in /usr/share/doc/\* /usr/share/man/\* /usr/share/info/\* /usr/share/locale/\* \
    /usr/share/lintian/\* /usr/share/linda/\*; do
    excludes+=(--dpkgopt="path-exclude=$p")
done
mkdir -p "$cache"
run_logged "$cache/$hash.log" mmdebstrap \
    mmdebstrap --variant=minbase --mode=root --format=directory \
    --include=systemd-sysv,udev,kmod,linux-image-cloud-amd64,initramfs-tools,dbus \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='Acquire::Retries "5"' \
    --aptopt='APT::Install-Recommends "false"' \
    "${excludes[@]}" \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="$HERE/customize.sh" \
    "$SUITE" "$tmp/root" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY $SUITE-security main"

vmlinuz=$(echo "$tmp"/root/boot/vmlinuz-*)
initrd=$(echo "$tmp"/root/boot/initrd.img-*)
[[ -f $vmlinuz && -f $initrd ]] ||
    die "the tree has no /boot/vmlinuz-* and /boot/initrd.img-* (did the kernel's postinst run update-initramfs? see $cache/$hash.log)"
mkdir -p "$tmp/out"
cp "$vmlinuz" "$tmp/out/vmlinuz"
cp "$initrd" "$tmp/out/initrd.img"
log "tree: $(du -sh --exclude=proc --exclude=sys "$tmp/root" | cut -f1); making a $SIZE ext4 image (mke2fs -d)"
truncate -s "$SIZE" "$tmp/out/rootfs.ext4"
mke2fs -q -F -t ext4 -L debian-root -d "$tmp/root" "$tmp/out/rootfs.ext4" >&2 ||
    die "mke2fs -d failed (needs e2fsprogs >= 1.43)"
touch "$tmp/out/.done"
mkdir -p "$cache"
rm -rf "$out"
mv "$tmp/out" "$out"
log "Debian image ready in $((SECONDS - start))s: $out"
echo "$out"
