#!/usr/bin/env bash
# Installs the toolchains and client drivers that tests/drivers/ runs against pgdoorman, on a bare
# Debian 12/13 machine run as root. Idempotent: a second run only checks what is already there.
#
# Only Debian's archive, the npm registry and (for greenlet) PyPI are used: Node packages are pinned
# by tests/drivers/node/package-lock.json; Go drivers and Rust crates come from Debian's packaged
# sources and are built offline; the JDBC driver is Debian's libpostgresql-jdbc-java.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[install_drivers] %s\n' "$*"; }

apt_updated=0
apt_install() {
    # Installs only the packages that are missing, so a second run does not touch apt at all.
    local missing=()
    local p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    if [ "$apt_updated" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

have_pkg() {
    # True when the package exists in the apt lists (after an update), whatever its install state.
    apt-cache show "$1" >/dev/null 2>&1
}

if [ "$(id -u)" -ne 0 ]; then
    echo "install_drivers.sh must run as root (it uses apt-get)" >&2
    exit 1
fi

# --- Node: pg and postgres (postgres.js) pinned by the committed lock file -----------------------
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_dir="$ROOT/tests/drivers/node"
# npm ci wipes node_modules and refetches; skip it when the lock file is unchanged since the last run.
lock_sum="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
stamp="$node_dir/node_modules/.installed-lock-sha256"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
    log "npm ci in tests/drivers/node"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_sum" >"$stamp"
else
    log "node_modules up to date"
fi

# --- Go: compiler and the drivers' Debian-packaged sources (GOPATH=/usr/share/gocode) -------------
if [ "$apt_updated" -eq 0 ] && ! have_pkg golang-github-lib-pq-dev; then
    apt-get update -qq
    apt_updated=1
fi
pgx_pkg=golang-github-jackc-pgx-v4-dev
if ! have_pkg "$pgx_pkg" && have_pkg golang-github-jackc-pgx-v5-dev; then
    pgx_pkg=golang-github-jackc-pgx-v5-dev
fi
apt_install golang-go "$pgx_pkg" golang-github-lib-pq-dev

# --- Java: JDK and pgjdbc (jar in /usr/share/java) ------------------------------------------------
if ! command -v javac >/dev/null 2>&1; then
    apt_install default-jdk-headless
fi
apt_install libpostgresql-jdbc-java

# --- Further drivers available from Debian: Ruby pg and PHP PDO_pgsql -------------------------------
apt_install ruby ruby-pg php-cli php-pgsql

# --- Rust: cargo and tokio-postgres from Debian's packaged crates (/usr/share/cargo/registry) ------
# crates.io is not reachable; run_matrix.py points cargo at Debian's registry and builds offline.
# native-tls and tokio-native-tls (OpenSSL, hence libssl-dev and pkg-config) give it TLS for the matrix's -tls modes.
apt_install cargo librust-tokio-postgres-dev librust-tokio-dev librust-futures-util-dev \
    librust-bytes-dev librust-md5-dev librust-native-tls-dev librust-tokio-native-tls-dev libssl-dev pkg-config

# --- Python: SQLAlchemy's asyncio extension needs greenlet ------------------------------------------
# The Python drivers themselves come from the project's test extras (.venv); greenlet is the one
# piece SQLAlchemy only pulls in through its [asyncio] extra, so make sure it is importable.
py="${PYTHON:-$ROOT/.venv/bin/python}"
if [ -x "$py" ] && ! "$py" -c 'import greenlet' 2>/dev/null; then
    log "pip install greenlet into $py"
    "$py" -m pip install -q greenlet
fi

log "done: node $(node --version), $(go version | cut -d' ' -f3), javac $(javac -version 2>&1 | cut -d' ' -f2), ruby $(ruby -e 'print RUBY_VERSION'), php $(php -r 'echo PHP_VERSION;'), $(/usr/bin/cargo --version)"
