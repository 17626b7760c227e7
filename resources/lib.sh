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

# Installed version of a Debian package, or empty.
pkg_version() {
    dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
        awk '$1 == "install" && $3 == "installed" { print $4 }'
}

# apt_install PKG...: install the packages that are missing. Runs
# `apt-get update` only when something has to be installed, so cached runs
# never touch the network.
apt_install() {
    local missing=() p installed
    # One dpkg-query for all of them: this runs on every (cached) kvmini run.
    installed=$(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null |
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
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
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
