"""`make bench-tls`'s headline cells run end to end, tiny (issue 15 item 5): scripts/bench.py --tls starts
its own PostgreSQL, pgdoorman and (when installed) Debian's PgBouncer, runs the -c N extended-protocol cell over
TLS and the login storm (fresh poolers, TLS + SCRAM-SHA-256, pgbench -C -R), and writes the report. Checked:
every cell ran and every transaction and login succeeded through every pooler, and the report carries both
headline sections with their rows. No timing is asserted (the figures are whatever this machine gives)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pooler import free_port_block

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def test_headline_and_tls_scram_login_storm_through_every_pooler(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (bench.py makes its certificate with it)")
    if not any(os.access(f"/usr/lib/postgresql/{v}/bin/pgbench", os.X_OK)
               for v in (os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else [])):
        pytest.skip("pgbench is not installed (apt-get install postgresql-15)")
    targets = ["pgdoorman"]
    if shutil.which("pgbouncer") or os.path.exists("/usr/sbin/pgbouncer"):
        targets.insert(0, "pgbouncer")
    out, raw = tmp_path / "report.md", tmp_path / "raw.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--tls", "--only", ",".join(targets),
           "--python", sys.executable, "--scale", "1", "--modes", "extended", "--clients", "2", "--duration", "3",
           "--headline-clients", "20", "--headline-duration", "3", "--login-storm", "3", "--login-storm-rate", "10",
           "--wait-quiet", "0", "--retries", "0", "--no-charts", "--out", str(out), "--json", str(raw),
           "--port-base", str(free_port_block(4))]  # not bench.py's default ports: a `make bench` may be running
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(raw.read_text())
    for key, clients in (("headline", 20), ("login_storm_tls", 10)):
        cells = res[key]
        assert [c["target"] for c in cells] == targets, key
        for c in cells:
            assert (c["status"], c["failed"], c["aborted_clients"], c["clients"]) == ("ok", 0, 0, clients), (key, c)
            assert c["n_tx"] > 0 and c["p99_ms"] is not None and c["conn_ms"] is not None, (key, c)
    report = out.read_text()
    assert "## Headline: 20 clients over TLS, -M extended" in report
    assert "## Headline: login storm over TLS with SCRAM-SHA-256" in report
    for t in targets:
        assert f"| {t} | extended (headline) | 20 |" in report
        assert f"| {t} | simple (login storm) | 10 |" in report
    if "pgbouncer" in targets:
        assert "* pgdoorman / PgBouncer" in report
    assert "Every transaction through the poolers succeeded." in report
