#!/usr/bin/env bash
# TCP load reproducer (issue 17): boots the bench guest (iperf3) again and
# again under kvmini and under Firecracker (../shared/peers beside the checkout, or
# --firecracker) in the nested rig, alternating on the same TAP, and runs
# an iperf3 upload then a download of --secs each against a fresh server in
# L1 (resources/bench/scenarios/net-load.sh). Prints, per VMM, how many
# runs ended with a triple fault (KVM_EXIT_SHUTDOWN), a stalled transfer
# (killed after --run-timeout s), another failure, or a frozen L1 (the rig
# stopped it: no heartbeat or a soft lockup; charged to the VMM whose run
# was under way), how often the rig revived L1's lost timer during a run
# (run.sh: "@@KVMINI-RIG-REVIVED"), and in how many runs the guest counted receive length
# errors (frames it found cut short: "rx error: N buffers ... missing").
#
#   resources/bench/net-load.sh [--runs N] [--chunk N] [--secs S] [--len BYTES] [--mem MIB]
#       [--vmms "kvmini firecracker"] [--smp N] [--run-timeout S]
#       [--kvmini PATH] [--firecracker PATH] [--log-dir DIR] [--no-lock] [--trace]
#       [--variant NAME=KVMINI]...
#   resources/bench/net-load.sh --parse CONSOLE_LOG...   # counts from saved logs
#
# --runs      runs (guest boots) per VMM in all (default 100)
# --chunk     runs per VMM in one L1 boot (default 12); each L1 is one rig
#             run, taken under `flock /tmp/kvmini-heavy.lock` (--no-lock:
#             not), so other heavy jobs get their turn between chunks
# --secs      seconds of each iperf3 direction (default 3)
# --len       bytes per iperf3 write (iperf3 -l; default iperf3's 128 KiB).
#             Small writes (1024, as busybox nc in the e2e suite's
#             net_ping_tcp writes) make a segment, a kick and an interrupt
#             per KiB: many more exits per second in L1 than large ones
# --mem       guest RAM in MiB (default 512)
# --smp       L1 vCPUs (default 1, as the e2e suite)
# --run-timeout  seconds before a run counts as stalled and is killed
#             (default 150)
# --log-dir   where the consoles go (default: a new directory in $TMPDIR)
# --trace     record L1's KVM trace and print its tail after a failed run
#             (the faulting RIP of a triple fault survives only there on AMD)
# --variant   also run another static kvmini binary, as VMM "kvmini-NAME",
#             in the same L1s (e.g. the build before a fix)
#
# stdout: the table; progress on stderr. Exit status 0 when every run of
# every VMM was ok, 1 otherwise, 2 usage.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
source "$RESOURCES_DIR/bench/lib.sh"

runs=100 chunk=12 secs=3 len="" mem=512 vmms="kvmini firecracker" smp=1 run_timeout=150
kvmini="" firecracker=$BENCH_FC log_dir="" lock=/tmp/kvmini-heavy.lock
trace=0 variants=()
parse=()
while (($#)); do
    case $1 in
    --runs) runs=$2; shift 2 ;;
    --chunk) chunk=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --len) len=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --vmms) vmms=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --run-timeout) run_timeout=$2; shift 2 ;;
    --kvmini) kvmini=$2; shift 2 ;;
    --firecracker) firecracker=$2; shift 2 ;;
    --log-dir) log_dir=$2; shift 2 ;;
    --no-lock) lock=""; shift ;;
    --trace) trace=1; shift ;;
    --variant) variants+=("$2"); shift 2 ;;
    --parse) shift; parse=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "net-load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$runs" "$chunk" "$secs" ${len:+"$len"} "$mem" "$smp" "$run_timeout"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "net-load.sh: '$n' is not a positive whole number" >&2; exit 2; }
done

# Counts from consoles: per VMM, runs by result, L1 freezes, and the median
# rates of the ok runs. A console whose rig broke ends with
# "@@NETLOAD-RIG rc=75" (appended below); the run under way then (BEGIN
# without RUN) is charged with the freeze.
summary() {
    awk '
    { sub(/\r$/, "") }
    /@@NETLOAD-BEGIN / { split(substr($0, index($0, "@@NETLOAD-BEGIN ")), w, " "); cur = w[2]; seen[cur] = 1; next }
    /@@NETLOAD-RUN / {
        split(substr($0, index($0, "@@NETLOAD-RUN ")), w, " ")
        v = w[2]; seen[v] = 1; total[v]++; cur = ""
        for (i = 4; i <= NF; i++) {
            split(w[i], kv, "=")
            if (kv[1] == "result") res[v, kv[2]]++
            if (kv[1] == "rxlen" && kv[2] != "-") { rxruns[v]++; if (kv[2] > 0) { rxbad[v]++; rxsum[v] += kv[2] } }
            if (kv[1] == "up" && kv[2] != "-" && w[4] == "result=ok") { nu[v]++; up[v, nu[v]] = kv[2] + 0 }
            if (kv[1] == "down" && kv[2] != "-" && w[4] == "result=ok") { nd[v]++; dn[v, nd[v]] = kv[2] + 0 }
        }
        next
    }
    /@@KVMINI-RIG-REVIVED / { who = (cur != "") ? cur : "(between runs)"; seen[who] = 1; revived[who]++; next }
    /@@NETLOAD-RIG rc=/ {
        rc = substr($0, index($0, "rc=") + 3) + 0
        if (rc != 0) {
            who = (cur != "") ? cur : "(between runs)"
            seen[who] = 1; freeze[who]++; total[who] += (cur != "") ? 1 : 0
            if (rc != 75) other_rig[who]++
        }
        cur = ""
        next
    }
    function median(a, v, n,    i, j, t, b) {
        if (n == 0) return "-"
        for (i = 1; i <= n; i++) b[i] = a[v, i]
        for (i = 2; i <= n; i++) { t = b[i]; for (j = i - 1; j > 0 && b[j] > t; j--) b[j + 1] = b[j]; b[j + 1] = t }
        return (n % 2) ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
    }
    END {
        printf "| %-14s | %5s | %5s | %13s | %17s | %14s | %10s | %13s | %16s | %12s | %14s |\n", "VMM", "runs", "ok", "triple faults", "stalled transfers", "other failures", "L1 freezes", "timer revived", "rx length errors", "up Mbit/s", "down Mbit/s"
        printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "----------------", "-------", "-------", "---------------", "-------------------", "----------------", "------------", "---------------", "------------------", "--------------", "----------------"
        bad = 0; nv = 0
        for (v in seen) if (v == "kvmini") order[++nv] = v
        for (v in seen) if (v == "firecracker") order[++nv] = v
        for (v in seen) if (v ~ /^kvmini-/) order[++nv] = v
        for (v in seen) if (v != "kvmini" && v != "firecracker" && v !~ /^kvmini-/) order[++nv] = v
        for (k = 1; k <= nv; k++) {
            v = order[k]
            rx = (rxruns[v] > 0) ? sprintf("%d/%d (%d)", rxbad[v], rxruns[v], rxsum[v]) : "-"
            printf "| %-14s | %5d | %5d | %13d | %17d | %14d | %10d | %13d | %16s | %12s | %14s |\n", v, total[v], res[v, "ok"], res[v, "triple-fault"], res[v, "stall"], res[v, "fail"], freeze[v], revived[v], rx, median(up, v, nu[v]), median(dn, v, nd[v])
            if (total[v] != res[v, "ok"] || freeze[v]) bad = 1
        }
        printf "\nruns: guest boots (an L1 freeze ends its run); timer revived: L1 lost its timer interrupt during the run and the rig revived it (run.sh; not a failure of the run, counted because the VMM may provoke it); rx length errors: runs where the guest counted any / runs that reported (errors in all); rates: median of the ok runs (rig figures: only ratios mean something).\n"
        for (v in other_rig) printf "note: %d rig run(s) under %s ended with a status other than 0 or 75 (a rig timeout?)\n", other_rig[v], v
        exit bad
    }' "$@"
}

if ((${#parse[@]})); then
    for f in "${parse[@]}"; do [[ -f $f ]] || { echo "net-load.sh: no such console log: $f" >&2; exit 2; }; done
    summary "${parse[@]}" || exit 1
    exit 0
fi

case " $vmms " in
*" firecracker "*) [[ -x $firecracker ]] || die "Firecracker not found at $firecracker (--firecracker PATH)" ;;
esac
bench_setup "$kvmini"
bench_initrd=$("$BENCH_DIR/build-initramfs.sh")
export GUEST_BENCH_INITRD=$bench_initrd
data=$BENCH_WORK/data
if [[ -x $firecracker ]]; then
    bench_pack_firecracker "$firecracker" "$data/fc"
fi
for v in "${variants[@]}"; do
    name=${v%%=*} bin=${v#*=}
    [[ $name =~ ^[a-z0-9]+$ && -x $bin ]] ||
        die "--variant wants NAME=PATH (NAME: a-z0-9, PATH: a static kvmini), got '$v'"
    cp "$bin" "$data/kvmini-$name"
    vmms="$vmms kvmini-$name"
done
[[ -n $log_dir ]] || log_dir=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-net-load.XXXXXX")
mkdir -p "$log_dir"
nvmm=$(wc -w <<<"$vmms")
log "$runs runs per VMM ($vmms), $chunk per L1, iperf3 ${secs}s up + ${secs}s down${len:+ in $len-byte writes}, consoles in $log_dir"

logs=()
first=1
while ((first <= runs)); do
    n=$((runs - first + 1))
    ((n <= chunk)) || n=$chunk
    cat >"$data/params" <<EOF
NETLOAD_RUNS=$n
NETLOAD_FIRST=$first
NETLOAD_SECS=$secs
NETLOAD_LEN=$len
NETLOAD_MEM=$mem
NETLOAD_VMMS="$vmms"
NETLOAD_RUN_TIMEOUT=$run_timeout
NETLOAD_TRACE=$trace
EOF
    console=$log_dir/net-load-$(printf '%04d' "$first").log
    logs+=("$console")
    timeout=$((n * nvmm * (run_timeout + 10) + 60))
    sdir=$(mktemp -d "${TMPDIR:-/tmp}/kvmini-net-load-scenario.XXXXXX")
    cp "$BENCH_DIR/scenarios/net-load.sh" "$sdir/"
    log "runs $first-$((first + n - 1)): one L1 (console $console)"
    locked=()
    [[ -z $lock ]] || locked=(flock "$lock")
    set +e
    "${locked[@]}" "$RESOURCES_DIR/rig/run.sh" --kvmini "$KVMINI_BENCH_BIN" --scenarios "$sdir" \
        --timeout "$timeout" --smp "$smp" --data "$data" >"$console" 2>"$console.stderr"
    rc=$?
    set -e
    echo "@@NETLOAD-RIG rc=$rc" >>"$console"
    rm -rf "$sdir"
    grep -a '@@NETLOAD-RUN' "$console" | sed 's/\r$//; s/^.*@@NETLOAD-RUN /[net-load] /' >&2 || true
    ((rc == 0)) || log "the rig run ended with status $rc (75: L1 froze or broke; see $console.stderr)"
    first=$((first + n))
done
summary "${logs[@]}" || exit 1
