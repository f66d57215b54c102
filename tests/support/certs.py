"""Throwaway certificates for TLS tests, made with the openssl command line tool (installed by
scripts/ensure_deps.sh): a CA, a server certificate for 127.0.0.1/localhost signed by it, a client
certificate signed by it and a second CA that signed nothing; and a PostgreSQL that uses them."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster import PgCluster, throwaway_cluster


@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str  # a CA that signed nothing here: client certificates fail against it


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def _signed(d: Path, name: str, cn: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


def make_certs(d: Path, client_cn: str) -> Certs:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl tool is missing: scripts/ensure_deps.sh installs it")
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other_ca")
    _signed(d, "server", "localhost", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _signed(d, "client", client_cn, "ca", "extendedKeyUsage=clientAuth\n")
    for key in d.glob("*.key"):
        os.chmod(key, 0o600)  # libpq refuses a client key readable by others
    return Certs(str(d / "ca.crt"), str(d / "server.crt"), str(d / "server.key"), str(d / "client.crt"),
                 str(d / "client.key"), str(d / "other_ca.crt"))


@contextmanager
def tls_cluster(certs: Certs, hba: str) -> Iterator[PgCluster]:
    """A throwaway PostgreSQL (the suite's roles and database) with ssl = on, `certs`' server certificate,
    `certs.ca` for client certificates, and `hba` as its whole pg_hba.conf."""

    def install(pg: PgCluster) -> None:
        for src, name in ((certs.server_cert, "server.crt"), (certs.server_key, "server.key"), (certs.ca, "ca.crt")):
            dst = os.path.join(pg.datadir, name)
            shutil.copy(src, dst)
            os.chmod(dst, 0o600)
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(dst, pw.pw_uid, pw.pw_gid)
        with open(os.path.join(pg.datadir, "pg_hba.conf"), "w", encoding="utf-8") as f:
            f.write(hba)

    settings = {"ssl": "on", "ssl_cert_file": "'server.crt'", "ssl_key_file": "'server.key'", "ssl_ca_file": "'ca.crt'"}
    with throwaway_cluster("pgdoorman-test-tlspg-", settings, install, stop_mode="immediate") as cluster:
        yield cluster
