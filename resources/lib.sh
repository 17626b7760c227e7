# Shared helpers for the resources/ build scripts. Source it; do not run it.
#
# Contract of every build script: stdout carries ONLY the resulting artefact
# path(s); all progress and diagnostics go to stderr. Callers (tests/e2e.rs,
# tests/run-all.sh, the rig) read stdout to find the artefacts.

# Directory of the repository's resources/ (this file lives there).
# shellcheck disable=SC2034 # used by the scripts that source this file
RESOURCES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Root of the artefact cache. Everything built here is keyed by a content hash,
# so the cache can be shared between checkouts and wiped at any time.
kvmini_cache_root() {
    echo "${KVMINI_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmini}"
}

# Progress line on stderr, prefixed with the script name.
log() {
    echo "[$(basename "$0")] $*" >&2
}

die() {
    echo "[$(basename "$0")] ERROR: $*" >&2
    exit 1
}

# sha256 of the concatenation of files and literal strings (args prefixed with
# "str:" are hashed as text). Used to key cache directories.
content_hash() {
    local arg
    for arg in "$@"; do
        if [[ $arg == str:* ]]; then
            printf '%s\n' "${arg#str:}"
        else
            [[ -f $arg ]] || die "content_hash: missing file $arg"
            cat "$arg"
        fi
    done | sha256sum | cut -c1-16
}

# Every script that sources this file says where it failed (the command, its
# exit status and its line) when `set -e` ends it: never a silent exit. The
# ERR trap only records (it also fires in subshells whose failure is handled),
# and only under `set -e` (after `set +e` the script handles failures itself,
# and a later deliberate `exit 1` must not be blamed on one of them); the EXIT
# trap prints when the script really ends in failure. Scripts add
# their own clean-up with on_exit, not with `trap ... EXIT`.
set -o errtrace
_failed_at=""
_exit_cmds=()
trap '_rc=$?; [[ $- != *e* ]] || _failed_at="line $LINENO: \`$BASH_COMMAND\` exited with status $_rc"' ERR
_on_exit() {
    local rc=$? cmd
    EXIT_STATUS=$rc
    for cmd in "${_exit_cmds[@]}"; do eval "$cmd" || true; done
    if ((rc != 0)) && [[ -n $_failed_at ]]; then
        echo "[$(basename "$0")] FAILED at $_failed_at" >&2
    fi
    exit "$rc"
}
trap _on_exit EXIT
# on_exit CMD: run CMD (a shell string) when the script exits, however it ends;
# EXIT_STATUS holds the script's exit status then.
on_exit() {
    _exit_cmds+=("$1")
}

# dpkg_status PKG...: "NAME STATUS-WORDS VERSION" for each named package dpkg
# knows. dpkg-query exits 1 when any of them was never installed (the usual
# case on a new machine), which is not an error here.
dpkg_status() {
    dpkg-query -W -f='${Package} ${Status} ${Version}\n' "$@" 2>/dev/null || true
}

# Installed version of a Debian package, or empty.
pkg_version() {
    dpkg_status "$1" | awk '$3 == "ok" && $4 == "installed" { print $5 }'
}

# apt_update: `apt-get update` that fails when any index fails to download
# (plain apt-get update exits 0 then, and the next step misleadingly says
# "no package named ..."), and says whether the archive was unreachable.
apt_update() {
    local sudo=() out rc=0
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null || die "need root or sudo to run apt-get update"
        sudo=(sudo)
    fi
    log "apt-get update (Debian's package lists)"
    out=$("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        -oAcquire::Retries=5 -oAPT::Update::Error-Mode=any 2>&1) || rc=$?
    ((rc == 0)) && return 0
    tail -n 15 <<<"$out" >&2
    if grep -qE "Temporary failure resolving|Could not resolve|Could not connect|Connection timed out|Network is unreachable" <<<"$out"; then
        die "apt-get update could not reach the package archive (exit status $rc; see above): check the network, DNS and proxy settings, then run this again"
    fi
    die "apt-get update failed (exit status $rc; its last lines are above): check the apt sources (Debian 12 bookworm expected)"
}

# apt_install PKG...: install the packages that are missing. Runs
# `apt-get update` only when something has to be installed, so cached runs
# never touch the network.
apt_install() {
    local missing=() p installed
    # One dpkg-query for all of them: this runs on every (cached) kvmini run.
    installed=$(dpkg_status "$@" |
        awk '$3 == "ok" && $4 == "installed" { sub(/:.*/, "", $1); print $1 }')
    for p in "$@"; do
        grep -qxF "$p" <<<"$installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing missing Debian packages: ${missing[*]}"
    local sudo=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null ||
            die "need root or sudo to install: ${missing[*]} (apt-get install ${missing[*]})"
        sudo=(sudo)
    fi
    apt_update
    local out rc=0
    out=$("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q -oAcquire::Retries=5 --no-install-recommends "${missing[@]}" 2>&1) || rc=$?
    if ((rc != 0)); then
        tail -n 15 <<<"$out" >&2
        local unknown=()
        for p in "${missing[@]}"; do
            apt-cache show "$p" >/dev/null 2>&1 || unknown+=("$p")
        done
        ((${#unknown[@]} == 0)) ||
            die "apt has no package named ${unknown[*]} (exit status $rc of apt-get install ${missing[*]}): check the apt sources (Debian 12 bookworm expected)"
        die "apt-get install ${missing[*]} failed with exit status $rc; its last lines are above"
    fi
    log "installed: ${missing[*]}"
}

# run_logged LOGFILE LABEL CMD...: run CMD with its output in LOGFILE and print
# a short progress line to stderr every 30 s so CI is never silent for long.
# On failure, shows the tail of the log.
run_logged() {
    local logfile=$1 label=$2
    shift 2
    local start=$SECONDS
    "$@" >"$logfile" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        # `|| true`: a stray signal to sleep must not abort the build (set -e).
        sleep 5 || true
        if (((SECONDS - start) % 30 < 5)) && kill -0 "$pid" 2>/dev/null; then
            log "$label: $((SECONDS - start))s, last: $(tail -n1 "$logfile" | cut -c1-100)"
        fi
    done
    if ! wait "$pid"; then
        echo "---- last 40 lines of $logfile ----" >&2
        tail -n 40 "$logfile" >&2
        die "$label failed (full log: $logfile)"
    fi
    log "$label: done in $((SECONDS - start))s"
}

# copy_with_libs ROOT FILE...: copies each executable FILE to the same path
# under ROOT with the shared libraries and the loader it needs (from ldd),
# so it runs in a minimal initramfs. Static binaries are copied alone.
copy_with_libs() {
    local root=$1 f libs lib
    shift
    for f in "$@"; do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
        libs=$(ldd "$f" 2>/dev/null) || continue
        while read -r lib; do
            [[ -e $root$lib ]] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs")
    done
}
