"""Unit tests of the operations pieces that need no PostgreSQL: sd_notify datagrams (path and abstract
socket), the handover record framing with file descriptors, the inherited-descriptor environment, the
upgrade command line, pid file handling, and generate's argument rules and config building."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pgdoorman import daemon, generate, systemd
from pgdoorman.cli import build_parser
from pgdoorman.config import config_from_dict
from pgdoorman.protocol import auth
from pgdoorman.upgrade import handoff, inherit, records


# ------------------------------------------------------------------------------------------ systemd
def test_notify_to_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.ready("serving")
        assert s.recv(100) == b"READY=1\nSTATUS=serving"
        assert systemd.main_pid(1234)
        assert s.recv(100) == b"MAINPID=1234"
        assert systemd.reloading()
        msg = s.recv(100).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and int(msg.split("=")[-1]) > 0
        assert systemd.stopping()
        assert s.recv(100) == b"STOPPING=1"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pgdoorman-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_notify_without_or_with_a_bad_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert systemd.notify("READY=1") is False  # logged, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False


# ------------------------------------------------------------------------------------------ handover framing
def test_records_with_fds_and_large_bodies_cross_a_seqpacket_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        big = {"kind": "client", "blob": "x" * (3 * records.CHUNK + 17)}
        records.send_record(a, {"kind": "pool", "n": 1}, [])
        records.send_record(a, big, [w])
        records.send_record(a, {"kind": "done"}, [])
        rec, fds = records.recv_record(b)
        assert rec == {"kind": "pool", "n": 1} and fds == []
        rec, fds = records.recv_record(b)
        assert rec == big and len(fds) == 1
        os.write(fds[0], b"hi")  # the received descriptor is the same pipe
        assert os.read(r, 2) == b"hi"
        os.close(fds[0])
        assert records.recv_record(b) == ({"kind": "done"}, [])
        a.close()
        assert records.recv_record(b) == (None, [])
    finally:
        for fd in (r, w):
            os.close(fd)
        b.close()


# ------------------------------------------------------------------------------------------ upgrade command line
def test_upgrade_command_for_module_and_script_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "dev", "-m", "pgdoorman", "cfg.yaml", "-l", "debug"])
    monkeypatch.setattr(sys, "argv", ["/x/pgdoorman/__main__.py", "cfg.yaml", "-l", "debug"])
    assert handoff.upgrade_command() == [sys.executable, "-X", "dev", "-m", "pgdoorman", "cfg.yaml", "-l", "debug"]
    script = tmp_path / "pg_doorman"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "orig_argv", ["/usr/bin/python3", str(script), "cfg.toml", "-d"])
    monkeypatch.setattr(sys, "argv", [str(script), "cfg.toml", "-d"])
    assert handoff.upgrade_command() == [str(script), "cfg.toml", "-d"]


def test_sigint_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(inherit.ENV_SHUTDOWN_ONLY, "1")
    assert inherit.sigint_means_shutdown()
    monkeypatch.delenv(inherit.ENV_SHUTDOWN_ONLY)
    assert inherit.sigint_means_shutdown() == os.isatty(0)


def test_take_inherited_reads_and_clears_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    lst = socket.socket()
    try:
        monkeypatch.setenv(inherit.ENV_READY_FD, str(w))
        monkeypatch.setenv(inherit.ENV_LISTEN_FDS, f"tcp:{lst.fileno()},bogus:3,unix:999999")
        monkeypatch.setenv(inherit.ENV_CANCEL_PID_BASE, "5000")
        inh = inherit.take_inherited()
        assert inh.is_upgrade and inh.ready_fd == w and inh.migration_fd is None
        assert inh.listeners == [("tcp", lst.fileno())]
        assert inh.cancel_pid_base == 5000
        assert not any(k in os.environ for k in (inherit.ENV_READY_FD, inherit.ENV_LISTEN_FDS))
        assert not os.get_inheritable(w)
        assert not inherit.take_inherited().is_upgrade
    finally:
        lst.close()
        os.close(r)
        os.close(w)


# ------------------------------------------------------------------------------------------ daemon pid file
def test_pid_file_is_removed_only_by_its_owner(tmp_path: Path) -> None:
    path = str(tmp_path / "d.pid")
    daemon.write_pid_file(path, os.getpid())
    assert daemon.read_pid_file(path) == os.getpid()
    assert not daemon.remove_pid_file(path, pid=os.getpid() + 1)  # after an upgrade it names the new one
    assert daemon.remove_pid_file(path)
    assert not os.path.exists(path)


def test_running_pgdoorman_in_pid_file_blocks_a_second_daemon(tmp_path: Path) -> None:
    path = str(tmp_path / "d.pid")
    daemon.write_pid_file(path, 1)  # init: alive, but not a pgdoorman
    daemon.check_not_running(path)
    daemon.write_pid_file(path, 2**22 + 12345)  # no such process
    daemon.check_not_running(path)
    # A live process whose command line names pgdoorman: that one counts.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "pgdoorman"])
    try:
        daemon.write_pid_file(path, proc.pid)
        with pytest.raises(daemon.DaemonError, match="a running pgdoorman"):
            daemon.check_not_running(path)
    finally:
        proc.kill()
        proc.wait()


def test_cli_daemon_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_parser().parse_args(["c.yaml", "-d"]).daemon
    monkeypatch.setenv("DAEMON", "true")
    assert build_parser().parse_args(["c.yaml"]).daemon
    monkeypatch.setenv("DAEMON", "0")
    assert not build_parser().parse_args(["c.yaml"]).daemon


# ------------------------------------------------------------------------------------------ generate
def test_generate_format_rules() -> None:
    assert generate.pick_format(None, None) == "yaml"
    assert generate.pick_format(None, "x.yml") == "yaml"
    assert generate.pick_format(None, "x.toml") == "toml"
    assert generate.pick_format(None, "x.conf") == "toml"
    assert generate.pick_format("toml", None) == "toml"
    assert generate.pick_format("yaml", "x.yaml") == "yaml"
    with pytest.raises(ValueError, match="does not match"):
        generate.pick_format("yaml", "x.toml")


def test_generate_parser_defaults_from_libpq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(k, raising=False)
    a = generate.build_parser().parse_args([])
    assert (a.host, a.port, a.user, a.password, a.database) == ("localhost", 5432, "postgres", None, "postgres")
    assert a.pool_size == 40 and not a.session_pool_mode and a.format is None
    monkeypatch.setenv("PGHOST", "/run/postgresql")
    monkeypatch.setenv("PGPORT", "5433")
    monkeypatch.setenv("PGUSER", "u")
    monkeypatch.setenv("PGPASSWORD", "p")
    monkeypatch.setenv("PGDATABASE", "d")
    a = generate.build_parser().parse_args(["-p", "6000"])
    assert (a.host, a.port, a.user, a.password, a.database) == ("/run/postgresql", 6000, "u", "p", "d")


def test_build_config_is_valid_passthrough_config() -> None:
    scram = auth.scram_verifier_for("pw")
    inv = generate.Inventory(databases=["a", "b-c"], users=[("u1", scram), ("u2", "md5" + "0" * 32), ("u3", None)])
    data: Any = generate.build_config(inv, "10.0.0.5", 5433, 12, session_mode=True, admin_password="secret")
    cfg = config_from_dict(data)
    assert set(cfg.pools) == {"a", "b-c"}
    users = {u.username: u for u in cfg.pools["b-c"].users}
    assert users["u1"].password == scram and users["u3"].password == generate.PLACEHOLDER_PASSWORD
    assert users["u2"].server_username is None and users["u2"].pool_size == 12
    pool = cfg.pools["a"]
    assert (pool.server_host, pool.server_port, pool.pool_mode, pool.server_database) == ("10.0.0.5", 5433,
                                                                                          "session", "a")
    assert cfg.general.admin_password == "secret" and cfg.general.port == 6432


class _FakeConn:
    def __init__(self, method: str, salt: bytes | None = None, iterations: int | None = None) -> None:
        self.user = "alice"
        self.password: str | None = "s3cret"
        self.auth_method = method
        self.scram_salt = salt
        self.scram_iterations = iterations


def test_own_secret_rebuilds_what_pg_authid_holds() -> None:
    assert generate.own_secret(_FakeConn("md5")) == auth.md5_stored("alice", "s3cret")  # type: ignore[arg-type]
    salt = os.urandom(16)
    stored = str(auth.ScramVerifier.from_password("s3cret", salt, 4096))
    assert generate.own_secret(_FakeConn("scram-sha-256", salt, 4096)) == stored  # type: ignore[arg-type]
    assert generate.own_secret(_FakeConn("trust")) is None  # type: ignore[arg-type]
    nopw = _FakeConn("md5")
    nopw.password = None
    assert generate.own_secret(nopw) is None  # type: ignore[arg-type]


def test_generate_reference_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--reference", "-f", "toml"]) == 0
    out = capsys.readouterr().out
    assert "[general]" in out and "[pools.exampledb]" in out
