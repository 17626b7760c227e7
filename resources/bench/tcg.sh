#!/usr/bin/env bash
# kvmini on a host without hardware virtualization against QEMU's TCG run
# directly (issue 19): process start to exit of
#   qemu   qemu-system-x86_64 -accel tcg -cpu max -m 256 -nographic -no-reboot
#          -nodefaults -serial stdio -kernel bzImage -initrd initramfs.cpio.gz
#          -append "console=ttyS0 quiet panic=1 reboot=k -- true"
#   exec   kvmini exec [--accel MODE] -- true
#   run    kvmini run [--accel MODE] --cmdline "-- true"
# with the default guest (the same kernel build and busybox initramfs; kvmini
# boots its vmlinux, the QEMU command the bzImage as the issue has it).
# ROUNDS rounds, the three commands alternating within each; min, median,
# max per command and each kvmini median's ratio to QEMU's.
#
#   resources/bench/tcg.sh [--kvmini PATH] [--rounds N] [--accel MODE]
#
# --kvmini: default target/release/kvmini (built if missing); --accel:
# passed to kvmini (default: none, i.e. auto). Run it alone on the host
# (under the project's heavy-job lock): the figures are wall-clock times.
# stdout: the table; progress on stderr. Exit 0 when every run succeeded.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
REPO_DIR="$(cd "$RESOURCES_DIR/.." && pwd)"

kvmini="" rounds=5 accel=()
while (($#)); do
    case $1 in
    --kvmini) kvmini=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --accel) accel=(--accel "$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "tcg.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "tcg.sh: --rounds '$rounds' is not a positive number" >&2; exit 2; }
if [[ -z $kvmini ]]; then
    kvmini=$REPO_DIR/target/release/kvmini
    log "building the release kvmini"
    (cd "$REPO_DIR" && cargo build --release --quiet --bin kvmini >&2) || die "cargo build failed"
fi
[[ -x $kvmini ]] || die "--kvmini $kvmini is not an executable file"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
    log "note: this host has hardware virtualization; auto will pick kvm, not QEMU's software CPU"
fi

kernel=$("$RESOURCES_DIR/kernel/build.sh" 2>/dev/null) || die "resources/kernel/build.sh failed"
initrd=$("$RESOURCES_DIR/rootfs/build-initramfs.sh" 2>/dev/null) || die "resources/rootfs/build-initramfs.sh failed"
bzimage=$kernel/bzImage
[[ -f $bzimage && -f $initrd ]] || die "no bzImage in $kernel or no initramfs at $initrd"

run_qemu() {
    qemu-system-x86_64 -accel tcg -cpu max -m 256 -nographic -no-reboot -nodefaults \
        -serial stdio -kernel "$bzimage" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=1 reboot=k -- true"
}
run_exec() { "$kvmini" exec "${accel[@]}" -- true; }
run_run() { "$kvmini" run "${accel[@]}" --cmdline "-- true"; }

# secs NAME: runs run_NAME once, stdin and output discarded; prints seconds.
failed=0
secs() {
    local start end rc=0
    start=$(date +%s.%N)
    "run_$1" </dev/null >/dev/null 2>"$work/$1.err" || rc=$?
    end=$(date +%s.%N)
    if ((rc != 0)); then
        log "$1 exited $rc: $(tail -3 "$work/$1.err" | tr '\n' ' ')"
        failed=1
    fi
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
}

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-bench-tcg.XXXXXX")
on_exit "rm -rf '$work'"
names=(qemu exec run)
declare -A times
log "warm-up: one run of each (page cache, default guest)"
for n in "${names[@]}"; do secs "$n" >/dev/null; done
failed=0
for ((r = 1; r <= rounds; r++)); do
    for n in "${names[@]}"; do
        t=$(secs "$n")
        times[$n]+="$t "
        log "round $r: $n $(printf %.3f "$t") s"
    done
done

# stats "T1 T2 ...": min median max
stats() {
    tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '
        { v[NR] = $1 }
        END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
              printf "%.3f %.3f %.3f\n", v[1], m, v[NR] }'
}
read -r _ qmed _ < <(stats "${times[qemu]}")
printf '%-44s %7s %7s %7s %9s\n' "command (${rounds} rounds, seconds)" min median max "vs QEMU"
for n in "${names[@]}"; do
    read -r lo med hi < <(stats "${times[$n]}")
    case $n in
    qemu) label="qemu-system-x86_64 -accel tcg (the issue's)" ;;
    exec) label="kvmini exec ${accel[*]} -- true" ;;
    run) label="kvmini run ${accel[*]} --cmdline \"-- true\"" ;;
    esac
    printf '%-44s %7s %7s %7s %8.2fx\n' "$label" "$lo" "$med" "$hi" "$(awk -v a="$med" -v b="$qmed" 'BEGIN { print a / b }')"
done
exit "$failed"
