# Source me. make_rootfs_tree DIR: populate DIR with the guest root filesystem
# shared by the initramfs and the ext4 image: Debian's static busybox with a
# symlink per applet, our /init, /sbin/kvmini-dhcp (user-mode NICs) and
# /sbin/kvmini-shares (--fs).
make_rootfs_tree() {
    local dir=$1 applet
    mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt}
    cp /bin/busybox "$dir/bin/busybox"
    # Symlinks rather than `busybox --install` at boot: works on a read-only
    # root and keeps boot short.
    while read -r applet; do
        [[ -e $dir/$applet ]] || ln -s /bin/busybox "$dir/$applet"
    done < <(/bin/busybox --list-full)
    install -m 0755 "$RESOURCES_DIR/rootfs/init" "$dir/init"
    ln -sf /init "$dir/sbin/init"
    install -m 0755 "$RESOURCES_DIR/rootfs/dhcp" "$dir/sbin/kvmini-dhcp"
    install -m 0755 "$RESOURCES_DIR/rootfs/shares" "$dir/sbin/kvmini-shares"
    echo "root:x:0:0:root:/root:/bin/sh" >"$dir/etc/passwd"
    echo "root:x:0:" >"$dir/etc/group"
    echo kvmini-guest >"$dir/etc/hostname"
}
