"""contrib/'s Grafana dashboard and Prometheus alert rules: `promtool check rules` and `promtool test
rules` (contrib/prometheus/pg_doorman-alerts.test.yml) on the rules, and every metric name, and every
label value matched with `=`, used by the dashboard and the rules found in a live /metrics scrape of a
pooler with traffic. promtool comes from Debian's prometheus package (`make deps`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_admin import client
from tests.support.cluster import SCRAM_PASSWORD, SCRAM_USER
from tests.support.pooler import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib/prometheus/pg_doorman-alerts.yml"
RULES_TEST = ROOT / "contrib/prometheus/pg_doorman-alerts.test.yml"
DASHBOARD = ROOT / "contrib/grafana/pg_doorman-dashboard.json"
# Series Prometheus makes itself, not the pooler.
PROMETHEUS_OWN = {"up"}
SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        reason = "promtool not found (make deps installs Debian's prometheus package)"
        print(f"\n{reason}", file=sys.stderr)
        pytest.skip(reason)
    return exe


def test_rules_pass_promtool() -> None:
    exe = promtool()
    check = subprocess.run([exe, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([exe, "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def expressions() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric name, {label: value} of its `=` matchers) for every pg_doorman_* series in `expr`."""
    out = []
    for m in SELECTOR.finditer(expr):
        name, braces = m.group(1), m.group(2) or ""
        if name.startswith("pg_doorman_") or name in PROMETHEUS_OWN:
            out.append((name, {k: v for k, op, v in MATCHER.findall(braces) if op == "=" and "$" not in v}))
    return out


def test_the_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["title"]
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] == "${datasource}", p["title"]


def test_every_metric_used_is_exported(pooler_factory: Any, pg: Any) -> None:
    port = free_port()
    # A pool whose server is not there: a failed server login (pg_doorman_server_login_failures_total).
    users = [{"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 1}]
    p = pooler_factory(start=False, pools={"unreachable": {"server_host": "127.0.0.1", "server_port": free_port(),
                                                           "users": users}})
    p.config["web"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    p.start()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(p.dsn(SCRAM_USER, SCRAM_PASSWORD, "unreachable"))
    with client(p) as c:  # traffic: histograms, byte counters and prepared statements with samples
        for i in range(20):
            c.execute("SELECT %s::int", (i,), prepare=True).fetchall()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s.labels)
    used = [sel for e in expressions() for sel in selectors(e)]
    assert len({n for n, _ in used}) >= 15, used  # the regex found the names: the check below means something
    for name, want in used:
        if name in PROMETHEUS_OWN:
            continue
        assert name in samples, f"{name} is used by contrib/ but not exported"
        assert any(want.items() <= labels.items() for labels in samples[name]), \
            f"{name}{want}: no exported series has these labels"
