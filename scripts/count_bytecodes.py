#!/usr/bin/env python3
"""Bytecode instructions and Python calls per transaction through pgdoorman, by function: a deterministic
A/B measure of the relay's cost that load on the machine cannot blur (docs/performance.md).

CPU time per transaction (`make bench`) is the figure that counts, but on a shared 2-core machine it
spreads by +-8 % between runs, far more than a change to the relay moves it. What the interpreter executes
per transaction does not: this script runs pgbench -S through pgdoorman under a tracer that counts every
bytecode instruction (`sys.settrace` with `f_trace_opcodes`) and every Python and C call (`sys.setprofile`)
of every thread, and divides by the transactions. On CPython 3.11 one bytecode costs about 12 ns of the
pooler's CPU in this workload, so 100 instructions per transaction are about 1.2 us.

    .venv/bin/python scripts/count_bytecodes.py --src /tmp/old --src . --modes simple,extended,prepared
    # /tmp/old: `mkdir /tmp/old && git archive <commit> pgdoorman | tar -x -C /tmp/old`

For each --src (a directory holding a pgdoorman/ package) and mode: a fresh pooler (--workers worker threads,
one by default; transaction mode, pool_size --pool-size) on one throwaway cluster (scripts/bench.py's), a
warm-up run, the counters reset, then `pgbench -S -M mode -c clients -j 1 -t transactions/clients`, the
counters dumped. The tracer slows the pooler about 20-fold, so the timings inside it (queueing, batching)
are not those of a real run: compare two sources measured the same way, never with a plain run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parent))

DUMP = signal.SIGRTMIN + 1
RESET = signal.SIGRTMIN + 2


def trace_main(kind: str, out: str, argv: list[str]) -> None:
    """Run pgdoorman (argv: its arguments) with every thread traced; dump the counts to `out` on DUMP, clear
    them on RESET. kind: "ops" (instructions by function and line) or "calls" (Python and C calls)."""
    import runpy
    import threading

    counts: collections.Counter[tuple[str, str, int]] = collections.Counter()

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            c = frame.f_code
            counts[(c.co_filename.rsplit("/", 1)[-1], c.co_name, frame.f_lineno or 0)] += 1
        return local

    def glob(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return local

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            c = frame.f_code
            counts[(c.co_filename.rsplit("/", 1)[-1], c.co_name, 0)] += 1
        elif event == "c_call":
            counts[("C", getattr(arg, "__qualname__", str(arg)), 0)] += 1

    def dump(*_: Any) -> None:
        tmp = f"{out}.{time.monotonic_ns()}.tmp"  # (a second signal may come while the first is written)
        with open(tmp, "w") as f:
            json.dump([[*k, v] for k, v in dict(counts).items()], f)
        os.replace(tmp, out)

    signal.signal(DUMP, dump)
    signal.signal(RESET, lambda *_: counts.clear())
    if kind == "ops":
        threading.settrace(glob)
        sys.settrace(glob)
    else:
        threading.setprofile(prof)
        sys.setprofile(prof)
    sys.argv = ["pgdoorman", *argv]
    runpy.run_module("pgdoorman", run_name="__main__")


def measure(b: Any, bench: Any, src: Path, mode: str, kind: str, a: argparse.Namespace) -> dict[str, Any]:
    out = str(b.tmp / f"counts-{kind}.json")
    b.pgdoorman_src = src
    b.pgdoorman_launch = [str(SCRIPT), "--trace", kind, "--trace-out", out]
    p = b.start_pgdoorman()
    try:
        def pgbench(clients: int, tx: int) -> None:
            cmd = [b.bin("pgbench"), "-h", bench.HOST, "-p", str(bench.PORT_PGDOORMAN), "-U", bench.ROLE, "-n",
                   "-S", "-M", mode, "-c", str(clients), "-j", "1", "-t", str(tx), bench.DB]
            r = subprocess.run(cmd, env=b.env, capture_output=True, text=True, timeout=3600)
            if r.returncode != 0:
                raise SystemExit(f"pgbench failed: {r.stderr.strip()[-1000:]}")

        pgbench(min(a.clients, 20), 50)  # warm: servers open, statements cached
        os.kill(p.pid, RESET)
        time.sleep(0.3)
        per = max(1, a.transactions // a.clients)
        pgbench(a.clients, per)
        os.kill(p.pid, DUMP)
        for _ in range(100):
            if os.path.exists(out):
                break
            time.sleep(0.1)
        rows = json.load(open(out))
        os.unlink(out)
    finally:
        b.procs.stop(p)
    return {"n": per * a.clients, "rows": rows}


def by_function(res: dict[str, Any]) -> dict[str, float]:
    agg: collections.Counter[str] = collections.Counter()
    for f, fn, _line, v in res["rows"]:
        agg[f"{f}:{fn}"] += v
    return {k: v / res["n"] for k, v in agg.items()}


def report(srcs: list[str], results: dict[str, dict[str, dict[str, Any]]], top: int) -> str:
    lines = []
    for mode, per_src in results.items():
        for kind, label in (("ops", "bytecodes"), ("calls", "calls")):
            tables = [by_function(per_src[s][kind]) for s in srcs if kind in per_src[s]]
            if not tables:
                continue
            if kind == "calls":
                py = [sum(v for k, v in t.items() if not k.startswith("C:")) for t in tables]
                c = [sum(v for k, v in t.items() if k.startswith("C:")) for t in tables]
                lines.append(f"{mode}: Python calls/tx " + "  ".join(f"{x:.1f}" for x in py)
                             + "   C calls/tx " + "  ".join(f"{x:.1f}" for x in c))
                continue
            lines.append(f"{mode}: {label}/tx " + "  ".join(f"{sum(t.values()):.0f}" for t in tables)
                         + "   (" + ", ".join(srcs) + ")")
            keys = set().union(*tables)
            first, last = tables[0], tables[-1]
            rows = sorted(keys, key=lambda k: -abs(last.get(k, 0) - first.get(k, 0)) if len(tables) > 1
                          else -first.get(k, 0))
            for k in rows[:top]:
                vals = "".join(f"{t.get(k, 0):9.1f}" for t in tables)
                diff = f" {last.get(k, 0) - first.get(k, 0):+8.1f}" if len(tables) > 1 else ""
                lines.append(f"  {vals}{diff}  {k}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--trace"]:
        trace_main(argv[1], argv[3], argv[4:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", required=True,
                    help="a directory holding the pgdoorman/ package to measure (repeat for A/B)")
    ap.add_argument("--modes", default="simple", help="pgbench -M modes, comma-separated")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1, help="pgdoorman's worker_threads")
    ap.add_argument("--transactions", type=int, default=3000)
    ap.add_argument("--no-calls", action="store_true", help="count bytecodes only (half the time)")
    ap.add_argument("--top", type=int, default=30, help="functions listed per mode (largest difference first)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--port-base", type=int, default=26100)
    ap.add_argument("--json", help="write the raw counts here")
    a = ap.parse_args(argv)
    import bench

    bench.set_ports(a.port_base)  # (bench.main's step: parse_args alone leaves the module's ports as they are)
    b = bench.Bench(bench.parse_args([
        "--python", a.python, "--only", "pgdoorman", "--idle-clients", "0", "--login-storm", "0",
        "--scale", "1", "--workers", str(a.workers), "--pool-size", str(a.pool_size), "--port-base", str(a.port_base),
    ]))
    srcs = [str(Path(s).resolve()) for s in a.src]
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        b.start_cluster()
        for mode in a.modes.split(","):
            results[mode] = {}
            for s in srcs:
                results[mode][s] = {}
                for kind in ("ops",) if a.no_calls else ("ops", "calls"):
                    print(f"{mode} {kind} {s} ...", file=sys.stderr, flush=True)
                    results[mode][s][kind] = measure(b, bench, Path(s), mode, kind, a)
    finally:
        b.cleanup()
    print(report(srcs, results, a.top))
    if a.json:
        Path(a.json).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
