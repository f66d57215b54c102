"""Size limits of the code: no module in pgdoorman/ over MAX_MODULE_LINES lines and no function or method over
MAX_FUNCTION_LINES lines (the def line to its last line, decorators excluded: end_lineno - lineno + 1).

EXEMPT lists the hot paths that stay whole on purpose, each with its reason (the function says so in a
comment too).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pgdoorman"

MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 60

# "path" is a module over MAX_MODULE_LINES; "path::Qual.name" a function or method over MAX_FUNCTION_LINES.
EXEMPT: dict[str, str] = {
    "pgdoorman/net/loop.py::Loop.run": "the event loop's hot loop: a helper would cost one function call more "
                                       "per event on the hot path",
    "pgdoorman/protocol/framing.py::Scanner.feed": "the scanner's hot loop: a helper would cost one function "
                                                   "call more per message on the hot path",
    "pgdoorman/session/client.py::ClientConn._consume": "the relay's entry for every read of a logged-in "
                                                         "client: checkout and holding inline, a function call "
                                                         "less per transaction each",
}

def _functions(node: ast.AST, prefix: str = "") -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method under node, nested ones included."""
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            out.append((name, child))
            out += _functions(child, name + ".")
        elif isinstance(child, ast.ClassDef):
            out += _functions(child, prefix + child.name + ".")
        else:
            out += _functions(child, prefix)
    return out


def _lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def measure() -> dict[str, tuple[int, int]]:
    """Every module and function over its limit: key -> (lines, limit)."""
    over: dict[str, tuple[int, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            over[rel] = (lines, MAX_MODULE_LINES)
        for name, node in _functions(ast.parse(text, filename=rel)):
            if _lines(node) > MAX_FUNCTION_LINES:
                over[f"{rel}::{name}"] = (_lines(node), MAX_FUNCTION_LINES)
    return over


OVER = measure()


def _describe(key: str) -> str:
    n, limit = OVER[key]
    kind = "module" if "::" not in key else "function"
    return f"{key}: {kind} of {n} lines (limit {limit})"


def test_no_module_or_function_over_the_limit() -> None:
    offenders = [_describe(k) for k in sorted(OVER) if k not in EXEMPT]
    assert not offenders, (
        "over the size limit (split it; tests/unit/test_sizes.py explains the exemptions):\n  "
        + "\n  ".join(offenders))


@pytest.mark.parametrize("key", sorted(EXEMPT))
def test_exemption_still_needed(key: str) -> None:
    path, _, name = key.partition("::")
    assert key in OVER, f"{key} is no longer over the limit: remove it from EXEMPT in tests/unit/test_sizes.py"
    source = (ROOT / path).read_text(encoding="utf-8")
    node = dict(_functions(ast.parse(source)))[name]
    body = "\n".join(source.splitlines()[node.lineno - 1:node.end_lineno])
    assert "Exempt from the size rule" in body, f"{key}: say in the function why it is exempt from the size rule"
