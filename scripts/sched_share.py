#!/usr/bin/env python3
"""Who gets the CPU at pgbench -S -c 100: PgBouncer and pgdoorman side by side, with what `make bench`
reports per cell (tps, CPU per transaction of the pooler, PostgreSQL and pgbench) and what explains the
ratio (docs/performance.md, "Where PgBouncer's lead per core comes from"): how much of the window the
pooler's busiest thread ran and how much it was runnable but waiting for a CPU (/proc/TID/schedstat), and
the context switches per transaction of each side (voluntary: it slept; involuntary: it was preempted).

    .venv/bin/python scripts/sched_share.py --rounds 2                 # pgbench at the poolers' priority
    .venv/bin/python scripts/sched_share.py --pgbench-nice 0           # pgbench below them
    .venv/bin/python scripts/sched_share.py --python .venv-ft/bin/python --workers 2 \\
        --set worker_placement=spread --only pgdoorman
    .venv/bin/python scripts/sched_share.py --profile 25               # and where PostgreSQL's CPU goes

One throwaway cluster and both poolers from scripts/bench.py (the same settings, pool_size 20, everything
at nice -10 as root); each cell runs pgbench for --duration seconds and reads /proc over the window from
the third second to two seconds before the end; transactions are pgbench's own (-P 1 progress lines of the
window). A diagnostic, not a benchmark: `make bench` is the measure that counts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
_PROGRESS = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps")


def task_stats(pid: int) -> dict[str, list[int]]:
    """Per thread of `pid`: utime and stime (ticks), voluntary and involuntary switches, run and wait ns."""
    out: dict[str, list[int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            with open(f"{base}/status") as f:
                status = f.read()
            with open(f"{base}/schedstat") as f:
                sched = f.read().split()
        except OSError:
            continue
        v = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        nv = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M)
        out[tid] = [int(st[11]), int(st[12]), int(v.group(1)) if v else 0, int(nv.group(1)) if nv else 0,
                    int(sched[0]), int(sched[1])]
    return out


def snapshot(groups: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    return {name: {f"{pid}/{tid}": v for pid in pids for tid, v in task_stats(pid).items()}
            for name, pids in groups.items()}


def delta(a: dict[str, list[int]], b: dict[str, list[int]]) -> list[list[int]]:
    return [[x - y for x, y in zip(v, a.get(k, [0] * 6), strict=True)] for k, v in b.items()]


def cell(b: B.Bench, target: str, pooler: int, port: int, mode: str, args: argparse.Namespace) -> str:
    cmd = ([] if args.pgbench_nice == 0 else B.nice_prefix()) + [
        b.bin("pgbench"), "-h", B.HOST, "-p", str(port), "-U", B.ROLE, "-M", mode, "-S", "-c", str(args.clients),
        "-j", "2", "-T", str(args.duration), "-P", "1", B.DB]
    pb = subprocess.Popen(cmd, env=b.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    w0, w1 = 3.0, args.duration - 2.0
    time.sleep(w0)
    groups = {"pooler": [pooler], "postgres": list(B.family_cpu_ns(b.postmaster)), "pgbench": [pb.pid]}
    s0 = snapshot(groups)
    perf = None
    profile = None
    if args.profile:  # where PostgreSQL's CPU goes, sampled over the window (cpu-clock needs no hardware counters)
        data = b.tmp / f"perf-{target}-{mode}.data"
        profile = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-o", str(data),
                                    "-p", ",".join(map(str, groups["postgres"])), "--", "sleep", str(w1 - w0)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if args.perf:  # machine-wide software events over the window (they need no hardware counters)
        perf = subprocess.Popen(["perf", "stat", "-a", "-x,", "-e", "context-switches,cpu-migrations", "--",
                                 "sleep", str(w1 - w0)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(max(0.0, start + w1 - time.monotonic()))
    s1 = snapshot(groups)
    counted = perf.communicate()[1] if perf is not None else ""
    if profile is not None:
        profile.wait()
    window = time.monotonic() - start - w0
    _, err = pb.communicate()
    ntx = sum(float(tps) for t, tps in _PROGRESS.findall(err) if w0 < float(t) <= w1 + 0.5)
    if ntx <= 0:
        return f"{target:10} {mode:9} pgbench reported no progress in the window: {err.strip()[-300:]}"
    cols = [f"{target:10} {mode:9} {ntx / (w1 - w0):9.0f}"]
    for name in groups:
        d = delta(s0[name], s1[name])
        u, s, v, nv = (sum(x[i] for x in d) for i in range(4))
        cols.append(f"{u / HZ * 1e6 / ntx:5.1f}+{s / HZ * 1e6 / ntx:4.1f} {v / ntx:4.2f}/{nv / ntx:4.2f}")
        if name == "pooler":
            busiest = max(d, key=lambda x: x[4])
            cols.append(f"{busiest[4] / window / 1e7:5.1f} {busiest[5] / window / 1e7:5.1f}")
    for line in counted.splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].isdigit():
            cols.append(f"{f[2]} {int(f[0]) / ntx:.2f}")
    line = "  ".join(cols)
    if profile is not None:
        line += "\n" + top_symbols(b.tmp / f"perf-{target}-{mode}.data", args.profile)
    return line


def start_poolers(b: B.Bench, only: list[str]) -> list[tuple[str, int, int]]:
    """PgBouncer and pgdoorman as `make bench` runs them, those named in `only`: (target, pid, port) each."""
    poolers = []
    if "pgbouncer" in only:
        poolers.append(("pgbouncer", b.start_pgbouncer().pid, B.PORT_PGBOUNCER))
    if "pgdoorman" in only:
        poolers.append(("pgdoorman", b.start_pgdoorman().pid, B.PORT_PGDOORMAN))
    return poolers


def table(b: B.Bench, poolers: list[tuple[str, int, int]], modes: list[str], args: argparse.Namespace,
          pause: float = 0.0) -> None:
    """The header, then a cell for each round (args.rounds), pooler and mode, `pause` seconds after each."""
    print("per transaction: CPU µs user+system, context switches voluntary/involuntary; pooler's busiest "
          "thread: % of the window running, % runnable but waiting")
    print(f"{'target':10} {'mode':9} {'tps':>9}  {'pooler':>21}  {'run':>5} {'wait':>5}  {'postgres':>21}  "
          f"{'pgbench':>21}")
    for _ in range(args.rounds):
        for target, pid, port in poolers:
            for mode in modes:
                print(cell(b, target, pid, port, mode, args), flush=True)
                time.sleep(pause)


def top_symbols(data: Path, n: int) -> str:
    """The `n` symbols PostgreSQL's processes spent most samples in (kernel ones marked [k]), as shares."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "sym",
                          "--percent-limit", "0.5"], capture_output=True, text=True).stdout
    rows = [ln.strip() for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
    return "\n".join("    " + r for r in rows[:n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable, help="the interpreter pgdoorman runs on")
    ap.add_argument("--src", help="a directory holding the pgdoorman package to run (default: this checkout)")
    ap.add_argument("--workers", type=int, help="pgdoorman's worker_threads (bench.py's default otherwise)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a general: setting for pgdoorman (repeatable), e.g. worker_placement=spread")
    ap.add_argument("--only", default="pgbouncer,pgdoorman")
    ap.add_argument("--modes", default="simple")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--perf", action="store_true",
                    help="also the machine's context switches and CPU migrations per transaction (perf stat -a)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also PostgreSQL's N busiest symbols in each cell (perf record -e cpu-clock)")
    ap.add_argument("--pgbench-nice", type=int, choices=(0, B.NICE), default=B.NICE,
                    help=f"pgbench's nice value: {B.NICE} (the poolers' and PostgreSQL's, as in make bench) or 0")
    args = ap.parse_args()
    bench_args = ["--python", args.python, "--no-charts", "--idle-clients", "0", "--login-storm", "0"]
    if args.workers:
        bench_args += ["--workers", str(args.workers)]
    b = B.Bench(B.parse_args(bench_args))
    if args.src:
        b.pgdoorman_src = Path(args.src).resolve()
    if args.set:
        plain = b.pgdoorman_config

        def with_settings() -> Path:
            path = plain()
            lines = "".join(f"  {kv.split('=', 1)[0]}: {kv.split('=', 1)[1]}\n" for kv in args.set)
            path.write_text(path.read_text().replace("general:\n", "general:\n" + lines, 1))
            return path

        b.pgdoorman_config = with_settings  # type: ignore[method-assign]
    only = args.only.split(",")
    b.nofile = B.raise_nofile(20000)
    try:
        b.start_cluster()
        table(b, start_poolers(b, only), args.modes.split(","), args)
    finally:
        b.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
