#!/usr/bin/env bash
# Builds the emulated machine (L1) for `kvmini run --accel emulated`, which
# runs kvmini itself inside QEMU TCG with an emulated SVM CPU and nested KVM.
#
#   emulated.sh --out DIR --kvmini BIN --kernel PATH [--initrd PATH] [--user-net]
#
# Installs what is missing on first use (qemu-system-x86, busybox-static,
# cpio; the L1 kernel via l1-kernel.sh; all cached), then writes DIR/l1.cpio:
# busybox, the KVM modules, BIN with the shared libraries it needs, the guest
# kernel/initrd and emulated-init as /init. kvmini has already put the inner
# command line in DIR/argv/ (one file per argument, in name order) and
# optionally DIR/rust_log; they are copied to /kvmini/ in L1.
# --user-net: the guest has `--net user` NICs; L1 gets virtio-net (QEMU
# gives it a NIC on a passt of the outer kvmini), passt and our DHCP script
# (resources/rootfs/dhcp), so that the inner kvmini can run its own passt.
# stdout: the L1 kernel (vmlinuz) path, then the L1 initramfs path.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
RIG="$RESOURCES_DIR/rig"

out="" kvmini="" kernel="" initrd="" user_net=0
while (($#)); do
    case $1 in
    --out) out=$2; shift 2 ;;
    --kvmini) kvmini=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --user-net) user_net=1; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[[ -n $out && -d $out/argv ]] || die "--out must name a directory with an argv/ subdirectory"
[[ -n $kvmini && -x $kvmini ]] || die "--kvmini must name the kvmini executable (got '$kvmini')"
[[ -n $kernel && -f $kernel ]] || die "--kernel must name the guest kernel (got '$kernel')"
[[ -z $initrd || -f $initrd ]] || die "--initrd '$initrd' is not a file"

apt_install qemu-system-x86 busybox-static cpio
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
# l1-kernel.sh says "cached: ..." every time; only first-use progress matters.
l1=$("$RIG/l1-kernel.sh" 2> >(grep -v '\] cached: ' >&2 || true))
vmlinuz=$(echo "$l1"/boot/vmlinuz-*)
moddir=$(echo "$l1"/lib/modules/*/kernel)
[[ -f $vmlinuz && -d $moddir ]] || die "unexpected layout of the L1 kernel package in $l1"

root=$out/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,lib/modules,kvmini/argv,guest}
cp /bin/busybox "$root/bin/"
while read -r applet; do
    [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <(/bin/busybox --list-full)
# KVM, and virtio-blk over PCI for the user's --disk images (QEMU passes
# each one to L1 as a virtio disk, /dev/vda, /dev/vdb, ... in order), and
# virtio-console for `kvmini exec`'s stdout/stderr ports.
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd \
    drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev \
    drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci drivers/block/virtio_blk \
    drivers/char/virtio_console; do
    cp "$moddir/$m.ko" "$root/lib/modules/" || die "module $m.ko missing in $l1"
done
install -m 0755 "$RIG/emulated-init" "$root/init"
if ((user_net)); then
    command -v passt >/dev/null ||
        die "passt is not installed (sudo apt-get install passt): --net user needs it inside the emulated machine too"
    mkdir -p "$root/lib/modules/net"
    # In load order: virtio_net needs net_failover, which needs failover.
    for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
        cp "$moddir/$m.ko" "$root/lib/modules/net/" || die "module $m.ko missing in $l1"
    done
    # passt runs passt.avx2 where the CPU has AVX2 (and says so when it
    # is missing); /etc for the resolv.conf our DHCP script writes (passt
    # hands the guest the name servers it finds there).
    copy_with_libs "$root" "$(command -v passt)"
    [[ ! -x /usr/bin/passt.avx2 ]] || copy_with_libs "$root" /usr/bin/passt.avx2
    mkdir -p "$root/etc"
    install -m 0755 "$RESOURCES_DIR/rootfs/dhcp" "$root/sbin/kvmini-dhcp"
fi

# kvmini and, unless it is static, its shared libraries and the loader, at
# the same paths as here (the loader path is baked into the binary).
copy_with_libs "$root" "$kvmini"
mv "$root$kvmini" "$root/kvmini/kvmini"
cp "$out"/argv/* "$root/kvmini/argv/" 2>/dev/null || die "no arguments in $out/argv"
[[ ! -f $out/rust_log ]] || cp "$out/rust_log" "$root/kvmini/rust_log"
cp "$kernel" "$root/guest/kernel"
[[ -z $initrd ]] || cp "$initrd" "$root/guest/initrd"

# Uncompressed: L1 would decompress it under emulation, slower than copying.
(cd "$root" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out/l1.cpio"
rm -rf "$root"
echo "$vmlinuz"
echo "$out/l1.cpio"
