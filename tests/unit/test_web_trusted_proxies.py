"""web.trusted_proxies: which address the web listener takes as the client's (metrics/server.py's
client_address), and the config check of the networks."""

from __future__ import annotations

from email.message import Message
from pathlib import Path

import pytest

from pgdoorman.config import load_config
from pgdoorman.config.loader import ConfigError
from pgdoorman.metrics.server import client_address

PROXIES = ("10.0.0.0/8", "fd00::/8", "192.0.2.7")


def headers(**kw: str | list[str]) -> Message:
    m = Message()
    for k, v in kw.items():
        for one in v if isinstance(v, list) else [v]:
            m[k.replace("_", "-")] = one
    return m


@pytest.mark.parametrize(("peer", "hdrs", "want"), [
    # Not from a trusted proxy: the headers are the client's own words, ignored.
    ("203.0.113.5", {"X_Forwarded_For": "1.1.1.1"}, "203.0.113.5"),
    ("127.0.0.1", {"Forwarded": "for=1.1.1.1"}, "127.0.0.1"),
    # From a trusted proxy: the nearest untrusted hop, skipping proxies and whatever the client prepended.
    ("10.1.2.3", {"X_Forwarded_For": "6.6.6.6, 198.51.100.4, 10.9.9.9"}, "198.51.100.4"),
    ("10.1.2.3", {"X_Forwarded_For": ["6.6.6.6", "198.51.100.4"]}, "198.51.100.4"),
    ("192.0.2.7", {"X_Forwarded_For": "198.51.100.4:5555"}, "198.51.100.4"),
    ("::ffff:10.0.0.1", {"X_Forwarded_For": "198.51.100.4"}, "198.51.100.4"),
    ("fd00::1", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https, for=10.0.0.2'}, "2001:db8::1"),
    ("10.1.2.3", {"Forwarded": "For=198.51.100.9;by=10.1.2.3"}, "198.51.100.9"),
    # Nothing usable: the proxy's own address.
    ("10.1.2.3", {}, "10.1.2.3"),
    ("10.1.2.3", {"X_Forwarded_For": "10.0.0.9"}, "10.1.2.3"),
    ("10.1.2.3", {"X_Forwarded_For": "198.51.100.4, unknown"}, "10.1.2.3"),
    ("10.1.2.3", {"Forwarded": "for=_hidden"}, "10.1.2.3"),
])
def test_client_address(peer: str, hdrs: dict[str, str | list[str]], want: str) -> None:
    assert client_address(peer, headers(**hdrs), PROXIES) == want


def test_no_trusted_proxies_no_forwarding() -> None:
    assert client_address("10.1.2.3", headers(X_Forwarded_For="198.51.100.4"), ()) == "10.1.2.3"


def test_config_refuses_what_is_not_a_network(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("general: {admin_username: a, admin_password: x-strong}\nweb: {trusted_proxies: ['10.0.0.0/8', 'proxy.local']}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert "web.trusted_proxies.1: 'proxy.local' is not a network" in str(e.value)
    path.write_text("general: {admin_username: a, admin_password: x-strong}\nweb: {trusted_proxies: ['10.0.0.0/8', '::1']}\n")
    assert load_config(str(path)).web.trusted_proxies == ("10.0.0.0/8", "::1")
