"""One owner per state (issue 11): only pgdoorman/session/server.py assigns a server connection's `state` (others move
it through ServerConn.link/park/retire), and only pgdoorman/core/pool.py touches a pool's idle lists and
its queue of waiters (the worker and the janitor act on what the pool's methods return)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pgdoorman"


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "patroni_proxy" not in p.parts)


def test_only_server_module_assigns_server_state() -> None:
    offenders = []
    for path in _modules():
        if path.relative_to(PKG).as_posix() == "session/server.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            # (a, b.state) = ... assigns too: look into tuple and list targets.
            targets = [e for t in targets for e in (t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])]
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "state" and not (
                        isinstance(t.value, ast.Name) and t.value.id == "self"):
                    # The one foreign assignment left is ClientConn.restore setting the new client's state.
                    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id == "READY":
                        continue
                    offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert offenders == []


def test_only_pool_module_touches_idle_lists_and_waiters() -> None:
    offenders = []
    for path in _modules():
        if path.relative_to(PKG).as_posix() == "core/pool.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("idle", "n_idle", "queues", "n_queued") and not (
                    isinstance(node.value, ast.Name) and node.value.id == "self"):
                offenders.append(f"{path.relative_to(PKG.parent)}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_connections_keep_slots_through_their_parts() -> None:
    """ClientConn is assembled from parts in several files (client_base, fastpath, login): each
    must declare __slots__, or every connection would carry a __dict__ again."""
    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.server import ServerConn

    for cls in (ClientConn, ServerConn):
        assert cls.__dictoffset__ == 0, cls
        assert all("__slots__" in vars(k) for k in cls.__mro__ if k is not object), cls.__mro__


def test_every_declared_part_method_is_implemented() -> None:
    """ClientBase declares (raising NotImplementedError) the methods the parts above it implement, so that the
    parts below type-check; ClientConn must override every one of them."""
    import inspect

    from pgdoorman.session.client import ClientConn
    from pgdoorman.session.client_base import ClientBase

    stubs = [name for name, fn in vars(ClientBase).items()
             if inspect.isfunction(fn) and "raise NotImplementedError" in inspect.getsource(fn)]
    assert stubs, "ClientBase declares no stubs: update this test"
    assert [name for name in stubs if getattr(ClientConn, name) is vars(ClientBase)[name]] == []
