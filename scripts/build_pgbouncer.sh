#!/usr/bin/env bash
# Builds a current PgBouncer (1.24+, with max_prepared_statements: prepared statements in transaction
# mode) from Debian trixie's pgbouncer source package into a cache outside the checkout. `make bench`
# compares pgdoorman against it next to the PgBouncer Debian 12 ships (1.18).
# Usage: scripts/build_pgbouncer.sh        (prints the pgbouncer binary path on its last line)
# Env:   PGDOORMAN_CACHE (default /var/cache/pgdoorman), PGBOUNCER_VERSION (Debian version to fetch).
# Works as root (or with sudo) on Debian 12 and 13; idempotent: a finished build is reused.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PGDOORMAN_CACHE:-/var/cache/pgdoorman}
PREFIX=$CACHE/pgbouncer
EXE=$PREFIX/bin/pgbouncer
# The exact Debian upload we build; trixie carries it. Overridable because the archive drops
# superseded uploads, in which case an unpinned fetch is tried below.
PGBOUNCER_VERSION=${PGBOUNCER_VERSION:-1.24.1-1+deb13u2}

log() { echo "build_pgbouncer: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# True when the cached binary runs and is new enough to know max_prepared_statements (1.21+).
usable() {
    [ -f "$PREFIX/.complete" ] && [ -x "$EXE" ] || return 1
    local v
    v=$("$EXE" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n 1)
    [ -n "$v" ] || return 1
    set -- $v
    [ "$1" -gt 1 ] || { [ "$1" -eq 1 ] && [ "$2" -ge 21 ]; }
}

build() {
    # pkg-config, a C compiler, and the libraries Debian's package links against (libevent, c-ares
    # for DNS, PAM, OpenSSL). systemd socket activation and the man pages (pandoc) are left out.
    "$ROOT/scripts/ensure_deps.sh" pgbouncerbuild

    # The same deb-src line build_python_ft.sh adds: trixie's sources only (no binaries from trixie).
    local src_list=/etc/apt/sources.list.d/pgdoorman-trixie-src.list
    if [ ! -f "$src_list" ]; then
        log "adding trixie deb-src line ($src_list)"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
            | as_root tee "$src_list" >/dev/null
        as_root apt-get update -qq
    fi

    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/pgbouncer-build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cd "$work"
    fetch() { apt-get source -qq --download-only "$1" >"$work/apt-source.log" 2>&1; }
    if ! fetch "pgbouncer=$PGBOUNCER_VERSION"; then
        # Stale or missing package lists (the source line was added by an earlier run): refresh once.
        as_root apt-get update -qq
        if ! fetch "pgbouncer=$PGBOUNCER_VERSION"; then
            log "pgbouncer=$PGBOUNCER_VERSION not in the archive; fetching the current pgbouncer source"
            fetch pgbouncer || { cat "$work/apt-source.log" >&2; exit 1; }
        fi
    fi
    local dsc
    dsc=$(ls pgbouncer_*.dsc | head -n 1)
    # Unlike the Python build, Debian's patches are applied: they are small fixes (the +debNuN
    # security uploads among them) and touch no install paths. apt checked the files against the
    # signed Release, so dpkg-source's "cannot verify inline signature" warning goes to a log.
    dpkg-source -x "$dsc" src >"$work/dpkg-source.log" 2>&1 || { cat "$work/dpkg-source.log" >&2; exit 1; }
    cd src
    log "configuring $(basename "$dsc" .dsc) in $work/src (prefix $PREFIX)"
    ./configure --prefix="$PREFIX" --with-cares --with-pam --without-systemd >"$work/configure.log" 2>&1 \
        || { tail -n 40 "$work/configure.log" >&2; exit 1; }
    log "building with make -j$(nproc) (about a minute)"
    # Only the program: `make all` would also build the man pages, which needs pandoc.
    make -j"$(nproc)" pgbouncer >"$work/make.log" 2>&1 || { tail -n 60 "$work/make.log" >&2; exit 1; }
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX/bin"
    install -m 0755 pgbouncer "$EXE"
    basename "$dsc" .dsc >"$PREFIX/SOURCE"
    # Written last: an interrupted install leaves no marker and is rebuilt next time.
    touch "$PREFIX/.complete"
    cd /
    rm -rf "$work"
    trap - EXIT
}

mkdir -p "$CACHE"
if usable; then
    log "reusing $EXE"
else
    build
    usable || { log "$EXE was built but does not run or is older than 1.21: $("$EXE" --version 2>&1 | head -n 1)"; exit 1; }
fi
# Readable and executable by the postgres user, which the benchmark runs PgBouncer as (best effort: a
# non-root user reusing root's build cannot chmod, and need not).
chmod 0755 "$CACHE" "$PREFIX" "$PREFIX/bin" 2>/dev/null || true
echo "$EXE"
