#!/usr/bin/env bash
# Build kvmini's guest kernel (vmlinux + bzImage) from Debian's
# linux-source-6.12 with our config fragment on top of tinyconfig.
#
# stdout: the cache directory that holds vmlinux, bzImage and config.
# Cached under $(kvmini_cache_root)/kernel/<hash>, hash = sha256 of
# (kvmini.config + this script + linux-source version); a second run only
# prints the path.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

HERE="$RESOURCES_DIR/kernel"
FRAGMENT="$HERE/kvmini.config"
SRC_PKG=linux-source-6.12

# Options that must survive the merge (Kconfig silently drops options whose
# dependencies are missing, so check the final .config).
REQUIRED_Y=(64BIT SMP HYPERVISOR_GUEST PARAVIRT KVM_GUEST PVH X86_LOCAL_APIC
    X86_IO_APIC X86_MPPARSE PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
    VIRTIO_CONSOLE AIO SYSVIPC IP_PNP OVERLAY_FS VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET
    FUSE_FS VIRTIO_FS
    NET INET UNIX PACKET EXT4_FS DEVTMPFS DEVTMPFS_MOUNT BLK_DEV_INITRD RD_GZIP
    PROC_FS SYSFS TMPFS BINFMT_ELF BINFMT_SCRIPT FUTEX EPOLL POSIX_TIMERS
    MULTIUSER UNWINDER_GUESS DEBUG_INFO_NONE)
REQUIRED_OFF=(PCI ACPI MODULES SERIO_I8042 RD_XZ RD_BZIP2 RD_LZMA RD_LZO RD_LZ4 RD_ZSTD)

check_config() {
    local cfg=$1 opt bad=0
    for opt in "${REQUIRED_Y[@]}"; do
        grep -qx "CONFIG_$opt=y" "$cfg" || { log "missing: CONFIG_$opt=y"; bad=1; }
    done
    for opt in "${REQUIRED_OFF[@]}"; do
        grep -q "^CONFIG_$opt=" "$cfg" && { log "should be off: CONFIG_$opt"; bad=1; }
    done
    ((bad == 0)) || die "kernel config check failed ($cfg); fix $FRAGMENT"
}

# Fast path first (every `kvmini run` without --kernel comes here): a cached
# kernel needs only the source package's version, not the build tools.
cache=$(kvmini_cache_root)/kernel
cached_kernel() {
    version=$(pkg_version "$SRC_PKG")
    hash=$(content_hash "$FRAGMENT" "$0" "str:$SRC_PKG $version")
    out=$cache/$hash
    [[ -n $version && -f $out/vmlinux && -f $out/bzImage ]]
}
if cached_kernel; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

apt_install "$SRC_PKG" build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio
tarball=/usr/src/$SRC_PKG.tar.xz
[[ -f $tarball ]] || die "$tarball missing; reinstall $SRC_PKG"
if cached_kernel; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
# Serialize concurrent builds of the same kernel (e.g. parallel test runs).
exec 9>"$cache/.lock"
flock 9
if [[ -f $out/vmlinux && -f $out/bzImage ]]; then
    echo "$out"
    exit 0
fi

# Unpacked source is shared by all configs of one source version.
src=$cache/src-$version/$SRC_PKG
if [[ ! -f $src/.unpacked ]]; then
    log "stage 1/4: unpacking $tarball ($SRC_PKG $version)"
    rm -rf "$cache/src-$version"
    mkdir -p "$cache/src-$version"
    tar -xJf "$tarball" -C "$cache/src-$version"
    touch "$src/.unpacked"
else
    log "stage 1/4: source already unpacked in $src"
fi

tmp=$cache/$hash.tmp
build=$tmp/build
rm -rf "$tmp"
mkdir -p "$build"
log "stage 2/4: configuring (tinyconfig + $(basename "$FRAGMENT"))"
make -s -C "$src" O="$build" ARCH=x86_64 tinyconfig >"$tmp/config.log" 2>&1 ||
    { tail -n 20 "$tmp/config.log" >&2; die "make tinyconfig failed"; }
(cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m .config "$FRAGMENT") \
    >>"$tmp/config.log" 2>&1 || { tail -n 20 "$tmp/config.log" >&2; die "merge_config.sh failed"; }
make -s -C "$src" O="$build" ARCH=x86_64 olddefconfig >>"$tmp/config.log" 2>&1 ||
    { tail -n 20 "$tmp/config.log" >&2; die "make olddefconfig failed"; }
check_config "$build/.config"

log "stage 3/4: building vmlinux and bzImage with $(nproc) jobs (log: $tmp/build.log; ~10 min on 2 cores)"
run_logged "$tmp/build.log" "kernel build" \
    make -C "$src" O="$build" ARCH=x86_64 -j"$(nproc)" vmlinux bzImage

log "stage 4/4: collecting artefacts"
cp "$build/vmlinux" "$build/arch/x86/boot/bzImage" "$tmp/"
cp "$build/.config" "$tmp/config"
# The object tree is big and never reused (a new hash means a new tree).
rm -rf "$build"
rm -rf "$out"
mv "$tmp" "$out"
log "kernel ready: $out ($(du -h "$out/bzImage" | cut -f1) bzImage)"
echo "$out"
