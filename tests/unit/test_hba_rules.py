"""pgdoorman.hba: parsing pg_hba rules and PgDoorman's per-method reading of them, and the legacy CIDR list."""

from __future__ import annotations

import pytest

from pgdoorman.hba import HbaError, allowed_by_networks, choose, parse_networks, parse_rules


def decide(text: str, kind: str, unix: bool = False, tls: bool = False, ip: str | None = "127.0.0.1",
           db: str = "app", user: str = "u") -> str:
    return choose(parse_rules(text), kind, unix, tls, None if unix else ip, db, user)


def test_parse_fields_comments_and_aliases() -> None:
    rules = parse_rules("""
        # comment line
        local   all  all                 trust
        host    app  "u"   10.0.0.0/8    scram_sha_256   # trailing comment
        hostssl all  all   ::1/128       md5 clientcert=verify-ca
        hostnossl all all  all           reject
        host    all  all   192.168.1.7   scramsha256
    """)
    assert [(r.line, r.type, r.database, r.user, str(r.network) if r.network else None, r.method) for r in rules] == [
        (3, "local", "all", "all", None, "trust"),
        (4, "host", "app", "u", "10.0.0.0/8", "scram"),
        (5, "hostssl", "all", "all", "::1/128", "md5"),
        (6, "hostnossl", "all", "all", None, "reject"),
        (7, "host", "all", "all", "192.168.1.7/32", "scram"),
    ]


@pytest.mark.parametrize("text,message", [
    ("hostgssenc all all all md5", "line 1: unknown connection type"),
    ("host all all md5", "line 1: expected TYPE DATABASE USER ADDRESS METHOD"),
    ("\nlocal all md5", "line 2: expected TYPE DATABASE USER METHOD"),
    ("host all all 10.0.0.300/8 md5", "address '10.0.0.300/8'"),
    ("host all all samehost md5", "address 'samehost'"),
    ("host all all all peer", "method 'peer'"),
    ("host a,b all all md5", "database 'a,b': only 'all' or a single name"),
    ("host all +group all md5", "user '+group'"),
])
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(HbaError) as ei:
        parse_rules(text)
    assert message in str(ei.value)


def test_method_rules_are_read_per_password_kind() -> None:
    md5_only = "host all all 127.0.0.1/32 md5"
    assert decide(md5_only, "md5") == "md5"
    assert decide(md5_only, "scram") == "none"  # a SCRAM verifier cannot answer md5
    assert decide(md5_only, "plain") == "md5"  # a plain-text password can
    scram_only = "host all all 127.0.0.1/32 scram-sha-256"
    assert decide(scram_only, "scram") == "scram" and decide(scram_only, "plain") == "scram"
    assert decide(scram_only, "md5") == "none"
    # A rule of the other method is skipped, not a decision: the later trust rule lets SCRAM users in.
    both = "host all all 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 trust"
    assert decide(both, "scram") == "trust" and decide(both, "md5") == "md5"
    # reject decides for everyone it matches; the first deciding rule wins.
    assert decide("host all all all reject\nhost all all all trust", "md5") == "reject"
    assert decide("host all bob all reject\nhost all all all scram-sha-256", "scram") == "scram"
    assert decide("host all all all reject", "scram") == "reject"
    # scram: nothing for SCRAM, md5 trust → trust; md5 reject → reject.
    assert decide("host all all all md5\nhost all all all reject", "scram") == "reject"
    assert decide("", "scram") == "none"


def test_matching_by_type_address_database_user() -> None:
    assert decide("local all all trust", "md5", unix=True) == "trust"
    assert decide("local all all trust", "md5") == "none"
    assert decide("host all all all trust", "md5", unix=True) == "none"
    assert decide("hostssl all all all trust", "md5", tls=True) == "trust"
    assert decide("hostssl all all all trust", "md5", tls=False) == "none"
    assert decide("hostnossl all all all trust", "md5", tls=True) == "none"
    assert decide("hostnossl all all all trust", "md5", tls=False) == "trust"
    assert decide("host all all 10.0.0.0/8 trust", "md5", ip="10.1.2.3") == "trust"
    assert decide("host all all 10.0.0.0/8 trust", "md5", ip="11.1.2.3") == "none"
    assert decide("host all all 10.0.0.0/8 trust", "md5", ip="::ffff:10.1.2.3") == "trust"  # IPv4-mapped
    assert decide("host all all ::1/128 trust", "md5", ip="::1") == "trust"
    assert decide("host all all ::1/128 trust", "md5", ip="127.0.0.1") == "none"
    assert decide("host app all all trust", "md5", db="other") == "none"
    assert decide("host all bob all trust", "md5", user="alice") == "none"
    assert decide('host "app" "u" all trust', "md5") == "trust"


def test_legacy_networks() -> None:
    nets = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1/128"])
    assert allowed_by_networks(nets, "127.0.0.1") and allowed_by_networks(nets, "10.9.9.9")
    assert allowed_by_networks(nets, "::1") and not allowed_by_networks(nets, "192.168.0.1")
    assert allowed_by_networks((), "192.168.0.1")  # empty: everyone
    with pytest.raises(ValueError, match="'10.0.0/33' is not an IP address or CIDR block"):
        parse_networks(["10.0.0/33"])
