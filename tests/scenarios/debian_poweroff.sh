# kvmini-scenario-timeout: 400
# Debian 12 (resources/debian: Debian's own cloud kernel, its
# initramfs-tools initrd, systemd) from its disk image, 2 vCPUs, 1 GiB, a
# NIC: it must find its CPUs, /dev/vda and the NIC through ACPI and reach
# multi-user. Its test unit writes a token to the disk, prints its clock
# (the scenario prints the host's beside it), prints the kernel's power-off
# and panic words from a user process (which must change nothing), and
# runs `systemctl poweroff`: kvmini must exit 0. Then the host reads the
# token from the image and e2fsck finds it clean.
# In its own network namespace (as the net scenarios): kvmini creates the
# TAP itself there, and nothing leaves it.
if [ -z "$KVMINI_IN_NETNS" ]; then
    export KVMINI_IN_NETNS=1
    [ "$(id -u)" = 0 ] && exec unshare -n sh "$0"
    exec unshare -rn sh "$0"
fi
[ -n "$GUEST_DEBIAN_DISK" ] || { echo "GUEST_DEBIAN_DISK is not set (run.sh: GUEST_DEBIAN)"; exit 1; }
disk=$GUEST_DEBIAN_DISK
if [ -f "$disk" ]; then # --host: never write the cached image
    cp "$disk" /tmp/kvmini-debian.ext4 && disk=/tmp/kvmini-debian.ext4
fi
token=token-$$-$(date +%s)
{
    "$KVMINI" run --kernel "$GUEST_DEBIAN_KERNEL" --initrd "$GUEST_DEBIAN_INITRD" \
        --cpus 2 --memory 1G --disk "path=$disk" --net tap=kdeb0,mac=52:54:00:de:b1:0a \
        --cmdline "root=/dev/vda rw kvmini.test=poweroff kvmini.token=$token kvmini.fake=1"
    echo "kvmini-rc=$?"
} 2>&1 | while IFS= read -r line; do
    printf '%s\n' "$line"
    case $line in
    *"kvmini-debian: epoch="*) echo "host-epoch=$(date +%s)" ;;
    esac
done
echo "token-sent=$token"
echo "token-on-disk=$(debugfs -R 'cat /root/kvmini-token' "$disk" 2>/dev/null)"
e2fsck -fn "$disk" >/tmp/kvmini-e2fsck.log 2>&1
echo "e2fsck-rc=$?"
tail -n 3 /tmp/kvmini-e2fsck.log
[ "$disk" = "$GUEST_DEBIAN_DISK" ] || rm -f "$disk"
