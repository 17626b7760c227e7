# shellcheck shell=sh
# Source me (POSIX sh; busybox sh inside the rig's L1, or the host's with
# --host). Starts the same guest under kvmini or under QEMU's microvm, so a
# benchmark scenario differs between the two VMMs in one word only.
#
#   bench_vm --vmm kvmini|kvmini-exec|qemu|firecracker [--mem MIB] [--cpus N]
#            [--kernel VMLINUX] [--initrd CPIO] [--kparams "KERNEL PARAMS"]
#            [--disk IMG[,readonly=on]]... [--net TAP|user] [--mac MAC]
#            [--fs DIR] [--share-via auto|image] -- GUEST COMMAND...
#
# The guest command runs under resources/rootfs/init (sh -c), whose
# "kvmini-guest: exit status N" closes the guest's output. The console goes
# to stdout; bench_vm returns the VMM's exit status (0 = the guest rebooted).
# `--net user`: user-mode networking through passt, for kvmini (its own
# passt) and QEMU (a passt started here, on a socket path, with
# `kvmini.dhcp=eth0` added as kvmini adds it); not for Firecracker, which
# has none. KVMINI_PASST_ARGS, if set, goes to both passts.
# `--fs DIR`: host directory DIR as virtio-fs tag `bench`, mounted by the
# guest's init at /mnt/t: kvmini runs its own virtiofsd (`--fs dir=`);
# QEMU gets a virtiofsd started here ($VIRTIOFSD, the same binary, on a
# socket; guest RAM a shared memfd, as vhost-user needs); kvmini-exec
# shares DIR at /mnt/t with `--share` (`--share-via` passed on). Not for
# Firecracker, which has no virtio-fs.
# Both VMMs get: the same kernel, initramfs and command line
# (console=ttyS0 reboot=k panic=1 KPARAMS -- COMMAND), the same RAM and vCPUs,
# and the same disk images as virtio-blk over virtio-mmio (/dev/vda, ...).
#
#   bench_run BENCH VMM ROUND bench_vm ...
#
# runs the command between two markers the host-side parser
# (resources/bench/lib.sh) understands, timed with L1's clock:
#   @@BENCH-RUN-BEGIN <bench> <vmm> <round>
#   @@BENCH-RUN-END <bench> <vmm> <round> rc=<n> secs=<s.ss>
#
# BENCH_KVMINI_FLAGS (optional, from the benchmark's params): extra flags
# for every kvmini run/exec, e.g. "--seccomp off" to measure what the
# filters cost.
# Needs KVMINI and, for --vmm qemu, QEMU in the environment (run.sh
# --with-qemu sets it); for --vmm firecracker, FIRECRACKER (the path of a
# Firecracker binary, or of a wrapper script that runs it; default
# $RIG_DATA/fc/firecracker.sh, which the host-side scripts put there).

# QEMU's microvm (QEMU 7.2) puts its virtio-mmio transports at
# 0xfeb00000 + i * 512, IRQ 5 + i, i = 0..7, and hands them to devices from
# the top: the first -device gets 0xfeb00e00 (IRQ 12), the second 0xfeb00c00
# (IRQ 11), ... Its auto-kernel-cmdline would *append* the matching
# virtio_mmio.device= parameters, i.e. after our "--", where they reach the
# guest's init instead of the kernel; so we turn it off and place them
# before "--" ourselves (as kvmini does).
# Firecracker packed by the host side (bench_pack_firecracker) into
# $RIG_DATA/fc, unless the caller named one.
if [ -z "${FIRECRACKER:-}" ] && [ -x "${RIG_DATA:-/nonexistent}/fc/firecracker.sh" ]; then
    FIRECRACKER=$RIG_DATA/fc/firecracker.sh
fi

bench_qemu_mmio() {
    _i=$1
    printf 'virtio_mmio.device=512@0x%x:%d' $((0xfeb00e00 - _i * 512)) $((12 - _i))
}

# bench_wait_socket NAME SOCKET PID: waits up to 10 s for helper NAME
# (process PID) to make SOCKET; kills it and says so if it does not.
bench_wait_socket() {
    _w=0
    while [ ! -S "$2" ] && [ $_w -lt 100 ]; do sleep 0.1; _w=$((_w + 1)); done
    [ -S "$2" ] || { echo "bench_vm: $1 did not make $2" >&2; kill "$3"; return 1; }
}

bench_vm() {
    _vmm="" _mem=512 _cpus=1 _kernel=${GUEST_VMLINUX:-} _initrd=${GUEST_INITRD:-} _kparams=""
    _ndisk=0 _kvmini_disks="" _qemu_disks="" _qemu_mmio="" _kvmini_net="" _qemu_net="" _tap="" _mac=""
    _fc_drives="" _fs="" _share_via=auto
    while [ $# -gt 0 ]; do
        case $1 in
        --vmm) _vmm=$2; shift 2 ;;
        --mem) _mem=$2; shift 2 ;;
        --cpus) _cpus=$2; shift 2 ;;
        --kernel) _kernel=$2; shift 2 ;;
        --initrd) _initrd=$2; shift 2 ;;
        --kparams) _kparams=$2; shift 2 ;;
        --disk)
            _path=${2%%,*} _ro=off
            case $2 in *,readonly=on) _ro=on ;; esac
            if [ $_ro = on ]; then
                _kvmini_disks="$_kvmini_disks --disk path=$_path,readonly=on"
            else
                _kvmini_disks="$_kvmini_disks --disk path=$_path"
            fi
            _qemu_disks="$_qemu_disks -drive id=d$_ndisk,file=$_path,format=raw,if=none,readonly=$_ro"
            _qemu_disks="$_qemu_disks -device virtio-blk-device,drive=d$_ndisk"
            _qemu_mmio="$_qemu_mmio $(bench_qemu_mmio $_ndisk)"
            [ -z "$_fc_drives" ] || _fc_drives="$_fc_drives, "
            _fc_ro=false
            [ $_ro = on ] && _fc_ro=true
            _fc_drives="$_fc_drives{\"drive_id\": \"d$_ndisk\", \"path_on_host\": \"$_path\", \"is_root_device\": false, \"is_read_only\": $_fc_ro}"
            _ndisk=$((_ndisk + 1))
            shift 2
            ;;
        --net) _tap=$2; shift 2 ;;
        --mac) _mac=$2; shift 2 ;;
        --fs) _fs=$2; shift 2 ;;
        --share-via) _share_via=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "bench_vm: unknown option $1" >&2; return 2 ;;
        esac
    done
    [ -n "$_kernel" ] || { echo "bench_vm: no --kernel (and no GUEST_VMLINUX)" >&2; return 2; }
    _passt=""
    if [ "$_tap" = user ]; then
        _kvmini_net="--net user${_mac:+,mac=$_mac}"
        if [ "$_vmm" = qemu ]; then
            _sock=$(mktemp -u "${TMPDIR:-/tmp}/kvmini-bench-passt.XXXXXX")
            # shellcheck disable=SC2086 # extra arguments, split on purpose
            # --runas as kvmini gives it (as root passt drops to nobody,
            # and L1 has no /etc/passwd to look the name up in).
            _runas=""
            [ "$(id -u)" != 0 ] || _runas="--runas 65534:65534"
            passt --foreground --quiet --one-off --socket "$_sock" $_runas ${KVMINI_PASST_ARGS:-} &
            _passt=$!
            bench_wait_socket passt "$_sock" "$_passt" || return 1
            _qemu_net="-netdev stream,id=n0,server=off,addr.type=unix,addr.path=$_sock"
            _qemu_net="$_qemu_net -device virtio-net-device,netdev=n0${_mac:+,mac=$_mac}"
            _qemu_mmio="$_qemu_mmio $(bench_qemu_mmio $_ndisk) kvmini.dhcp=eth0"
        fi
        [ "$_vmm" != firecracker ] || { echo "bench_vm: firecracker has no user-mode networking" >&2; return 2; }
    elif [ -n "$_tap" ]; then
        # One NIC on an existing TAP, after the disks. QEMU: userspace
        # virtio-net (vhost off, QEMU's default for -netdev tap), like
        # kvmini's.
        _kvmini_net="--net tap=$_tap${_mac:+,mac=$_mac}"
        _qemu_net="-netdev tap,id=n0,ifname=$_tap,script=no,downscript=no"
        _qemu_net="$_qemu_net -device virtio-net-device,netdev=n0${_mac:+,mac=$_mac}"
        _qemu_mmio="$_qemu_mmio $(bench_qemu_mmio $_ndisk)"
    fi
    _kvmini_fs="" _exec_fs="" _qemu_fs="" _vfsd=""
    if [ -n "$_fs" ]; then
        _kvmini_fs="--fs tag=bench,dir=$_fs,mount=/mnt/t"
        _exec_fs="--share $_fs:/mnt/t --share-via $_share_via"
        if [ "$_vmm" = qemu ]; then
            [ -n "${VIRTIOFSD:-}" ] || { echo "bench_vm: VIRTIOFSD is not set" >&2; return 2; }
            _vsock=$(mktemp -u "${TMPDIR:-/tmp}/kvmini-bench-vfs.XXXXXX")
            "$VIRTIOFSD" --socket-path "$_vsock" --shared-dir "$_fs" --sandbox namespace \
                --log-level error &
            _vfsd=$!
            bench_wait_socket virtiofsd "$_vsock" "$_vfsd" || return 1
            _qemu_fs="-object memory-backend-memfd,id=ram,size=${_mem}M,share=on"
            _qemu_fs="$_qemu_fs -chardev socket,id=vfs,path=$_vsock"
            _qemu_fs="$_qemu_fs -device vhost-user-fs-device,chardev=vfs,tag=bench"
            # QEMU's next transport: after the disks and the NIC, if any.
            _qdev=$_ndisk
            [ -z "$_qemu_net" ] || _qdev=$((_qdev + 1))
            _qemu_mmio="$_qemu_mmio $(bench_qemu_mmio $_qdev) kvmini.fs=bench:/mnt/t"
        fi
        [ "$_vmm" != firecracker ] || { echo "bench_vm: firecracker has no virtio-fs" >&2; return 2; }
    fi
    _initrd_kvmini="" _initrd_qemu=""
    if [ -n "$_initrd" ]; then
        _initrd_kvmini="--initrd $_initrd" _initrd_qemu="-initrd $_initrd"
    fi
    case $_vmm in
    kvmini)
        # kvmini prepends "console=ttyS0 reboot=k panic=1" itself and puts its
        # own virtio_mmio.device= parameters before "--".
        # shellcheck disable=SC2086 # word lists built above (paths have no spaces)
        "$KVMINI" run ${BENCH_KVMINI_FLAGS:-} --kernel "$_kernel" $_initrd_kvmini --memory "${_mem}M" --cpus "$_cpus" \
            $_kvmini_disks $_kvmini_net $_kvmini_fs --cmdline "$_kparams -- $*"
        ;;
    kvmini-exec)
        # `kvmini exec`: the guest runs the command under kvmini's exec init
        # (its own quiet kernel parameters); output and status come back
        # over virtio-consoles instead of the serial console.
        # shellcheck disable=SC2086
        "$KVMINI" exec ${BENCH_KVMINI_FLAGS:-} --kernel "$_kernel" $_initrd_kvmini --memory "${_mem}M" --cpus "$_cpus" \
            $_kvmini_disks $_exec_fs -- sh -c "$*"
        ;;
    qemu)
        [ -n "${QEMU:-}" ] || { echo "bench_vm: QEMU is not set (run.sh --with-qemu)" >&2; return 2; }
        # Stock QEMU settings apart from what the guest needs: KVM, microvm
        # without ACPI (our kernel has none) and with modern (virtio 1.x)
        # virtio-mmio like kvmini's, the serial console on stdout,
        # -no-reboot so the guest's reboot ends QEMU. Disks use QEMU's
        # defaults (cache=writeback, aio=threads).
        # -device i8042: microvm has no keyboard controller, so the guest's
        # reboot=k spins in kb_wait() on port 0x64 (~650,000 port reads,
        # each a VM exit; ~200 s in the rig) before falling back to a BIOS
        # reset. kvmini has an i8042 for exactly this reset.
        # shellcheck disable=SC2086
        "$QEMU" -M microvm,acpi=off,auto-kernel-cmdline=off${_vfsd:+,memory-backend=ram} -accel kvm -cpu host \
            -m "$_mem" -smp "$_cpus" -nodefaults -no-user-config -display none -no-reboot \
            -serial stdio -device i8042 -global virtio-mmio.force-legacy=false \
            -kernel "$_kernel" $_initrd_qemu $_qemu_disks $_qemu_net $_qemu_fs \
            -append "console=ttyS0 reboot=k panic=1 $_kparams$_qemu_mmio -- $*" </dev/null
        _qrc=$?
        if [ -n "$_vfsd" ]; then
            kill "$_vfsd" 2>/dev/null
            wait "$_vfsd" 2>/dev/null
            rm -f "$_vsock"
        fi
        if [ -n "$_passt" ]; then
            kill "$_passt" 2>/dev/null
            wait "$_passt" 2>/dev/null
            rm -f "$_sock"
        fi
        return $_qrc
        ;;
    firecracker)
        [ -n "${FIRECRACKER:-}" ] || { echo "bench_vm: FIRECRACKER is not set" >&2; return 2; }
        # Firecracker takes the VM from a JSON file (--no-api): the same
        # kernel, initramfs, RAM, vCPUs, disks and TAP. It adds its own
        # virtio_mmio.device= words before "--" (linux-loader keeps init's
        # words apart) and exits 0 when the guest resets through the i8042.
        case "$_kparams $*" in
        *'"'* | *'\'*) echo "bench_vm: firecracker: no quotes or backslashes in the command line" >&2; return 2 ;;
        esac
        _fc_net=""
        [ -z "$_tap" ] || _fc_net="{\"iface_id\": \"eth0\", \"host_dev_name\": \"$_tap\"${_mac:+, \"guest_mac\": \"$_mac\"}}"
        _fc_initrd=""
        [ -z "$_initrd" ] || _fc_initrd="\"initrd_path\": \"$_initrd\", "
        _fc_dir=$(mktemp -d)
        cat >"$_fc_dir/vm.json" <<EOF
{"boot-source": {"kernel_image_path": "$_kernel", $_fc_initrd"boot_args": "console=ttyS0 reboot=k panic=1 $_kparams -- $*"},
 "drives": [$_fc_drives],
 "network-interfaces": [$_fc_net],
 "machine-config": {"vcpu_count": $_cpus, "mem_size_mib": $_mem}}
EOF
        "$FIRECRACKER" --no-api --config-file "$_fc_dir/vm.json" </dev/null
        _fc_rc=$?
        rm -rf "$_fc_dir"
        return $_fc_rc
        ;;
    *) echo "bench_vm: --vmm must be kvmini, kvmini-exec, qemu or firecracker (got '$_vmm')" >&2; return 2 ;;
    esac
}

# Seconds since boot with centiseconds, from the kernel (busybox date has
# no sub-second format).
bench_now() {
    cut -d' ' -f1 /proc/uptime
}

bench_run() {
    _bench=$1 _bvmm=$2 _round=$3
    shift 3
    echo "@@BENCH-RUN-BEGIN $_bench $_bvmm $_round"
    _t0=$(bench_now)
    "$@"
    _rc=$?
    _t1=$(bench_now)
    echo "@@BENCH-RUN-END $_bench $_bvmm $_round rc=$_rc secs=$(echo "$_t0 $_t1" | awk '{ printf "%.2f", $2 - $1 }')"
    return $_rc
}
