# A Debian root that boots systemd, for tests/integration/test_deb_systemd.py: scripts/build_rootfs.py
# builds it from this file (cached); the test copies it fresh, installs build/pg-doorman_*.deb into it with
# apt (which resolves the package's dependencies from the archive) and boots it with systemd-nspawn.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends systemd systemd-sysv dbus \
    && rm -rf /var/lib/apt/lists/* \
    && systemctl mask console-getty.service getty.target apt-daily.timer apt-daily-upgrade.timer \
        e2scrub_all.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer
