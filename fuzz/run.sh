#!/usr/bin/env bash
# Builds the libFuzzer targets on the stable toolchain (no cargo-fuzz) and
# runs each for a fixed number of executions, starting from the committed
# corpus (corpus/<target>/) and the crash regressions (regressions/<target>/).
# Exits non-zero on the first crash, timeout or OOM, printing the
# reproducer's path and the command that replays it.
#
#   fuzz/run.sh [--runs N] [--seed N] [--work DIR] [--timeout SECS]
#               [--build-only] [TARGET...]
#
# Targets: mmio block net console kernel share (default: all, one after another).
# --runs N      executions per target (default 20000: the short pass, well
#               under a minute per target; docs/testing.md has the long one)
# --seed N      libFuzzer's random seed (default 1, so the short pass is
#               repeatable; 0 picks one at random)
# --work DIR    keep the inputs libFuzzer finds in DIR/<target>/ (and start
#               from them next time); by default they go to a temporary
#               directory that is removed
# --timeout S   an input running longer than S seconds is a finding (30)
#
# Build: RUSTFLAGS below, `--target x86_64-unknown-linux-gnu` so the flags
# do not reach build scripts and proc macros, and its own target directory
# (fuzz/target).
set -euo pipefail
cd "$(dirname "$0")"

ALL_TARGETS=(mmio block net console kernel share)
declare -A MAX_LEN=([mmio]=4096 [block]=4096 [net]=8192 [console]=4096 [kernel]=65536 [share]=16384)
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=target
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"

runs=20000
seed=1
work=""
timeout=30
build_only=false
targets=()
while (($#)); do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --build-only) build_only=true; shift ;;
    -h | --help) sed -n '2,23p' "$(basename "$0")" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
        [[ -v MAX_LEN[$1] ]] || { echo "run.sh: unknown target '$1' (${ALL_TARGETS[*]})" >&2; exit 2; }
        targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")
[[ $runs =~ ^[0-9]+$ ]] || { echo "run.sh: --runs needs a number" >&2; exit 2; }

bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
echo "[fuzz] building ${targets[*]} (stable, sanitizer coverage, $TARGET_DIR/$TRIPLE/release)" >&2
cargo build --release --target "$TRIPLE" --target-dir "$TARGET_DIR" "${bin_args[@]}"
$build_only && exit 0

if [[ -z $work ]]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-fuzz.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi

summary=()
for t in "${targets[@]}"; do
    bin=$TARGET_DIR/$TRIPLE/release/$t
    art=artifacts/$t
    mkdir -p "$work/$t" "$art"
    dirs=("$work/$t" "corpus/$t")
    [[ -d regressions/$t ]] && dirs+=("regressions/$t")
    # One log per run: two runs of the same target (a long one and a short
    # one) must not write into each other's. Kept only when the run fails.
    log=$art/fuzz.$$.log
    echo "[fuzz] $t: $runs executions from corpus/$t (log: fuzz/$log)" >&2
    start=$SECONDS
    rc=0
    # Scratch files of a target (the share target's fixture) go to $TMPDIR,
    # emptied after each target.
    mkdir -p "$work/tmp.$t"
    TMPDIR=$work/tmp.$t "$bin" -runs="$runs" -seed="$seed" -max_len="${MAX_LEN[$t]}" -timeout="$timeout" \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/" \
        "${dirs[@]}" >"$log" 2>&1 || rc=$?
    secs=$((SECONDS - start))
    # An input stopped half-way may leave directories of mode 000 there.
    chmod -R u+rwx "$work/tmp.$t" 2>/dev/null || true
    rm -rf "$work/tmp.$t" || true
    if ((rc != 0)); then
        tail -n 15 "$log" >&2
        # The panic message (or libFuzzer's reason), which the tail may miss.
        grep -m 1 -A 1 -E 'panicked at|ERROR: libFuzzer' "$log" >&2 || true
        repro=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo "[fuzz] FAILED: target $t exited $rc after ${secs}s" >&2
        if [[ -n $repro ]]; then
            echo "[fuzz] reproducer: fuzz/$repro" >&2
            echo "[fuzz] replay:     fuzz/$bin fuzz/$repro" >&2
            echo "[fuzz] minimize:   fuzz/$bin -minimize_crash=1 -runs=100000 fuzz/$repro" >&2
        fi
        exit 1
    fi
    stats=$(grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 | sed 's/^#[0-9]* *DONE *//' || true)
    rm -f "$log"
    summary+=("$(printf '%-8s %8s runs %5ss  %s' "$t" "$runs" "$secs" "$stats")")
done
echo "[fuzz] all targets clean:" >&2
printf '  %s\n' "${summary[@]}" >&2
