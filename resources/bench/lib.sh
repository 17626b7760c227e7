# shellcheck shell=bash
# Host-side helpers for the benchmarks (resources/bench/*.sh). Source it
# after resources/lib.sh.
#
# A benchmark is: a scenario script (resources/bench/scenarios/NAME.sh) that
# runs inside the rig's L1 next to QEMU (run.sh --with-qemu) and starts the
# same guest under each VMM with bench_run/bench_vm (vm.sh), alternating;
# a parser that turns the saved console into value lines
#     <vmm> <round> <metric> <value>
# and bench_table, which prints medians and the kvmini/QEMU ratio.
#
# Console markers (from vm.sh and the scenarios):
#   @@BENCH-RUN-BEGIN <bench> <vmm> <round>
#   @@BENCH-RUN-END <bench> <vmm> <round> rc=<n> secs=<s>
#   @@BENCH-INFO ... / @@BENCH-ERROR ...

BENCH_DIR="$RESOURCES_DIR/bench"
REPO_DIR="$(cd "$RESOURCES_DIR/.." && pwd)"

# bench_kvmini [PATH]: PATH if given (must be executable), else a freshly
# built static release kvmini (what the rig needs). stdout: its path.
bench_kvmini() {
    if [[ -n ${1:-} ]]; then
        [[ -x $1 ]] || die "--kvmini $1 is not an executable file"
        realpath "$1"
        return
    fi
    log "building a static release kvmini (cargo, target/static)"
    (cd "$REPO_DIR" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
        --bin kvmini --target x86_64-unknown-linux-gnu --target-dir target/static >&2) ||
        die "cargo build of the static kvmini failed (see above)"
    echo "$REPO_DIR/target/static/x86_64-unknown-linux-gnu/release/kvmini"
}

# bench_setup [KVMINI]: everything a benchmark run needs on the host: the
# guest kernel and default initramfs (GUEST_VMLINUX, GUEST_BZIMAGE,
# GUEST_INITRD, exported for run.sh), the kvmini to test
# (KVMINI_BENCH_BIN, see bench_kvmini), and a fresh work directory
# BENCH_WORK (removed on exit) whose data/ goes into L1 as RIG_DATA,
# already holding vm.sh. Callers add their files and a params file there.
bench_setup() {
    local kdir
    # A peer the user named must be there before anything is built.
    ((BENCH_FC_ASKED == 0)) || [[ -x $BENCH_FC ]] || die "--firecracker $BENCH_FC: no such executable"
    kdir=$("$RESOURCES_DIR/kernel/build.sh")
    export GUEST_VMLINUX=$kdir/vmlinux GUEST_BZIMAGE=$kdir/bzImage
    GUEST_INITRD=$("$RESOURCES_DIR/rootfs/build-initramfs.sh")
    export GUEST_INITRD
    KVMINI_BENCH_BIN=$(bench_kvmini "${1:-}")
    BENCH_WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-bench.XXXXXX")
    on_exit 'rm -rf "$BENCH_WORK"'
    mkdir -p "$BENCH_WORK/data"
    cp "$BENCH_DIR/vm.sh" "$BENCH_WORK/data/"
}

# Firecracker, the second peer (issue 18): ../shared/peers beside the
# checkout when it is there. A script's --firecracker PATH sets BENCH_FC
# and BENCH_FC_ASKED=1 (the file must exist), --no-firecracker empties
# BENCH_FC; bench_peers then decides.
BENCH_FC=$REPO_DIR/../shared/peers/firecracker/firecracker BENCH_FC_ASKED=0
# A script's --no-qemu sets BENCH_QEMU=0: QEMU is left out (its rounds are
# where the rig's L1 most often freezes), Firecracker must then be there.
BENCH_QEMU=1

# bench_peers: sets BENCH_VMMS ("kvmini qemu", plus "firecracker" when a
# Firecracker binary is there; without qemu after --no-qemu) and, for
# Firecracker, packs it into $BENCH_WORK/data/fc, where vm.sh finds it.
# Dies when --firecracker named a file that is not there, or when
# --no-qemu leaves no peer; otherwise a missing Firecracker is logged.
bench_peers() {
    BENCH_VMMS="kvmini"
    ((BENCH_QEMU)) && BENCH_VMMS="kvmini qemu"
    if [[ -z $BENCH_FC || ! -x $BENCH_FC ]]; then
        ((BENCH_QEMU)) || die "--no-qemu needs Firecracker (--firecracker PATH): there is no peer to compare with"
        [[ -z $BENCH_FC ]] || log "no Firecracker at $BENCH_FC (--firecracker PATH): kvmini against QEMU only"
        return 0
    fi
    bench_pack_firecracker "$BENCH_FC" "$BENCH_WORK/data/fc"
    BENCH_VMMS="$BENCH_VMMS firecracker"
}

# bench_pack_firecracker BINARY DIR: BINARY, the loader and libraries ldd
# names (L1 has none of them), and DIR/firecracker.sh, which runs it
# through that loader (or, for a static build such as Firecracker's
# releases, runs it as it is).
bench_pack_firecracker() {
    local fc=$1 dir=$2 loader="" lib libs
    mkdir -p "$dir"
    cp -L "$fc" "$dir/firecracker"
    libs=$(ldd "$fc" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' || true)
    if [[ -z $libs ]]; then
        # Static ("statically linked" or "not a dynamic executable").
        printf '#!/bin/sh\nexec "$(dirname "$0")/firecracker" "$@"\n' >"$dir/firecracker.sh"
        chmod +x "$dir/firecracker.sh"
        return 0
    fi
    while read -r lib; do
        cp -L "$lib" "$dir/"
        [[ $lib != */ld-linux* ]] || loader=$(basename "$lib")
    done <<<"$libs"
    [[ -n $loader ]] || die "ldd names no loader for $fc"
    printf '#!/bin/sh\nd=$(dirname "$0")\nexec "$d/%s" --library-path "$d" "$d/firecracker" "$@"\n' \
        "$loader" >"$dir/firecracker.sh"
    chmod +x "$dir/firecracker.sh"
}

# bench_rig LOG SCENARIO DATA TIMEOUT [run.sh args...]: run one scenario in
# the rig (kvmini from KVMINI_BENCH_BIN) with QEMU and DATA in L1; the whole console goes to LOG, and the
# benchmark's markers are echoed to stderr as progress. Returns run.sh's
# status (non-zero when the rig failed; the log keeps whatever ran).
bench_rig() {
    local log=$1 scenario=$2 data=$3 timeout=$4
    shift 4
    local sdir st
    sdir=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-bench-scenario.XXXXXX")
    cp "$scenario" "$sdir/"
    set +e
    "$RESOURCES_DIR/rig/run.sh" --kvmini "$KVMINI_BENCH_BIN" --scenarios "$sdir" \
        --timeout "$timeout" --with-qemu --data "$data" "$@" |
        tee "$log" | grep --line-buffered -E '@@(BENCH|KVMINI-RIG|KVMINI-SCENARIO)' |
        sed -u 's/\r$//; s/\x1bc//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g; s/^/[bench] /' >&2
    st=${PIPESTATUS[0]}
    set -e
    rm -rf "$sdir"
    return "$st"
}

# bench_report CONSOLE AWK_RULES TITLE "METRIC..." ROW...: the table of a
# saved console (bench_parse with AWK_RULES, bench_table with the ROW specs;
# a Firecracker column when the scenario's "@@BENCH-INFO vmms ..." line
# names it or a Firecracker run began); returns 1, naming each on stderr,
# if any listed METRIC has no value under a VMM that was to run (kvmini
# and QEMU always count as such).
bench_report() {
    local console=$1 rules=$2 title=$3 required=$4 values missing=0 vmm m ran peers="qemu"
    shift 4
    values=$(bench_parse "$console" "$rules")
    ran=$({ grep -ao '@@BENCH-RUN-BEGIN [^ ]* [^ ]*' "$console" || true; } | awk '{ print $3 }'
        { grep -ao '@@BENCH-INFO vmms .*' "$console" || true; } | tr -d '\r' | cut -d' ' -f3- | tr ' ' '\n')
    ran=$(sort -u <<<"$ran")
    if grep -qx firecracker <<<"$ran"; then
        if grep -qx qemu <<<"$ran"; then
            peers="qemu firecracker" title="${title%)} and Firecracker)"
        else
            # --no-qemu: Firecracker is the one peer.
            peers="firecracker" title="${title% vs *} vs Firecracker)"
        fi
    fi
    bench_table "$title" "$peers" "$@" <<<"$values"
    for vmm in kvmini $peers; do
        for m in $required; do
            grep -q "^$vmm [^ ]* $m " <<<"$values" || { missing=1; log "missing: $m under $vmm"; }
        done
    done
    return "$missing"
}

# bench_go NAME WHAT TIMEOUT [run.sh args...]: the common end of every
# benchmark script: runs scenarios/NAME.sh in the rig with
# $BENCH_WORK/data, keeping the console in $log (default: a timestamped
# file in $TMPDIR), then prints the caller's `report` of that console and
# returns its status. WHAT says in the progress line what is being run.
bench_go() {
    local name=$1 what=$2 timeout=$3 start rig_rc=0
    shift 3
    [[ -n ${log:-} ]] || log=${TMPDIR:-/tmp}/kvmini-bench-$name-$(date +%Y%m%d-%H%M%S).log
    log "running $what in one rig run (console: $log; up to ${timeout}s)"
    start=$SECONDS
    bench_rig "$log" "$BENCH_DIR/scenarios/$name.sh" "$BENCH_WORK/data" "$timeout" "$@" || rig_rc=$?
    log "rig run finished in $((SECONDS - start))s (run.sh status $rig_rc)"
    ((rig_rc == 0)) || log "the rig run failed (status $rig_rc): figures from runs that did not finish are missing"
    report "$log"
}

# The generic part of every console parser (awk): strips CRs, tracks the
# run a line belongs to (bench, vmm, round; inrun is 1 between its markers).
# Bench-specific rules appended to it call emit(metric, value) while inrun;
# the values of a run are printed only if its VMM exited 0 and the guest's
# command did too (init's "kvmini-guest: exit status N", which must be
# there: a run without it counts for nothing; then followed by
# "<vmm> <round> <bench>-secs <s>", launch to exit); a failed or unfinished
# run is reported on stderr and contributes nothing.
BENCH_AWK_RUNS='
function emit(metric, value) { runbuf = runbuf vmm " " round " " metric " " value "\n" }
{ sub(/\r$/, "") }
/@@BENCH-RUN-BEGIN / {
    split(substr($0, index($0, "@@BENCH-RUN-BEGIN ")), w, " ")
    if (inrun) printf "bench: %s %s round %s did not finish\n", bench, vmm, round > "/dev/stderr"
    bench = w[2]; vmm = w[3]; round = w[4]; inrun = 1; runbuf = ""
    # `kvmini exec` (boot.sh'"'"'s exec rows) returns the command'"'"'s own
    # status and prints no init exit line; every other run must print it.
    guest_rc = (bench == "exec" && vmm == "kvmini") ? 0 : "none"; next
}
inrun && /kvmini-guest: exit status [0-9]+/ {
    guest_rc = substr($0, index($0, "exit status ") + 12) + 0
}
/@@BENCH-RUN-END / {
    split(substr($0, index($0, "@@BENCH-RUN-END ")), w, " ")
    rc = w[5]; sub(/^rc=/, "", rc); secs = w[6]; sub(/^secs=/, "", secs)
    if (rc == 0 && guest_rc == "none") printf "bench: %s %s round %s: the guest never said its exit status (the run is left out)\n", bench, vmm, round > "/dev/stderr"
    else if (rc == 0 && guest_rc == 0) printf "%s%s %s %s-secs %s\n", runbuf, vmm, round, bench, secs
    else if (rc == 0) printf "bench: %s %s round %s: the guest command exited with status %s (the run is left out)\n", bench, vmm, round, guest_rc > "/dev/stderr"
    else printf "bench: %s %s round %s: the VMM exited with status %s (its figures are left out)\n", bench, vmm, round, rc > "/dev/stderr"
    inrun = 0; runbuf = ""; next
}
/@@BENCH-ERROR / { print "bench: " substr($0, index($0, "@@BENCH-ERROR ") + 14) > "/dev/stderr" }
END { if (inrun) printf "bench: %s %s round %s did not finish (console ends)\n", bench, vmm, round > "/dev/stderr" }
'

# bench_parse_only LOG: with --parse LOG (non-empty), print the script's
# `report` of that saved console log and exit with its status.
bench_parse_only() {
    [[ -n $1 ]] || return 0
    [[ -f $1 ]] || { echo "$(basename "$0"): no such console log: $1" >&2; exit 2; }
    report "$1"
    exit
}

# bench_parse LOG AWK_RULES: value lines "<vmm> <round> <metric> <value>".
bench_parse() {
    awk "$BENCH_AWK_RUNS $2" "$1"
}

# bench_table TITLE PEERS SPEC... < value lines: one row per SPEC
# "metric|label|better" (better: higher or lower), columns kvmini and each
# of PEERS ("qemu", "firecracker" or "qemu firecracker"): the median over the runs,
# "(min-max)" when there are several; then the ratio of kvmini's median to
# each peer's, and how many runs gave each figure. A metric with no value
# for a VMM is shown as "missing", never as a number.
bench_table() {
    local title=$1 peers=$2
    shift 2
    local specs
    specs=$(printf '%s\n' "$@")
    awk -v title="$title" -v peers="$peers" -v specs="$specs" '
    function fmt(x) { return (x >= 100) ? sprintf("%.0f", x) : (x >= 10) ? sprintf("%.1f", x) : sprintf("%.2f", x) }
    function cell(m, v,    k, i, j, t, a, n) {
        k = m SUBSEP v; n = cnt[k]
        if (n == 0) return "missing"
        for (i = 1; i <= n; i++) a[i] = val[k, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j > 0 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        med[k] = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        return (n == 1) ? fmt(med[k]) : fmt(med[k]) " (" fmt(a[1]) "-" fmt(a[n]) ")"
    }
    { k = $3 SUBSEP $1; cnt[k]++; val[k, cnt[k]] = $4 + 0 }
    END {
        np = split(peers, p, " ")
        name["qemu"] = "QEMU"; name["firecracker"] = "Firecracker"; short["qemu"] = "QEMU"; short["firecracker"] = "FC"
        printf "%s\n\n", title
        head = sprintf("| %-26s | %-22s |", "metric", "kvmini"); rule = "|----------------------------|------------------------|"
        for (i = 1; i <= np; i++) { head = head sprintf(" %-22s |", name[p[i]]); rule = rule "------------------------|" }
        for (i = 1; i <= np; i++) { head = head sprintf(" %-11s |", "kvmini/" short[p[i]]); rule = rule "-------------|" }
        printf "%s %-6s | %-4s |\n%s--------|------|\n", head, "better", "runs", rule
        ns = split(specs, s, "\n")
        for (r = 1; r <= ns; r++) {
            if (s[r] == "") continue
            split(s[r], f, "|")
            line = sprintf("| %-26s | %-22s |", f[2], a = cell(f[1], "kvmini"))
            runs = cnt[f[1] SUBSEP "kvmini"] + 0
            for (i = 1; i <= np; i++) {
                c[i] = cell(f[1], p[i]); line = line sprintf(" %-22s |", c[i])
                runs = runs "/" (cnt[f[1] SUBSEP p[i]] + 0)
            }
            for (i = 1; i <= np; i++) {
                ratio = "-"
                if (a != "missing" && c[i] != "missing" && med[f[1] SUBSEP p[i]] > 0)
                    ratio = sprintf("%.2f", med[f[1] SUBSEP "kvmini"] / med[f[1] SUBSEP p[i]])
                line = line sprintf(" %-11s |", ratio)
            }
            printf "%s %-6s | %-4s |\n", line, f[3], runs
        }
        who = "kvmini"; for (i = 1; i <= np; i++) who = who "/" name[p[i]]
        printf "\nCells: median (min-max) over the runs; runs: %s runs that gave the figure.\n", who
    }'
}
