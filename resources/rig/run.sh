#!/usr/bin/env bash
# Run scenario scripts against a real, hardware-style /dev/kvm, even on hosts
# without VT-x/AMD-V: boot an L1 Linux under QEMU TCG with an emulated CPU that
# has SVM (-cpu max), load kvm-amd there, and run the scenarios inside L1.
#
#   run.sh --kvmini PATH --scenarios DIR [--timeout SECS] [--smp N] [--host]
#          [--with-qemu] [--data DIR] [--track-kvmini]
#
# --kvmini     statically linked kvmini binary (it runs inside L1)
# --scenarios  directory of *.sh scenario scripts (POSIX sh / busybox)
# --timeout    per-scenario timeout in seconds (default 300)
# --smp        L1 vCPUs (default 2)
# --host       run the scenarios directly on this host instead (needs
#              vmx/svm); same output format, no L1
# --with-qemu  also put QEMU (Debian's qemu-system-x86_64, its libraries and
#              the microvm firmware) into L1, for benchmarks that compare
#              kvmini with QEMU; scenarios get its path in QEMU. Off by
#              default: it adds ~50 MB that L1 unpacks under emulation.
# --data DIR   copy DIR's files into L1 (/opt/data); scenarios get the
#              directory in RIG_DATA (the host's DIR with --host)
# --track-kvmini  record on L1's heartbeat port every start of $KVMINI (a
#              wrapper that says so, then execs the binary), so that a frozen
#              L1 can be blamed on the rig only when no kvmini process was
#              running (see below). Off by default: benchmarks time kvmini's
#              launch and should not time the wrapper. Ignored with --host.
#
# Guest artefacts are built (or taken from the cache) by resources/kernel and
# resources/rootfs unless GUEST_VMLINUX/GUEST_BZIMAGE/GUEST_INITRD (and
# GUEST_EXT4) are set.
# GUEST_DEBIAN (optional): a directory from resources/debian/build.sh
# (vmlinuz, initrd.img, rootfs.ext4). Its kernel and initrd go into L1; its
# disk image reaches L1 as a QEMU virtio disk (snapshot=on: the cached image
# is never written), /dev/vda there. Scenarios get GUEST_DEBIAN_KERNEL,
# GUEST_DEBIAN_INITRD and GUEST_DEBIAN_DISK (the host's file with --host:
# copy it before writing). Unset: not carried.
# GUEST_BENCH_INITRD (optional): the bench initramfs (fio, iperf3; from
# resources/bench/build-initramfs.sh), carried into L1 as
# /opt/guest/bench-initramfs.cpio for `kvmini bench`'s block and network
# workloads; scenarios get its path in GUEST_BENCH_INITRD. Unset: not carried.
# VIRTIOFSD (optional): a virtiofsd binary (resources/virtiofsd/build.sh),
# carried into L1 with its libraries as /usr/libexec/virtiofsd; scenarios
# get its path in VIRTIOFSD (the host's binary with --host). Unset: not
# carried.
# stdout: the console, with @@KVMINI-* markers (see scenario-runner.sh).
# Never hangs: QEMU runs under an overall timeout.
# Exit 75 (EX_TEMPFAIL): L1 froze or broke and was stopped; the last stdout
# line is then
#   @@KVMINI-RIG-FROZE kvmini-running=yes|no l1-timer-stuck=yes|no <why>
# where yes means a kvmini process was (or may have been) running when L1
# stopped: the last heartbeat saw one, or one started after it. Only a
# "no" is the rig's own failure for certain. l1-timer-stuck=yes: QEMU's
# monitor showed L1's timer interrupt pending and deliverable (interrupts
# enabled) for a second, never taken (l1-dump.py): the emulator's failure,
# seen with Firecracker in kvmini's place too (docs/testing.md).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
RIG="$RESOURCES_DIR/rig"

kvmini="" scenarios="" per_timeout=300 smp=2 host=0 with_qemu=0 data="" track=0
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --timeout) per_timeout=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --host) host=1; shift ;;
    --with-qemu) with_qemu=1; shift ;;
    --data) data=$2; shift 2 ;;
    --track-kvmini) track=1; shift ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
    esac
done
[[ -n $kvmini && -x $kvmini ]] || die "--kvmini must name an executable kvmini binary (got '$kvmini')"
[[ -n $scenarios && -d $scenarios ]] || die "--scenarios must name a directory of *.sh scripts"
shopt -s nullglob
scripts=("$scenarios"/*.sh)
((${#scripts[@]})) || die "no *.sh scenarios in $scenarios"
[[ -z $data || -d $data ]] || die "--data must name a directory (got '$data')"

if [[ -z ${GUEST_VMLINUX:-} || -z ${GUEST_BZIMAGE:-} || -z ${GUEST_INITRD:-} ]]; then
    kdir=$("$RESOURCES_DIR/kernel/build.sh")
    GUEST_VMLINUX=$kdir/vmlinux GUEST_BZIMAGE=$kdir/bzImage
    GUEST_INITRD=$("$RESOURCES_DIR/rootfs/build-initramfs.sh")
fi
if [[ -z ${GUEST_EXT4:-} ]]; then
    GUEST_EXT4=$("$RESOURCES_DIR/rootfs/build-ext4.sh")
fi

if ((host)); then
    grep -qw -e vmx -e svm /proc/cpuinfo ||
        log "warning: no vmx/svm in /proc/cpuinfo; /dev/kvm here may not boot Linux"
    apt_install busybox-static
    export KVMINI GUEST_VMLINUX GUEST_BZIMAGE GUEST_INITRD GUEST_EXT4
    [[ -z ${GUEST_BENCH_INITRD:-} ]] || export GUEST_BENCH_INITRD
    [[ -z ${VIRTIOFSD:-} ]] || export VIRTIOFSD
    if [[ -n ${GUEST_DEBIAN:-} ]]; then
        export GUEST_DEBIAN_KERNEL=$GUEST_DEBIAN/vmlinuz GUEST_DEBIAN_INITRD=$GUEST_DEBIAN/initrd.img
        export GUEST_DEBIAN_DISK=$GUEST_DEBIAN/rootfs.ext4
    fi
    KVMINI=$(realpath "$kvmini")
    if ((with_qemu)); then
        apt_install qemu-system-x86
        export QEMU=/usr/bin/qemu-system-x86_64
    fi
    if [[ -n $data ]]; then
        RIG_DATA=$(realpath "$data")
        export RIG_DATA
    fi
    # busybox sh, as in L1: same shell for the scenarios, and dash's `kill`
    # cannot signal a process group (-PID), which the timeout watchdog needs.
    # Debian's busybox runs its own applets first (sh, setsid, kill, ...).
    exec /bin/busybox sh "$RIG/scenario-runner.sh" "$per_timeout" "${scripts[@]}"
fi

apt_install qemu-system-x86 busybox-static cpio e2fsprogs crun passt
l1=$("$RIG/l1-kernel.sh")
vmlinuz=$(echo "$l1"/boot/vmlinuz-*)
moddir=$(echo "$l1"/lib/modules/*/kernel)
[[ -f $vmlinuz && -d $moddir ]] || die "unexpected layout of L1 kernel package in $l1"

# L1 initramfs: rebuilt every run (kvmini and scenarios change every time;
# it takes a second). Uncompressed: L1 unpacks it under emulation.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-rig.XXXXXX")
on_exit 'rm -rf "$tmp"'
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,lib/modules,opt/kvmini,opt/guest,opt/rig,opt/scenarios}
cp /bin/busybox "$root/bin/"
while read -r applet; do
    [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <(/bin/busybox --list-full)
# virtio_pci and virtio_blk: L1's view of a --disk given to QEMU (GUEST_DEBIAN).
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd drivers/net/tun \
    drivers/net/veth net/802/stp net/llc/llc net/bridge/bridge \
    drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
    drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk; do
    cp "$moddir/$m.ko" "$root/lib/modules/" || die "module $m.ko missing in $l1"
done
# e2fsprogs for `kvmini exec --share` inside L1 (mke2fs -d), in place of
# busybox's much smaller mke2fs applet; debugfs for scenarios that look
# into an image; e2fsck for the Debian scenarios' clean-filesystem check.
for tool in mke2fs debugfs e2fsck; do
    rm -f "$root"/{bin,sbin,usr/bin,usr/sbin}/$tool
    bin=$(PATH=/usr/sbin:/sbin:$PATH command -v $tool) || die "$tool missing (e2fsprogs)"
    copy_with_libs "$root" "$bin"
    ln -sf "$bin" "$root/sbin/$tool" 2>/dev/null || true
done
mkdir -p "$root/etc" && cp /etc/mke2fs.conf "$root/etc/"
if ((with_qemu)); then
    # The peer VMM for benchmarks: QEMU at its usual path (it finds its
    # firmware in ../share/qemu), its libraries at theirs (L1's loader
    # searches /lib/x86_64-linux-gnu), and only the firmware the microvm
    # machine loads: qboot (its BIOS) and pvh.bin / linuxboot_dma.bin
    # (direct kernel boot of a vmlinux / bzImage).
    copy_with_libs "$root" /usr/bin/qemu-system-x86_64
    mkdir -p "$root/usr/share/qemu"
    for f in qboot.rom bios-microvm.bin pvh.bin linuxboot_dma.bin; do
        cp -L "/usr/share/qemu/$f" "$root/usr/share/qemu/" ||
            die "QEMU firmware /usr/share/qemu/$f missing (reinstall qemu-system-data)"
    done
fi
if [[ -n $data ]]; then
    mkdir -p "$root/opt/data"
    cp -r "$data"/. "$root/opt/data/"
fi
# crun (with its libraries) for the container side of `kvmini bench`.
copy_with_libs "$root" "$(command -v crun)"
# passt for `--net user`, and util-linux's setpriv (busybox's cannot change
# the user) for running kvmini as a user without privileges.
# (busybox's applet link goes first: copying onto it would follow it.)
rm -f "$root"/{bin,sbin,usr/bin,usr/sbin}/setpriv
copy_with_libs "$root" "$(command -v passt)" "$(command -v setpriv)"
[[ ! -x /usr/bin/passt.avx2 ]] || copy_with_libs "$root" /usr/bin/passt.avx2
if [[ -n ${VIRTIOFSD:-} ]]; then
    [[ -x $VIRTIOFSD ]] || die "VIRTIOFSD names no executable: $VIRTIOFSD"
    mkdir -p "$root/usr/libexec"
    copy_with_libs "$root" "$VIRTIOFSD"
    # At a fixed path in L1, whatever the host's path was.
    [[ $VIRTIOFSD == /usr/libexec/virtiofsd ]] || mv "$root$VIRTIOFSD" "$root/usr/libexec/virtiofsd"
fi
install -m 0755 "$RIG/l1-init" "$root/init"
cp "$RIG/scenario-runner.sh" "$root/opt/rig/"
if ((track)); then
    # The scenarios' $KVMINI says on the heartbeat port that it starts, then
    # becomes the real binary: the same process, and still called kvmini
    # (kvmini bench finds its VMs by that name), in a directory of its own.
    # L1's heartbeat counts the running kvmini processes.
    mkdir -p "$root/opt/kvmini/bin"
    cp "$kvmini" "$root/opt/kvmini/bin/kvmini"
    printf '%s\n' '#!/bin/sh' 'echo kvmini-start >/dev/ttyS1' \
        'exec /opt/kvmini/bin/kvmini "$@"' >"$root/opt/kvmini/kvmini"
    chmod 0755 "$root/opt/kvmini/kvmini"
else
    cp "$kvmini" "$root/opt/kvmini/kvmini"
fi
cp "$GUEST_VMLINUX" "$root/opt/guest/vmlinux"
cp "$GUEST_BZIMAGE" "$root/opt/guest/bzImage"
cp "$GUEST_INITRD" "$root/opt/guest/initramfs.cpio.gz"
cp "$GUEST_EXT4" "$root/opt/guest/rootfs.ext4"
if [[ -n ${GUEST_BENCH_INITRD:-} ]]; then
    [[ -f $GUEST_BENCH_INITRD ]] || die "GUEST_BENCH_INITRD names no file: $GUEST_BENCH_INITRD"
    cp "$GUEST_BENCH_INITRD" "$root/opt/guest/bench-initramfs.cpio"
fi
cp "${scripts[@]}" "$root/opt/scenarios/"
disk=()
if [[ -n ${GUEST_DEBIAN:-} ]]; then
    for f in vmlinuz initrd.img rootfs.ext4; do
        [[ -f $GUEST_DEBIAN/$f ]] || die "GUEST_DEBIAN has no $f: $GUEST_DEBIAN (see resources/debian/build.sh)"
    done
    mkdir -p "$root/opt/guest/debian"
    cp "$GUEST_DEBIAN/vmlinuz" "$GUEST_DEBIAN/initrd.img" "$root/opt/guest/debian/"
    # snapshot=on: L1's writes go to a throwaway overlay, never the cache.
    disk=(-drive "file=$GUEST_DEBIAN/rootfs.ext4,if=virtio,format=raw,snapshot=on")
fi
(cd "$root" && find . -print | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$tmp/l1.cpio"

# Overall budget: L1 boot + every scenario at its full timeout + slack.
# Scenarios may raise their own timeout (see scenario-runner.sh).
overall=120
for s in "${scripts[@]}"; do
    own=$(sed -n 's/^# kvmini-scenario-timeout: *\([0-9][0-9]*\).*/\1/p' "$s" | head -n 1)
    t=$((${own:-0} > per_timeout ? ${own:-0} : per_timeout))
    overall=$((overall + t))
done
log "booting L1 ($(basename "$vmlinuz"), -smp $smp, ${#scripts[@]} scenarios, timeout ${overall}s)"
start=$SECONDS
rc=0
# -cpu max: TCG emulates AMD SVM with nested paging, so kvm-amd loads in L1.
# -nic none: L1 needs no network, and nothing inside it may reach beyond it.
# rig_timeout=... reaches L1's /init as an environment variable.
# The console goes through a watch loop: L1's own kernel has been seen to
# livelock under TCG (nested KVM: "watchdog: BUG: soft lockup" on every
# CPU, or simply silence), which no timeout inside L1 can break. L1's init
# writes a heartbeat to its second serial port ($tmp/heartbeat here), so
# such an L1 is stopped at once (soft lockup, or a scenario that survives
# SIGKILL), or when its heartbeat has not moved for $stall s ($first_beat s
# for the first beat, which comes after L1's boot), and run.sh exits 75
# (EX_TEMPFAIL) saying whether a kvmini process was running then: only
# without one is it certainly the rig's failure.
stall=${KVMINI_RIG_STALL:-60}
first_beat=${KVMINI_RIG_FIRST_BEAT:-120}
# A beat this late (s) is sampled at once (l1-dump.py, into $tmp/early-dump),
# before any decision: a stall that ends by itself shows up later only as a
# soft lockup report, and by then the CPU has moved on. The sample taken
# during the stall is the evidence of what stalled it.
# If the sample shows the stuck timer (QEMU TCG lost L1's timer interrupt:
# pending, deliverable, never taken; docs/testing.md), or at least the
# timer vector pending in both samples, run.sh tries to revive L1:
# a key press on L1's keyboard controller makes QEMU take it (l1-dump.py
# --revive). Each revival is on the console as
#   @@KVMINI-RIG-REVIVED after Ns without a heartbeat: ...
# (counted by the e2e suite and net-load.sh), and L1's soft lockup report
# of that stall, which may follow, is not taken for a new one. A timer
# that stays stuck ends in the freeze below as before.
early=${KVMINI_RIG_EARLY_DUMP:-12}
fifo=$tmp/console
mkfifo "$fifo"
: >"$tmp/heartbeat"
timeout --kill-after=10 "$overall" qemu-system-x86_64 \
    -accel "tcg,thread=${KVMINI_RIG_TCG_THREAD:-multi}" -cpu max -m 2048 -smp "$smp" \
    -nographic -no-reboot -nic none \
    -serial mon:stdio -serial "file:$tmp/heartbeat" \
    -monitor "unix:$tmp/monitor,server=on,wait=off" \
    "${disk[@]}" -kernel "$vmlinuz" -initrd "$tmp/l1.cpio" \
    -append "console=ttyS0 panic=-1 quiet rig_timeout=$per_timeout" \
    </dev/null >"$fifo" &
qemu=$!
broken="" partial="" beat_size=0 beat_at=$SECONDS checked=-1 stuck=no early_at=-1 revived_at=-1 revived_gap=-1
early_stuck=no # the early sample's verdict (timer-stuck: yes|no)
dump() { # dump FILE: where L1's vCPUs are (halted? spinning? in L1 or L2?)
    python3 "$RIG/l1-dump.py" "$tmp/monitor" >"$1" 2>&1 || true
}
can_dump() { command -v python3 >/dev/null && [[ -S $tmp/monitor ]]; }
while :; do
    if IFS= read -r -t 5 line; then
        line=$partial$line partial=""
        printf '%s\n' "$line"
        if [[ $line == *"watchdog: BUG: soft lockup"* ]]; then
            if ((revived_at >= 0 && SECONDS - revived_at <= 60)); then
                log "L1 reports the stall its lost timer caused (revived $((SECONDS - revived_at))s ago), not a new one"
                revived_at=-1 # one report excused per revival
            else
                broken="L1's kernel reported a soft lockup (nested KVM under TCG)"
                break
            fi
        fi
        if [[ $line == *"@@KVMINI-RIG-BROKEN"* ]]; then
            broken="a scenario's processes survived SIGKILL in L1"
            break
        fi
    elif (($? > 128)); then
        partial+=$line # read timed out mid-line: keep what it got
    else
        [[ -z $partial$line ]] || printf '%s\n' "$partial$line"
        break # end of the console: QEMU exited
    fi
    # At most once a second (not per console line: stat is a fork).
    ((SECONDS != checked)) || continue
    checked=$SECONDS
    size=$(stat -c %s "$tmp/heartbeat")
    if ((size != beat_size)); then
        beat_size=$size beat_at=$SECONDS
    elif ((beat_size > 0 && SECONDS - beat_at > early && early_at != beat_at)) && can_dump; then
        early_at=$beat_at
        log "no heartbeat from L1 for ${early}s: sampling its vCPUs now"
        dump "$tmp/early-dump"
        early_stuck=no
        ! grep -q '^timer-stuck: yes' "$tmp/early-dump" || early_stuck=yes
        { grep '^timer-stuck:' "$tmp/early-dump" || echo "no verdict: $(tail -n 1 "$tmp/early-dump")"; } |
            sed 's/^/[run.sh] L1 (sampled) /' >&2
        # What a stall that ends by itself looked like, for the record.
        [[ $early_stuck == no ]] ||
            echo "@@KVMINI-RIG-STALL l1-timer-stuck=yes sampled ${early}s into a heartbeat gap"
        if [[ $early_stuck == yes ]] || grep -q '^timer-pending: yes' "$tmp/early-dump"; then
            python3 "$RIG/l1-dump.py" --revive "$tmp/monitor" >"$tmp/revive" 2>&1 || true
            sed 's/^/[run.sh] L1 /' "$tmp/revive" >&2
            # Only a revival of the stuck timer proper (interrupts on in both
            # samples) excuses L1's soft lockup report of this gap; with the
            # timer merely pending, the CPU may have been spinning with
            # interrupts off, which is no excuse.
            if grep -q '^revived: yes' "$tmp/revive"; then
                revived_gap=$beat_at
                [[ $early_stuck == no ]] || revived_at=$SECONDS
                echo "@@KVMINI-RIG-REVIVED after $((SECONDS - beat_at))s without a heartbeat: L1's pending timer interrupt was taken after a key press"
            fi
        fi
    elif ((beat_size == 0 && SECONDS - beat_at > first_beat)); then
        broken="no heartbeat from L1 for ${first_beat}s after its start"
        break
    elif ((beat_size > 0 && SECONDS - beat_at > stall)); then
        broken="no heartbeat from L1 for ${stall}s"
        break
    fi
done <"$fifo"
if [[ -n $broken ]]; then
    # Before stopping it: where its vCPUs are (halted? spinning? in L1 or L2?).
    if can_dump; then
        log "L1's vCPUs at the time (QEMU monitor):"
        dump "$tmp/dump"
        sed 's/^/[run.sh] L1 /' "$tmp/dump" >&2
        grep -q '^timer-stuck: yes' "$tmp/dump" && stuck=yes
        # The gap that ended it was sampled while it lasted: a soft lockup
        # is reported only once the CPU runs again, when its timer works.
        if ((early_at == beat_at)) && [[ -s $tmp/early-dump ]]; then
            log "L1's vCPUs ${early}s into the heartbeat gap that ended it:"
            sed 's/^/[run.sh] L1 (sampled) /' "$tmp/early-dump" >&2
            # A gap whose stuck timer was revived and still ended L1 was
            # not ended by that timer: only the dump above can say so.
            if ((revived_gap != beat_at)) && [[ $early_stuck == yes ]]; then
                stuck=yes
            fi
        fi
    else
        log "no python3 or no QEMU monitor socket: cannot show where L1's vCPUs were"
    fi
    kill "$qemu" 2>/dev/null || true
fi
wait "$qemu" || rc=$?
log "L1 finished after $((SECONDS - start))s (qemu rc=$rc)"
if [[ -n $broken ]]; then
    # Heartbeat lines (l1-init): "beat kvmini=N" every 5 s, N running kvmini
    # processes; "kvmini-start" from the --track-kvmini wrapper. Serial
    # lines end in \r\n.
    running=$(awk '{ sub(/\r$/, "") }
        /^beat kvmini=/ { seen = ($2 != "kvmini=0"); started = 0 }
        /^kvmini-start/ { started = 1 }
        END { print (seen || started) ? "yes" : "no" }' "$tmp/heartbeat")
    log "ERROR: the rig broke: $broken; stopped L1 (kvmini running then: $running)"
    echo "@@KVMINI-RIG-FROZE kvmini-running=$running l1-timer-stuck=$stuck $broken"
    exit 75
fi
((rc != 124 && rc != 137)) || die "rig timed out after ${overall}s"
exit "$rc"
