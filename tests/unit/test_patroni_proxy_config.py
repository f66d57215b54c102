"""patroni_proxy configuration: defaults, PgDoorman's example configs, and one FILE: KEY: why line per
problem for every kind of mistake."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgdoorman.patroni_proxy.config import ConfigError, format_addr, load, loads, parse_addr, validate

# PgDoorman's README example (tls commented out there too).
README_EXAMPLE = """
cluster_update_interval: 3
listen_address: "127.0.0.1:8009"
clusters:
  my_cluster:
    hosts:
      - "http://192.168.1.1:8008"
      - "http://192.168.1.2:8008"
      - "http://192.168.1.3:8008"
    ports:
      master:
        listen: "0.0.0.0:6432"
        roles: ["leader"]
        host_port: 5432
      replicas:
        listen: "0.0.0.0:6433"
        roles: ["sync", "async"]
        host_port: 5432
        max_lag_in_bytes: 16777216
"""


def base() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(README_EXAMPLE)
    return doc


def errors_of(doc: object) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        validate(doc, "pp.yaml")
    return ei.value.errors


def test_readme_example_loads_with_pgdoorman_defaults() -> None:
    cfg = loads(README_EXAMPLE, "pp.yaml")
    assert cfg.cluster_update_interval == 3
    assert cfg.listen_address == ("127.0.0.1", 8009)
    assert cfg.patroni_api_timeout == 5
    c = cfg.clusters["my_cluster"]
    assert c.hosts == ("http://192.168.1.1:8008", "http://192.168.1.2:8008", "http://192.168.1.3:8008")
    assert c.tls is None
    assert c.ports["master"].roles == frozenset({"leader"})
    assert c.ports["master"].listen == ("0.0.0.0", 6432)
    assert c.ports["master"].max_lag_in_bytes is None
    assert c.ports["replicas"].roles == frozenset({"sync", "async"})
    assert c.ports["replicas"].max_lag_in_bytes == 16777216
    assert cfg.warnings == ()


def test_defaults_when_only_clusters_given() -> None:
    doc = base()
    del doc["cluster_update_interval"], doc["listen_address"]
    cfg = validate(doc, "pp.yaml")
    assert cfg.cluster_update_interval == 3.0
    assert cfg.listen_address == ("127.0.0.1", 8009)
    assert cfg.connect_timeout == 10.0


def test_roles_are_case_insensitive_and_any_is_a_role() -> None:
    doc = base()
    doc["clusters"]["my_cluster"]["ports"]["master"]["roles"] = ["LEADER", "Any"]
    cfg = validate(doc, "pp.yaml")
    assert cfg.clusters["my_cluster"].ports["master"].roles == frozenset({"leader", "any"})


def test_ipv6_listen_address() -> None:
    doc = base()
    doc["clusters"]["my_cluster"]["ports"]["master"]["listen"] = "[::1]:6432"
    cfg = validate(doc, "pp.yaml")
    assert cfg.clusters["my_cluster"].ports["master"].listen == ("::1", 6432)
    assert format_addr(("::1", 6432)) == "[::1]:6432"


@pytest.mark.parametrize("value, why", [
    ("localhost:6432", "not an IPv4 address"),
    ("127.0.0.1", "expected IP:PORT"),
    ("127.0.0.1:0", "not a number in 1-65535"),
    ("127.0.0.1:x", "not a number in 1-65535"),
    ("[::1:6432", "[ADDR]:PORT"),
    ("[zz]:6432", "not an IPv6 address"),
])
def test_parse_addr_rejects(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[")):
        parse_addr(value)


def _set(doc: dict[str, Any], path: str, value: object) -> None:
    keys = path.split(".")
    node = doc
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


_DELETE = object()
P = "clusters.my_cluster.ports.master"


@pytest.mark.parametrize("path, value, key, why", [
    ("cluster_update_interval", 0, "cluster_update_interval", "greater than 0"),
    ("cluster_update_interval", "3s", "cluster_update_interval", "number of seconds"),
    ("cluster_update_interval", True, "cluster_update_interval", "number of seconds"),
    ("listen_address", "nowhere", "listen_address", "invalid address"),
    ("listen_address", 8009, "listen_address", "IP:PORT string"),
    ("clusters", _DELETE, "clusters", "required"),
    ("clusters", ["x"], "clusters", "mapping of cluster names"),
    ("clusters.my_cluster", "x", "clusters.my_cluster", "mapping with hosts and ports"),
    ("clusters.my_cluster.hosts", [], "clusters.my_cluster.hosts", "is empty"),
    ("clusters.my_cluster.hosts", _DELETE, "clusters.my_cluster.hosts", "required"),
    ("clusters.my_cluster.hosts", "http://a:8008", "clusters.my_cluster.hosts", "list of http(s) URLs"),
    ("clusters.my_cluster.hosts", ["ftp://a:8008"], "clusters.my_cluster.hosts[0]", "only http:// and https://"),
    ("clusters.my_cluster.hosts", ["http://a:8008", "HTTP://A:8008/"], "clusters.my_cluster.hosts[1]",
     "duplicate host"),
    ("clusters.my_cluster.hosts", ["http://:8008"], "clusters.my_cluster.hosts[0]", "has no host"),
    ("clusters.my_cluster.hosts", ["http://a:99999"], "clusters.my_cluster.hosts[0]", "not a valid URL"),
    ("clusters.my_cluster.ports", {}, "clusters.my_cluster.ports", "is empty"),
    ("clusters.my_cluster.ports", _DELETE, "clusters.my_cluster.ports", "required"),
    (P, "x", P, "must be a mapping"),
    (f"{P}.roles", [], f"{P}.roles", "is empty"),
    (f"{P}.roles", _DELETE, f"{P}.roles", "required"),
    (f"{P}.roles", "leader", f"{P}.roles", "must be a list"),
    (f"{P}.roles", ["leader", "master"], f"{P}.roles[1]", "invalid role 'master'"),
    (f"{P}.roles", ["replica"], f"{P}.roles[0]", "allowed: leader, sync, async, any"),
    (f"{P}.listen", _DELETE, f"{P}.listen", "required"),
    (f"{P}.listen", "db.local:6432", f"{P}.listen", "host names are not accepted"),
    (f"{P}.host_port", _DELETE, f"{P}.host_port", "required"),
    (f"{P}.host_port", 0, f"{P}.host_port", "1-65535"),
    (f"{P}.host_port", "5432", f"{P}.host_port", "1-65535"),
    (f"{P}.max_lag_in_bytes", -1, f"{P}.max_lag_in_bytes", ">= 0"),
    (f"{P}.max_lag_in_bytes", "16MB", f"{P}.max_lag_in_bytes", ">= 0"),
    (f"{P}.listen", "0.0.0.0:6433", "clusters.my_cluster.ports.replicas.listen", "duplicate listen address"),
    (f"{P}.listen", "127.0.0.1:8009", f"{P}.listen", "(also listen_address)"),
    ("clusters.my_cluster.tls", "yes", "clusters.my_cluster.tls", "must be a mapping"),
    ("clusters.my_cluster.tls", {"ca_cert": "/nonexistent/ca.crt"}, "clusters.my_cluster.tls.ca_cert",
     "cannot read"),
    ("clusters.my_cluster.tls", {"skip_verify": "no"}, "clusters.my_cluster.tls.skip_verify", "true or false"),
])
def test_each_mistake_is_reported_with_file_key_and_why(path: str, value: object, key: str, why: str) -> None:
    doc = base()
    _set(doc, path, value)
    errors = errors_of(doc)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"pp.yaml: {key}: "), errors
    assert why in errors[0], errors


def test_every_problem_is_reported_at_once() -> None:
    doc = base()
    _set(doc, f"{P}.roles", ["boss"])
    _set(doc, "clusters.my_cluster.ports.replicas.host_port", 0)
    _set(doc, "cluster_update_interval", -1)
    errors = errors_of(doc)
    assert [e.split(": ")[1] for e in errors] == [
        "cluster_update_interval", f"{P}.roles[0]", "clusters.my_cluster.ports.replicas.host_port"]


def test_duplicate_listen_across_clusters() -> None:
    doc = base()
    doc["clusters"]["other"] = {"hosts": ["http://10.0.0.1:8008"],
                                "ports": {"rw": {"listen": "0.0.0.0:6432", "roles": ["leader"], "host_port": 5432}}}
    errors = errors_of(doc)
    assert errors == ["pp.yaml: clusters.other.ports.rw.listen: duplicate listen address 0.0.0.0:6432 "
                      "(also clusters.my_cluster.ports.master.listen)"]


def test_unknown_keys_are_warnings_not_errors() -> None:
    doc = base()
    doc["cluster_update_intervall"] = 1
    doc["clusters"]["my_cluster"]["ports"]["master"]["max_lag"] = 5
    cfg = validate(doc, "pp.yaml")
    assert len(cfg.warnings) == 2
    assert cfg.warnings[0].startswith("pp.yaml: cluster_update_intervall: unknown key")
    assert cfg.warnings[1].startswith(f"pp.yaml: {P}.max_lag: unknown key")


def test_empty_clusters_is_a_warning() -> None:
    cfg = validate({"clusters": {}}, "pp.yaml")
    assert cfg.clusters == {}
    assert cfg.warnings == ("pp.yaml: clusters: no clusters: nothing will be proxied",)


def test_tls_skip_verify_and_readable_ca(tmp_path: Path) -> None:
    doc = base()
    doc["clusters"]["my_cluster"]["tls"] = {"skip_verify": True}
    tls = validate(doc, "pp.yaml").clusters["my_cluster"].tls
    assert tls is not None and tls.skip_verify and tls.ca_cert is None
    ctx = tls.context()
    assert not ctx.check_hostname
    # A readable file that is not a certificate is caught when the context is built.
    bogus = tmp_path / "ca.crt"
    bogus.write_text("not a certificate\n")
    doc["clusters"]["my_cluster"]["tls"] = {"ca_cert": str(bogus)}
    errors = errors_of(doc)
    assert len(errors) == 1 and errors[0].startswith("pp.yaml: clusters.my_cluster.tls: cannot build a TLS context")


def test_client_key_needs_client_cert(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("x")
    doc = base()
    doc["clusters"]["my_cluster"]["tls"] = {"client_key": str(key)}
    errors = errors_of(doc)
    assert errors == ["pp.yaml: clusters.my_cluster.tls.client_key: needs client_cert as well"]


def test_yaml_syntax_error_has_line_and_column() -> None:
    with pytest.raises(ConfigError) as ei:
        loads("clusters:\n  a: [1, 2\n", "pp.yaml")
    assert ei.value.errors[0].startswith("pp.yaml: line 3 column 1: invalid YAML")


@pytest.mark.parametrize("text, why", [
    ("", "the file is empty"),
    ("- a\n- b\n", "the top level must be a mapping"),
])
def test_document_shape(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        loads(text, "pp.yaml")


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as ei:
        load("/nonexistent/patroni_proxy.yaml")
    assert ei.value.errors == ["/nonexistent/patroni_proxy.yaml: cannot read the configuration file: "
                               "No such file or directory"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgdoorman.patroni_proxy", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_test_config_ok_and_invalid(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(README_EXAMPLE + "\nsurprise: 1\n")
    r = _cli("-t", str(good))
    assert r.returncode == 0, r.stderr
    assert f"configuration file {good} test is successful" in r.stdout
    assert "warning: " in r.stderr and "surprise: unknown key" in r.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(README_EXAMPLE).replace('["leader"]', '["master"]'))
    r = _cli("-t", str(bad))
    assert r.returncode == 1
    assert f"{bad}: {P}.roles[0]: invalid role 'master'" in r.stderr
    assert r.stdout == ""


def test_cli_refuses_an_invalid_config_without_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: {a: {hosts: [], ports: {}}}\n")
    r = _cli(str(bad))
    assert r.returncode == 1
    assert "clusters.a.hosts: is empty" in r.stderr and "clusters.a.ports: is empty" in r.stderr
