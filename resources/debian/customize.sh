#!/bin/sh
# mmdebstrap --customize-hook for resources/debian/build.sh: runs on the
# host with the new tree's directory as $1, after the packages are in.
set -eu
root=$1
here=$(dirname "$0")
install -m 0755 "$here/kvmini-test" "$root/usr/local/sbin/kvmini-test"
install -m 0644 "$here/kvmini-test.service" "$root/etc/systemd/system/kvmini-test.service"
chroot "$root" systemctl enable kvmini-test.service
# Root logs in with no password; the serial console logs it in by itself.
chroot "$root" passwd -d root
mkdir -p "$root/etc/systemd/system/serial-getty@ttyS0.service.d"
cat >"$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
UNIT
echo kvmini-debian >"$root/etc/hostname"
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
# Timers a throwaway test VM has no use for (and that would run at boot).
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done
# A fresh machine id on first boot, not one shared by every copy.
: >"$root/etc/machine-id"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log
