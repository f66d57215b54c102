#!/usr/bin/env bash
# `pipx install` from a clean checkout (the committed tree, via git archive; or the working tree with
# PIPX_SOURCE=worktree) with Debian's pipx into a throwaway PIPX_HOME/PIPX_BIN_DIR, then runs the two
# commands it gives: versions, help, a config written by `generate --reference` checked with -t, and an
# import-pgbouncer translation checked with -t. `make test-pipx`; CI runs it from `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
command -v pipx >/dev/null || { echo "test_pipx.sh: pipx missing (scripts/ensure_deps.sh pipx)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/pgdoorman-pipx.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src"
if [ "${PIPX_SOURCE:-commit}" = worktree ]; then
    tar -C "$ROOT" --exclude=.git --exclude='.venv*' --exclude=build --exclude=.run -cf - . | tar -C "$tmp/src" -xf -
else
    git -C "$ROOT" archive HEAD | tar -C "$tmp/src" -xf -
fi
export PIPX_HOME=$tmp/pipx PIPX_BIN_DIR=$tmp/bin PIPX_MAN_DIR=$tmp/man
start=$(date +%s)
pipx install --python python3 "$tmp/src" >"$tmp/pipx.log" 2>&1 || { cat "$tmp/pipx.log"; exit 1; }
echo "pipx install: $(( $(date +%s) - start ))s"
cd "$tmp"   # not the checkout: the commands must work from what pipx installed
bin=$tmp/bin
"$bin/pg_doorman" --version
"$bin/patroni_proxy" --version
"$bin/pg_doorman" --help >/dev/null
"$bin/patroni_proxy" --help >/dev/null
# It runs pipx's copy, not the checkout.
where=$("$PIPX_HOME/venvs/pgdoorman/bin/python" -c 'import pgdoorman; print(pgdoorman.__file__)')
case $where in "$PIPX_HOME"/venvs/pgdoorman/*) ;; *) echo "imports pgdoorman from $where" >&2; exit 1 ;; esac
# The web console's page is package data (pyproject's [tool.setuptools.package-data]): it must be there.
"$PIPX_HOME/venvs/pgdoorman/bin/python" -c 'from pgdoorman.web import ui; assert all(ui.asset(n) for n in ("index.html", *ui.ASSETS))'
"$bin/pg_doorman" generate --reference -o ref.yaml
"$bin/pg_doorman" -t ref.yaml
printf '[databases]\napp = host=127.0.0.1 port=5432\n[pgbouncer]\nlisten_addr = *\nauth_file = users.txt\n' > pgb.ini
printf '"app" "app-secret"\n' > users.txt
"$bin/pg_doorman" import-pgbouncer pgb.ini -o pgb.yaml 2>/dev/null
"$bin/pg_doorman" -t pgb.yaml
echo "pipx: pg_doorman and patroni_proxy work"
