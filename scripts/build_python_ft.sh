#!/usr/bin/env bash
# Builds a free-threaded CPython 3.13t from Debian's python3.13 source package into a cache outside
# the checkout, then makes the .venv-ft virtualenv that `make test` uses for the concurrency tests.
# Usage: scripts/build_python_ft.sh        (prints the venv interpreter path on its last line)
# Env:   PGDOORMAN_CACHE (default /var/cache/pgdoorman), PY_FT_VERSION (Debian version to fetch).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PGDOORMAN_CACHE:-/var/cache/pgdoorman}
PREFIX=$CACHE/python3.13t
PY=$PREFIX/bin/python3.13t
VENV=$ROOT/.venv-ft
# The exact Debian upload we build; trixie carries it. Overridable because the archive drops
# superseded uploads, in which case an unpinned fetch is tried below.
PY_FT_VERSION=${PY_FT_VERSION:-3.13.5-2+deb13u5}

log() { echo "build_python_ft: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

build_interpreter() {
    # Build deps of a useful CPython (ssl for pip, zlib for wheels, ffi for ctypes -> psycopg, ...).
    "$ROOT/scripts/ensure_deps.sh" ftbuild

    local src_list=/etc/apt/sources.list.d/pgdoorman-trixie-src.list
    if [ ! -f "$src_list" ]; then
        log "adding trixie deb-src line ($src_list)"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
            | as_root tee "$src_list" >/dev/null
        as_root apt-get update -qq
    fi

    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/pyft-build.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    cd "$work"
    # --download-only + dpkg-source --skip-patches: upstream 3.13.5 as Debian ships it, built with
    # upstream's own build system. Debian's patches are written for its packaging layout (multiarch
    # paths, dist-packages), not for a private --prefix install.
    fetch() { apt-get source -qq --download-only "$1" >"$work/apt-source.log" 2>&1; }
    if ! fetch "python3.13=$PY_FT_VERSION"; then
        # Stale or missing package lists (the source line was added by an earlier run): refresh once.
        as_root apt-get update -qq
        if ! fetch "python3.13=$PY_FT_VERSION"; then
            log "python3.13=$PY_FT_VERSION not in the archive; fetching the current python3.13 source"
            fetch python3.13 || { cat "$work/apt-source.log" >&2; exit 1; }
        fi
    fi
    local dsc
    dsc=$(ls python3.13_*.dsc | head -n 1)
    # apt already checked the files against the signed Release; the uploader's key (debian-keyring)
    # is not needed, so dpkg-source's "cannot verify inline signature" warning goes to a log.
    dpkg-source --skip-patches -x "$dsc" src >"$work/dpkg-source.log" 2>&1 \
        || { cat "$work/dpkg-source.log" >&2; exit 1; }
    cd src
    log "configuring in $work/src (prefix $PREFIX)"
    ./configure --disable-gil --prefix="$PREFIX" --with-ensurepip=install >"$work/configure.log" 2>&1 \
        || { tail -n 40 "$work/configure.log" >&2; exit 1; }
    log "building with make -j$(nproc) (a few minutes)"
    make -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -n 60 "$work/make.log" >&2; exit 1; }
    rm -rf "$PREFIX"
    make install >"$work/install.log" 2>&1 || { tail -n 40 "$work/install.log" >&2; exit 1; }
    # Written last: an interrupted install leaves no marker and is rebuilt next time.
    touch "$PREFIX/.complete"
    cd /
    rm -rf "$work"
    trap - EXIT
}

gil_disabled() {
    "$1" -c 'import sys, sysconfig; sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") and not sys._is_gil_enabled() else 1)'
}

mkdir -p "$CACHE"
if [ -f "$PREFIX/.complete" ] && gil_disabled "$PY"; then
    log "reusing $PY"
else
    build_interpreter
    gil_disabled "$PY" || { log "$PY was built but its GIL is enabled"; exit 1; }
fi

# The venv is rebuilt when missing, when made from another interpreter, or when pyproject changed.
stamp=$VENV/.pgdoorman-installed
if [ ! -x "$VENV/bin/python" ] || [ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$PY")" ] \
        || [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "creating $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    pip_log=$(mktemp "${TMPDIR:-/tmp}/pyft-pip.XXXXXX")
    pip_install() {
        "$VENV/bin/python" -m pip install -q "$@" >>"$pip_log" 2>&1 \
            || { tail -n 40 "$pip_log" >&2; return 1; }
    }
    pip_install --upgrade pip
    # Required for the concurrency run. psycopg without [binary]: the pure-Python build over
    # Debian's libpq5 brings no extension module that could re-enable the GIL.
    pip_install pytest pytest-timeout PyYAML psycopg
    pip_install --no-deps -e "$ROOT"
    # Best effort: the rest of the [test] extra, since pytest imports every module it collects under
    # tests/integration even when only `-m concurrency` tests run. Linters and stubs are not needed.
    "$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY' >"$VENV/.test-extras"
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"].get("test", [])
# PyJWT[crypto] and python-pam serve test modules the concurrency run never collects (and cryptography
# has no 3.13t wheel: pip would try to build it from source).
skip = ("pytest", "psycopg[", "ruff", "mypy", "types-", "PyJWT", "python-pam")
print("\n".join(r for r in extras if not r.replace(" ", "").startswith(skip)))
PY
    while read -r req; do
        [ -n "$req" ] || continue
        if pip_install "$req" 2>/dev/null; then
            log "installed $req"
        else
            log "$req did not install for 3.13t; tests importing it cannot be collected under .venv-ft"
        fi
    done <"$VENV/.test-extras"
    rm -f "$pip_log"
    touch "$stamp"
fi
echo "$VENV/bin/python"
