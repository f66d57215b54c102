"""Throwaway certificates for TLS tests, made with the openssl command line tool (installed by
scripts/ensure_deps.sh): a CA, a server certificate for 127.0.0.1/localhost signed by it, and a client
certificate for CN=app_scram signed by it."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


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
