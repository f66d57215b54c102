#!/usr/bin/env bash
# Installs the Debian packages the tests, `make run`, the benchmark and the free-threaded build need.
# Idempotent and quiet when everything is present; runs `apt-get update` at most once per call.
# Usage: scripts/ensure_deps.sh [postgres|pgbouncer|pgbouncerbuild|promtool|browser|ftbuild|deb|pipx|rootfs|podman|all]...   (default: postgres)
set -euo pipefail

want=()
for group in "${@:-postgres}"; do
    case "$group" in
        # openssl: the TLS tests make their throwaway certificates with it.
        postgres) want+=(postgresql postgresql-client libpq5 openssl) ;;
        pgbouncer) want+=(pgbouncer) ;;
        # `promtool check metrics` validates our /metrics exposition in the tests (Debian ships it in prometheus).
        promtool) command -v promtool >/dev/null || want+=(prometheus) ;;
        # The web console's tests (tests/browser) drive Debian's headless Chromium with Selenium.
        browser) want+=(chromium chromium-driver) ;;
        # What CPython's configure needs for ssl (pip), zlib (wheels), ctypes (psycopg's libpq
        # binding), and the other stdlib modules the test tools import.
        ftbuild) want+=(build-essential dpkg-dev pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev
                        liblzma-dev libsqlite3-dev libreadline-dev libncurses-dev uuid-dev libpq5) ;;
        # scripts/build_pgbouncer.sh: a current PgBouncer from Debian's source package (make bench).
        pgbouncerbuild) want+=(build-essential dpkg-dev pkg-config libssl-dev libevent-dev libc-ares-dev libpam0g-dev) ;;
        # make deb / test-deb: dpkg-deb (dpkg), lintian, man -l (man-db, groff), logrotate and
        # (systemd-analyze verify too, when systemd is there) for the package test, python3-yaml for the installed package.
        deb) want+=(dpkg lintian man-db groff-base logrotate python3-yaml adduser) ;;
        # scripts/build_rootfs.py and tests/integration/test_image_rootfs.py: the container image's root
        # built with debootstrap and run in namespaces (unshare/nsenter: util-linux; ip: iproute2);
        # systemd-container (systemd-nspawn) boots the packaged unit in such a root.
        rootfs) want+=(debootstrap util-linux iproute2 systemd-container) ;;
        # tests/integration/test_image_podman.py: Debian's podman builds the Dockerfile on that root imported
        # as its base image (buildah's chroot isolation) and runs it with runc (crun refuses hybrid cgroups).
        podman) want+=(podman buildah runc) ;;
        # make test-pipx: Debian's pipx (and the venv module it needs).
        pipx) want+=(pipx python3-venv) ;;
        all) exec "$0" postgres pgbouncer promtool browser ftbuild deb pipx rootfs podman ;;
        *) echo "ensure_deps.sh: unknown group '$group' (postgres|pgbouncer|promtool|browser|ftbuild|deb|pipx|rootfs|podman|all)" >&2; exit 2 ;;
    esac
done

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

missing=()
for pkg in "${want[@]}"; do
    # The postgres group is satisfied by any server version that ships initdb and pg_ctl.
    if [ "$pkg" = postgresql ] && compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
        continue
    fi
    if [ "$pkg" = postgresql-client ] && command -v psql >/dev/null; then
        continue
    fi
    installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo=(sudo); else
        echo "ensure_deps.sh: need root to install: ${missing[*]}" >&2; exit 1
    fi
else
    sudo=()
fi

echo "ensure_deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Debian's pgbouncer package starts a system pgbouncer on 6432 where the init system allows it;
# that port belongs to `make run` and the benchmark here, so stop it again.
# The same goes for the prometheus server that comes with promtool (port 9090, and 9127-style exporters).
for svc in pgbouncer prometheus; do
    printf '%s\n' "${missing[@]}" | grep -qx "$svc" || continue
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
        "${sudo[@]}" "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
done
