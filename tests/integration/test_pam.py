"""PAM logins (the `pam` extra) through the pooler as a subprocess, against real PAM services written to
/etc/pam.d for the test: pam_exec checking the password and the user name with a script, and pam_deny.
A slow PAM check must not hold up other clients of the same worker."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER

pytestmark = pytest.mark.timeout(120)

SERVICE_OK = "pgdoorman-test-exec"
SERVICE_DENY = "pgdoorman-test-deny"
CHECK = """#!/bin/sh
# pam_exec expose_authtok: the password arrives on stdin (NUL-terminated).
pw=$(tr -d '\\000')
[ "$pw" = "slow" ] && sleep 6 && exit 1
[ "$PAM_USER" = "pamuser" ] && [ "$pw" = "pam-secret" ]
"""


@pytest.fixture(scope="module")
def pam_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("writing PAM services to /etc/pam.d needs root (CI runs the suite as root)")
    script = tmp_path_factory.mktemp("pam") / "check.sh"
    script.write_text(CHECK)
    script.chmod(stat.S_IRWXU)
    files = {
        SERVICE_OK: f"auth required pam_exec.so expose_authtok quiet {script}\naccount required pam_permit.so\n",
        SERVICE_DENY: "auth required pam_deny.so\naccount required pam_deny.so\n",
    }
    for name, text in files.items():
        Path("/etc/pam.d", name).write_text(text)
    try:
        yield
    finally:
        for name in files:
            Path("/etc/pam.d", name).unlink(missing_ok=True)


def pam_user(name: str, service: str) -> dict[str, Any]:
    return {"username": name, "password": "", "auth_pam_service": service, "server_username": SCRAM_USER,
            "server_password": SCRAM_PASSWORD, "pool_size": 2}


def login(p: Any, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(p.dsn(user, password, DBNAME), autocommit=True, connect_timeout=20)


def test_pam_checks_password_and_user(pooler_factory: Any, pam_services: None) -> None:
    users = [pam_user("pamuser", SERVICE_OK), pam_user("pamuser2", SERVICE_OK), pam_user("denied", SERVICE_DENY),
             {"username": SCRAM_USER, "password": SCRAM_PASSWORD, "server_username": SCRAM_USER,
              "server_password": SCRAM_PASSWORD, "pool_size": 2}]
    p = pooler_factory(users=users)
    with login(p, "pamuser", "pam-secret") as c:
        assert c.execute("select current_user").fetchone() == (SCRAM_USER,)
    for user, pw in (("pamuser", "wrong"), ("pamuser2", "pam-secret"), ("denied", "anything")):
        with pytest.raises(psycopg.OperationalError) as ei:
            login(p, user, pw)
        assert f'password authentication failed for user "{user}"' in str(ei.value)
    assert p.wait_for_log("PAM login of 'denied'")

    # A PAM check that takes seconds runs off the loop: another client logs in and queries meanwhile.
    slow_result: list[BaseException | None] = []

    def slow() -> None:
        try:
            login(p, "pamuser", "slow").close()
            slow_result.append(None)
        except BaseException as e:  # noqa: BLE001
            slow_result.append(e)

    t = threading.Thread(target=slow)
    t.start()
    with login(p, SCRAM_USER, SCRAM_PASSWORD) as other:
        assert other.execute("select 42").fetchone() == (42,)
    assert t.is_alive(), "the slow PAM login finished before the other client: the loop waited for PAM"
    t.join(30)
    assert slow_result and isinstance(slow_result[0], psycopg.OperationalError)
