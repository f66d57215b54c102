#!/usr/bin/env bash
# An experiment kept for a later try, not part of make, CI or the packages (docs/performance.md, "A compiled
# build (mypyc): measured, not kept"): compiles pgdoorman's per-transaction modules with mypyc into a copy
# of the package outside the checkout. The package in the repository is not touched; the compiled tree is
# used by putting it first on PYTHONPATH (scripts/bench.py --src TREE, PGDOORMAN_SRC=TREE pytest ...).
# Usage: scripts/build_mypyc.sh [PYTHON]     (default .venv/bin/python; prints the tree on its last line)
# Env:   VPY (default .venv/bin/python), PGDOORMAN_CACHE (default /var/cache/pgdoorman). The tree is
#        $PGDOORMAN_CACHE/mypyc-<python tag>-<git hash>[-dirty-<diff hash>]/ and holds pgdoorman/ with
#        .so files next to the .py files they replace (the .py files stay for tracebacks and for the
#        modules not compiled). Reused when it already exists.
# mypyc must run under the interpreter it builds for (a free-threaded 3.13t gets free-threaded C code);
# when that interpreter has no mypy, a build venv with the same mypy version as .venv is made next to the
# trees ($PGDOORMAN_CACHE/mypyc-venv-<python tag>).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PGDOORMAN_CACHE:-/var/cache/pgdoorman}
VPY=${VPY:-$ROOT/.venv/bin/python}  # the dev venv: its mypy version is the one used
PY=${1:-$VPY}
log() { echo "build_mypyc: $*" >&2; }

# The modules on the per-transaction path: the loop and the connection, the framing and message builders,
# core/ (the pool and what it uses), session/ (the client and server connection classes and their parts),
# the worker. session/noqueue.py stays Python: mypyc compiles a deque subclass into a module that crashes
# the interpreter on import.
MODULES=(
    pgdoorman/net/*.py pgdoorman/protocol/framing.py pgdoorman/protocol/messages.py pgdoorman/protocol/auth.py
    pgdoorman/core/*.py pgdoorman/worker.py
)
for f in "$ROOT"/pgdoorman/session/*.py; do
    case $f in */noqueue.py) ;; *) MODULES+=("pgdoorman/session/${f##*/}") ;; esac
done

tag=$("$PY" -c 'import sys, sysconfig; print(sys.implementation.cache_tag + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))')
rev=$(git -C "$ROOT" rev-parse --short HEAD)
if [ -n "$(git -C "$ROOT" status --porcelain -- pgdoorman scripts/build_mypyc.sh)" ]; then
    rev=$rev-dirty-$( { git -C "$ROOT" diff HEAD -- pgdoorman scripts/build_mypyc.sh;
                        git -C "$ROOT" ls-files -o --exclude-standard -- pgdoorman | xargs -r cat; } | sha1sum | cut -c1-8)
fi
OUT=$CACHE/mypyc-$tag-$rev
if [ -f "$OUT/.built" ]; then
    log "reusing $OUT"
    echo "$OUT"
    exit 0
fi

MYPY_VERSION=$("$VPY" -c 'import importlib.metadata as m; print(m.version("mypy"))')
BUILD_PY=$PY
if ! "$PY" -c 'import mypyc, setuptools' 2>/dev/null; then
    BVENV=$CACHE/mypyc-venv-$tag
    if [ ! -x "$BVENV/bin/python" ] || ! "$BVENV/bin/python" -c 'import mypyc, setuptools' 2>/dev/null; then
        log "making build venv $BVENV (mypy==$MYPY_VERSION, setuptools)"
        "$PY" -m venv "$BVENV"
        # mypy's optional native parser (ast-serialize) has no wheel for every interpreter (none for
        # 3.13t) and its sdist needs Rust crates: without it mypy uses its Python parser, so when the
        # full install fails mypy is installed without it.
        if ! "$BVENV/bin/python" -m pip install -q "mypy==$MYPY_VERSION" setuptools; then
            log "installing mypy without its native parser (ast-serialize)"
            "$BVENV/bin/python" -m pip install -q --no-deps "mypy==$MYPY_VERSION"
            "$BVENV/bin/python" -m pip install -q mypy_extensions typing_extensions pathspec librt setuptools
        fi
    fi
    BUILD_PY=$BVENV/bin/python
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/mypyc-build.XXXXXX")
# shellcheck disable=SC2064
trap "rm -rf '$work'" EXIT
cp -a "$ROOT/pgdoorman" "$work/pgdoorman"
find "$work/pgdoorman" -name __pycache__ -prune -exec rm -rf {} +
cp "$ROOT/pyproject.toml" "$work/"
start=$(date +%s)
log "compiling ${#MODULES[@]} modules with $BUILD_PY (mypy $MYPY_VERSION) in $work"
flags=()
if ! "$BUILD_PY" -c 'import ast_serialize' 2>/dev/null; then
    flags+=(--no-native-parser)
fi
if ! (cd "$work" && "$BUILD_PY" -m mypyc "${flags[@]}" "${MODULES[@]}" >&2); then
    log "mypyc failed: see above (a free-threaded 3.13 cannot be built for: docs/performance.md)"
    exit 1
fi
log "compiled in $(( $(date +%s) - start )) s"
rm -rf "$work/build" "$work/pyproject.toml"
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
touch "$OUT/.built"
du -ch "$OUT"/*.so "$OUT"/pgdoorman/*.so "$OUT"/pgdoorman/*/*.so 2>/dev/null | tail -1 | sed 's/^/build_mypyc: .so total /' >&2
echo "$OUT"
