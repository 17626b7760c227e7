#!/usr/bin/env bash
# Self-check of the benchmarks' console parsing and table (no VM, no rig):
# feeds saved consoles from real rig runs (resources/bench/testdata/*.log)
# and an edited one with failed runs to blk.sh/boot.sh --parse and compares
# the tables with the expected ones (*.table). Prints "N passed, N failed".
#   resources/bench/selftest.sh [--update]   # --update rewrites the *.table
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=$here/testdata
update=0
[[ ${1:-} == --update ]] && update=1

pass=0 fail=0
check() { # NAME EXPECTED_STATUS SCRIPT LOG
    local name=$1 want=$2 script=$3 log=$4 got st=0
    [[ $log == /* ]] || log=$data/$log
    got=$("$here/$script" --parse "$log" 2>/dev/null) || st=$?
    if ((update)); then
        printf '%s\n' "$got" >"$data/$name.table"
    fi
    if [[ $st != "$want" ]]; then
        echo "FAIL $name: exit status $st, expected $want"
        fail=$((fail + 1))
    elif ! diff -u "$data/$name.table" <(printf '%s\n' "$got"); then
        echo "FAIL $name: table differs from $data/$name.table (above)"
        fail=$((fail + 1))
    else
        echo "ok   $name"
        pass=$((pass + 1))
    fi
}

# A block run saved before the QD1 jobs existed: every other figure is
# there, the QD1 ones are "missing", exit 1.
check blk-complete 1 blk.sh blk-rig.log
# The same console with QEMU's second run failing (rc=1) and kvmini's second
# run cut off before its END marker: those runs count for nothing, the
# figures come from the other runs, none is invented (QD1: missing, exit 1).
check blk-failed-runs 1 blk.sh blk-rig-failed.log
# Only failed runs for QEMU: its figures are "missing", exit 1.
check blk-qemu-missing 1 blk.sh blk-rig-noqemu.log
# Three VMMs with the QD1 jobs (3 rounds, issue 18): kvmini's and QEMU's
# figures all there; fio aborted in every Firecracker guest ("exit status
# 134"), so those runs count for nothing (not even launch to exit) and
# Firecracker's figures are "missing", exit 1.
check blk-fc-guest-failed 1 blk.sh blk-fc-rig.log
# The same with fio run as bench-fio (5 rounds): Firecracker's figures all
# there; one QEMU run ended after init without fio's output and counts for
# nothing (4 runs in its cells), exit 0.
check blk-fc-complete 0 blk.sh blk-fc5-rig.log
# The same console without QEMU's runs, as blk.sh --no-qemu leaves it:
# Firecracker is the one peer (its column and kvmini/FC only), exit 0.
check blk-fc-noqemu 0 blk.sh blk-fc5-noqemu-rig.log
# Boot and RSS run saved before the exec runs existed: every other figure
# is there, exec's are "missing", exit 1.
check boot-complete 1 boot.sh boot-rig.log
# A complete boot + exec + RSS run (3 repeats): every figure, exit 0.
check boot-exec-complete 0 boot.sh boot-exec-rig.log
# Boot, exec and RSS with Firecracker as a second peer (5 repeats, issue
# 18): its column and the kvmini/FC ratio, every figure, exit 0.
check boot-fc-complete 0 boot.sh boot-fc-rig.log
# The same console with every Firecracker run failed (rc=1): its figures
# are "missing", never invented, and the report exits 1.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed -E 's/(@@BENCH-RUN-END [a-z]+ firecracker [0-9]+) rc=0/\1 rc=1/' "$data/boot-fc-rig.log" >"$tmp/boot-fc-failed.log"
check boot-fc-failed 1 boot.sh "$tmp/boot-fc-failed.log"
# A complete network run (2 rounds): every figure, exit 0.
check net-complete 0 net.sh net-rig.log
# The TCP load loop (issue 17): kvmini after the fix, Firecracker and the
# kvmini build before it in one L1, every run ok (exit 0), the old build
# with receive length errors in every run.
check net-load-fixed 0 net-load.sh net-load-rig.log
# L1 froze during a Firecracker boot: charged to Firecracker, exit 1.
check net-load-freeze 1 net-load.sh net-load-rig-freeze.log
# A kvmini triple fault (before the fix), with its report: exit 1.
check net-load-triple-fault 1 net-load.sh net-load-rig-triple-fault.log
# Three L1s with run.sh's timer revival (2026-12-02): Firecracker's run 3
# revived (counted, the run ok), its run 9 ended by a freeze; kvmini 9 ok:
# exit 1.
check net-load-revived 1 net-load.sh net-load-rig-revived.log

# The share benchmark (issue 21, 3 rounds, 20,000 files, 64 MiB): kvmini
# and QEMU virtio-fs, exec live and image, every figure, exit 0.
check share-complete 0 share.sh share-rig.log
# The same console with every QEMU run reading a byte short: those runs
# count for nothing (a run must read the whole tree), QEMU's figures are
# "missing", exit 1.
sed -E '/@@BENCH-RUN-BEGIN share qemu/,/@@BENCH-RUN-END/ s/bytes=61440000/bytes=61439999/' \
    "$data/share-rig.log" >"$tmp/share-short.log"
check share-short-read 1 share.sh "$tmp/share-short.log"

echo "$pass passed, $fail failed"
((fail == 0))
