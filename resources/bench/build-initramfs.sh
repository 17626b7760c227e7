#!/usr/bin/env bash
# Build the benchmark guest's initramfs: the normal guest tree (busybox +
# resources/rootfs/init) plus fio and iperf3 from Debian, with exactly the
# shared libraries they need (resolved from the ELF NEEDED entries, taken
# from the same Debian packages, never from this host's /lib), and
# resources/bench/bench-fio as /usr/bin/bench-fio.
#
# Uncompressed cpio on purpose: the guest kernel would gunzip ~20 MB under
# emulation in the rig on every boot; both VMMs load the same file.
#
# stdout: path of bench-initramfs.cpio (cached by content hash: this script,
# bench-fio, tree.sh, init, and the Debian versions of busybox-static and every package
# fetched).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/rootfs/tree.sh"

TOOLS=(fio iperf3)
# Executables copied into the guest's /usr/bin (from the packages above).
BINARIES=(usr/bin/fio usr/bin/iperf3)
# fio as the block benchmark runs it (see the script).
BENCH_FIO=$RESOURCES_DIR/bench/bench-fio

apt_install busybox-static cpio binutils
apt_lists_ready() { apt-cache show --no-all-versions "${TOOLS[@]}" >/dev/null 2>&1; }
if ! apt_lists_ready; then
    log "apt does not know ${TOOLS[*]}; running apt-get update"
    apt_update
    apt_lists_ready || die "apt-cache knows no ${TOOLS[*]}: check the apt sources (Debian main)"
fi

# The tools plus every library package in their dependency closure (scripts,
# Perl and Python are not needed: only ELF files are copied, see below).
mapfile -t pkgs < <(
    {
        printf '%s\n' "${TOOLS[@]}"
        apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
            --no-breaks --no-replaces --no-enhances --no-pre-depends "${TOOLS[@]}" |
            grep -E '^(lib|zlib)' | grep -v -E -- '-perl$|python|^libpam|^libdebian'
    } | LC_ALL=C sort -u
)
# name=version of each, for the cache key (what apt would download now).
versions=$(apt-cache show --no-all-versions "${pkgs[@]}" |
    awk '/^Package:/ { p = $2 } /^Version:/ { print p "=" $2 }' | LC_ALL=C sort)

cache=$(kvmini_cache_root)/bench-initramfs
hash=$(content_hash "$0" "$BENCH_FIO" "$RESOURCES_DIR/rootfs/tree.sh" "$RESOURCES_DIR/rootfs/init" "$RESOURCES_DIR/rootfs/dhcp" "$RESOURCES_DIR/rootfs/shares" \
    "str:busybox-static $(pkg_version busybox-static)" "str:$versions")
out=$cache/$hash/bench-initramfs.cpio
if [[ -f $out ]]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-bench-initramfs.XXXXXX")
on_exit 'rm -rf "$tmp"'
log "downloading ${#pkgs[@]} Debian packages (${TOOLS[*]} and their libraries; once, then cached)"
mkdir -p "$tmp/debs" "$tmp/x"
# shellcheck disable=SC2086 # one word per package=version
(cd "$tmp/debs" && apt-get download -q -oAcquire::Retries=5 $versions >"$tmp/download.log" 2>&1) ||
    { tail -n 20 "$tmp/download.log" >&2; die "apt-get download failed (see above)"; }
log "unpacking"
for deb in "$tmp"/debs/*.deb; do
    dpkg-deb -x "$deb" "$tmp/x"
done

# resolve SONAME [ELF]: the file that provides SONAME in the unpacked
# packages: ELF's RUNPATH/RPATH first (librados finds libceph-common in
# /usr/lib/x86_64-linux-gnu/ceph that way), then the multiarch dirs. In the
# guest every library lands in /lib/x86_64-linux-gnu, which the loader
# searches after any RUNPATH.
libdirs=("$tmp/x/lib/x86_64-linux-gnu" "$tmp/x/usr/lib/x86_64-linux-gnu" "$tmp/x/lib64")
resolve() {
    local d dirs=()
    if [[ -n ${2:-} ]]; then
        while IFS=: read -r -a rp; do
            for d in "${rp[@]}"; do
                [[ $d == /* ]] && dirs+=("$tmp/x$d")
            done
        done < <(readelf -d "$2" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p')
    fi
    for d in "${dirs[@]}" "${libdirs[@]}"; do
        [[ -e $d/$1 ]] && { readlink -f "$d/$1"; return 0; }
    done
    return 1
}
needed() {
    readelf -d "$1" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p'
}

log "assembling root tree"
root=$tmp/root
make_rootfs_tree "$root"
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/lib64" "$root/usr/bin"
# Breadth-first over NEEDED, starting from the tools.
declare -A seen=()
queue=()
for b in "${BINARIES[@]}"; do
    [[ -f $tmp/x/$b ]] || die "$b missing from the downloaded packages"
    install -m 0755 "$tmp/x/$b" "$root/$b"
    queue+=("$tmp/x/$b")
done
while ((${#queue[@]})); do
    elf=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r so; do
        [[ -n $so && -z ${seen[$so]:-} ]] || continue
        seen[$so]=1
        file=$(resolve "$so" "$elf") ||
            die "no package in the closure of ${TOOLS[*]} provides $so (needed by $(basename "$elf"))"
        cp "$file" "$root/lib/x86_64-linux-gnu/$so"
        queue+=("$file")
    done < <(needed "$elf")
done
install -m 0755 "$BENCH_FIO" "$root/usr/bin/bench-fio"
ldso=$(resolve ld-linux-x86-64.so.2) || die "ld-linux-x86-64.so.2 missing (libc6 not downloaded?)"
cp "$ldso" "$root/lib64/ld-linux-x86-64.so.2"
log "libraries: ${#seen[@]} ($(du -sh "$root/lib/x86_64-linux-gnu" | cut -f1))"

log "packing cpio (uncompressed)"
(cd "$root" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/bench-initramfs.cpio"
mkdir -p "$cache/$hash"
mv "$tmp/bench-initramfs.cpio" "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
log "bench initramfs ready: $out ($(du -h "$out" | cut -f1))"
echo "$out"
