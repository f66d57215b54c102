#!/usr/bin/env python3
"""An experiment kept for a later try, not part of make, CI or the packages (docs/performance.md, "Cython
with cdef classes"): compiles pgdoorman's per-transaction modules with Cython into a copy of the package
outside the checkout, every slotted class of them (the Conn -> ClientBase -> ... -> ClientConn and Conn ->
ServerDial -> ... -> ServerConn chains, the Scanner, the rewriter, ...) as a `cdef class` whose attributes
are declared, typed `object`, in a .pxd file generated from its __slots__. The package in the repository is
not touched; the compiled tree is used by putting it first on PYTHONPATH (scripts/bench.py --src TREE,
scripts/sched_share.py --src TREE, PGDOORMAN_SRC=TREE pytest ...).

    .venv/bin/python scripts/build_cython.py [--python PY]      # prints the tree on its last line

The tree is $PGDOORMAN_CACHE/cython-<python tag>-<git hash>[-dirty]/ (default cache /var/cache/pgdoorman),
built with Cython from a build venv next to it (cy-venv-<python tag>, made on first use). What the copy
changes in the source, so that Cython accepts it: a compiled class loses its __slots__ (the .pxd declares
them) and its class-level annotations (a bare one would declare a C attribute in the implementation).
Methods stay `def`: the next step, C-typed `cpdef` declarations for the hot calls, is not written.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "net/conn.py", "net/loop.py", "protocol/framing.py", "protocol/messages.py", "core/stats.py",
    "core/pool.py", "core/leaks.py", "worker.py", "session/client_base.py", "session/fastpath.py",
    "session/login.py", "session/client.py", "session/txbegin.py", "session/server_dial.py",
    "session/server_prepared.py", "session/server_wrap.py", "session/server.py",
    "session/rewrite_replies.py", "session/rewrite.py",
]
DIRECTIVES = {"annotation_typing": False, "binding": True, "freethreading_compatible": True,
              "language_level": 3}


def is_slots(st: ast.stmt) -> bool:
    return isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in st.targets)


def slots_of(node: ast.ClassDef) -> list[str] | None:
    for st in node.body:
        if isinstance(st, ast.Assign) and is_slots(st):
            if isinstance(st.value, ast.Tuple | ast.List):
                return [e.value for e in st.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return None


def base_name(node: ast.ClassDef) -> str | None:
    if len(node.bases) != 1 or not isinstance(node.bases[0], ast.Name):
        return None
    return node.bases[0].id


def declare(tree_dir: Path) -> None:
    """Write a .pxd next to each module with slotted classes, and strip those classes' __slots__ and
    class-level annotations from the module's copy."""
    trees = {rel: ast.parse((tree_dir / "pgdoorman" / rel).read_text()) for rel in MODULES}
    where: dict[str, str] = {}  # class name -> module (a slotted class with no base or a slotted base)
    for rel, tree in trees.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and slots_of(node) is not None and len(node.bases) <= 1:
                where[node.name] = rel
    changed = True
    while changed:  # a class whose base is not itself a cdef class stays a Python class
        changed = False
        for tree in trees.values():
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name in where:
                    b = base_name(node)
                    if node.bases and b not in where and b != "object":
                        del where[node.name]
                        changed = True
    for rel, tree in trees.items():
        head: list[str] = []
        body: list[str] = []
        for node in tree.body:
            if not isinstance(node, ast.ClassDef) or node.name not in where:
                continue
            b = base_name(node)
            if b in where:
                if where[b] != rel:
                    head.append(f"from pgdoorman.{where[b][:-3].replace('/', '.')} cimport {b}")
                body.append(f"cdef class {node.name}({b}):")
            else:
                body.append(f"cdef class {node.name}:")
            slots = slots_of(node) or []
            body += [("    cdef object __weakref__" if s == "__weakref__" else f"    cdef public object {s}")
                     for s in slots] or ["    pass"]
            kept: list[ast.stmt] = []
            for st in node.body:
                if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                    if st.value is not None:
                        kept.append(ast.copy_location(ast.Assign(targets=[st.target], value=st.value), st))
                elif not is_slots(st):
                    kept.append(st)
            node.body = kept or [ast.Pass()]
        if body:
            py = tree_dir / "pgdoorman" / rel
            py.with_suffix(".pxd").write_text("\n".join(head + body) + "\n")
            py.write_text(ast.unparse(tree) + "\n")


def build_venv(py: str, cache: Path, tag: str) -> Path:
    venv = cache / f"cy-venv-{tag}"
    bpy = venv / "bin" / "python"
    if not bpy.exists() or subprocess.run([bpy, "-c", "import Cython, setuptools"]).returncode:
        subprocess.run([py, "-m", "venv", venv], check=True)
        subprocess.run([bpy, "-m", "pip", "install", "-q", "cython>=3.1", "setuptools"], check=True)
    return bpy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the interpreter to build for")
    args = ap.parse_args()
    cache = Path(os.environ.get("PGDOORMAN_CACHE", "/var/cache/pgdoorman"))
    tag = subprocess.run([args.python, "-c", "import sys, sysconfig; print(sys.implementation.cache_tag + "
                          "('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''))"],
                         check=True, capture_output=True, text=True).stdout.strip()
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "diff", "HEAD", "--", "pgdoorman", "scripts/build_cython.py"],
                           check=True, capture_output=True).stdout
    out = cache / (f"cython-{tag}-{rev}" + (f"-dirty-{hashlib.sha1(dirty).hexdigest()[:8]}" if dirty else ""))
    if (out / ".built").exists():
        print(out)
        return
    bpy = build_venv(args.python, cache, tag)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(ROOT / "pgdoorman", out / "pgdoorman", ignore=shutil.ignore_patterns("__pycache__"))
    declare(out)
    mods = [f"pgdoorman/{rel}" for rel in MODULES]
    (out / "setup_cy.py").write_text(
        "from setuptools import setup\nfrom Cython.Build import cythonize\n"
        f"setup(ext_modules=cythonize({mods!r}, nthreads=2, compiler_directives={DIRECTIVES!r}))\n")
    subprocess.run([bpy, "setup_cy.py", "build_ext", "--inplace", "-j", "2"], cwd=out, check=True,
                   stdout=sys.stderr)
    (out / ".built").write_text("")
    print(out)


if __name__ == "__main__":
    main()
