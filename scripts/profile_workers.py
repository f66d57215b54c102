#!/usr/bin/env python3
"""Where does a second worker's CPU go? (`make bench-profile`; docs/performance.md).

For each worker count, on one throwaway cluster (scripts/bench.py's), pgbench -S through pgdoorman:
* plain runs (`--repeat` of them, each a single pgbench run: contamination by other work on the machine is
  reported, not retried): the pooler's CPU per transaction, per thread, and its context switches;
* one run under `perf record` (native self time by symbol, kernel included; needs perf and root or
  perf_event_paranoid <= 1): what the interpreter, the allocator, atomics and the syscalls cost;
* one run under scripts/pgdoorman_counters.py: handovers, wake-ups, epoll waits and pool-lock waits per
  transaction, and a sample of the Python functions the worker threads are in.
py-spy cannot read a free-threaded 3.13t process yet (benfred/py-spy#711); with a GIL build (--python
.venv/bin/python) `--py-spy` adds a `py-spy record --native` run whose top functions are printed too.
Nothing here changes pgdoorman; `--src DIR` runs the pgdoorman/ package found in DIR (say a `git archive`
of a commit) instead of the checkout's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SCRIPT_DIR = Path(__file__).resolve().parent
REPO = SCRIPT_DIR.parent
sys.path.insert(0, str(SCRIPT_DIR))

import bench  # noqa: E402  (scripts/bench.py: cluster, pooler start, pgbench cell with CPU accounting)


def thread_stats(pid: int) -> dict[str, dict[str, int]]:
    """{tid: {cpu_ns, vcsw, ivcsw}} of a process (3.13 leaves every thread's OS name "python")."""
    out: dict[str, dict[str, int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            st = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (OSError, ValueError):
            continue
        vol = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", st, re.M)
        inv = re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", st, re.M)
        out[tid] = {"cpu_ns": ns, "vcsw": int(vol.group(1)) if vol else 0, "ivcsw": int(inv.group(1)) if inv else 0}
    return out


class Profiler:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        bargs = bench.parse_args([
            "--python", a.python, "--duration", str(a.duration), "--idle-clients", "0", "--only", "pgdoorman",
            "--modes", a.mode, "--clients", str(a.clients),
            "--wait-quiet", str(a.wait_quiet), "--pool-size", str(a.pool_size),
        ])
        self.b = bench.Bench(bargs)
        if a.src:
            self.b.pgdoorman_src = Path(a.src).resolve()
        self.results: dict[str, Any] = {"args": vars(a), "runs": []}

    def start(self, workers: int, launch: list[str] | None = None, env: dict[str, str] | None = None) -> Any:
        self.b.args.workers = workers
        self.b.pgdoorman_launch = launch or ["-m", "pgdoorman"]
        self.b.pgdoorman_env = env or {}
        return self.b.start_pgdoorman()

    def single(self, pid: int, recorder: Any = None) -> bench.Cell:
        """One pgbench run, no re-runs (a recorder attached to the pooler must see exactly this run): wait for
        a quiet machine, start `recorder` 2.5 s into pgbench (past the connection ramp-up), run."""
        pre = bench.wait_quiet(self.a.wait_quiet, self.b.args.max_foreign)
        t = None
        if recorder is not None:
            def later() -> None:
                time.sleep(2.5)
                recorder()

            t = threading.Thread(target=later)
            t.start()
        c = self.b.pgbench_once("pgdoorman", bench.PORT_PGDOORMAN, self.a.mode, self.a.clients, pid)
        c.attempts, c.pre_busy = 1, pre
        c.contaminated = c.foreign_cores is not None and c.foreign_cores > self.b.args.max_foreign
        if t is not None:
            t.join()
        return c

    def plain(self, workers: int, rep: int) -> dict[str, Any]:
        """One run: the pooler's CPU per transaction (bench.py's steady window) and its threads' CPU and context
        switches from 2.5 s into pgbench to its end."""
        p = self.start(workers)
        try:
            snaps: list[dict[str, dict[str, int]]] = []
            c = self.single(p.pid, lambda snaps=snaps, pid=p.pid: snaps.append(thread_stats(pid)))
            after = thread_stats(p.pid)
        finally:
            self.b.procs.stop(p)
        before = snaps[0] if snaps else {}
        n = c.n_tx or 0
        if c.progress and snaps:
            n = round(sum(tps for t, tps in c.progress if t > 2.5)) or n
        threads = sorted(
            (
                {
                    "cpu_us_per_tx": round((v["cpu_ns"] - before.get(k, {}).get("cpu_ns", 0)) / 1e3 / n, 2),
                    "vcsw_per_tx": round((v["vcsw"] - before.get(k, {}).get("vcsw", 0)) / n, 3),
                    "ivcsw_per_tx": round((v["ivcsw"] - before.get(k, {}).get("ivcsw", 0)) / n, 3),
                }
                for k, v in after.items()
                if n
            ),
            key=lambda d: -d["cpu_us_per_tx"],
        )
        r = {"kind": "plain", "workers": workers, "rep": rep, "tps": c.tps, "pooler_us": c.pooler_us,
             "postgres_us": c.postgres_us, "pgbench_us": c.pgbench_us, "box_us": c.box_us,
             "foreign_cores": c.foreign_cores, "contaminated": c.contaminated, "attempts": c.attempts,
             "status": c.status, "n_tx": n, "threads": threads}
        print(f"  plain w={workers} #{rep + 1}: {bench.one_line(c)}", flush=True)
        return r

    def perf(self, workers: int) -> dict[str, Any] | None:
        """perf with DWARF call graphs and CPython's perf_jit (3.13+): every sample names the native function
        on CPU (kernel included) and the innermost Python function above it."""
        exe = shutil.which("perf")
        if not exe:
            print("  perf: not installed (apt-get install linux-perf); skipped", flush=True)
            return None
        # -X perf_jit: a jitdump with unwind info per Python function (py::name:file frames in the stacks).
        p = self.start(workers, env={"PYTHON_PERF_JIT_SUPPORT": "1"})
        d = Path(tempfile.mkdtemp(prefix="perf-", dir=self.b.tmp))
        data, injected = d / "perf.data", d / "perf.jit.data"
        window = max(2, self.a.duration - 4)
        try:
            rec: subprocess.Popen[Any] | None = None

            def start_perf() -> None:
                nonlocal rec
                rec = subprocess.Popen([exe, "record", "-q", "-k", "1", "-F", str(self.a.perf_hz), "--call-graph",
                                        "dwarf,16384", "-p", str(p.pid), "-o", str(data), "--", "sleep", str(window)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

            c = self.single(p.pid, start_perf)
            if rec is not None:
                _, err = rec.communicate(timeout=120)
                if rec.returncode != 0:
                    print(f"  perf record failed: {err.decode(errors='replace')[-300:]}", flush=True)
                    return None
        finally:
            self.b.procs.stop(p)
        subprocess.run([exe, "inject", "--jit", "-i", str(data), "-o", str(injected)], capture_output=True)
        src = injected if injected.exists() else data
        script = subprocess.run([exe, "script", "-i", str(src), "-F", "tid,ip,sym,dso", "--no-inline"],
                                capture_output=True, text=True).stdout
        with contextlib.suppress(OSError):
            os.unlink(f"/tmp/jit-{p.pid}.dump")
        for f in Path("/tmp").glob(f"jitted-{p.pid}-*.so"):
            with contextlib.suppress(OSError):
                f.unlink()
        native: collections.Counter[str] = collections.Counter()
        python: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        n = 0
        for block in script.split("\n\n"):
            frames = [ln.strip() for ln in block.strip().splitlines()[1:]]
            if not frames:
                continue
            n += 1
            leaf = frames[0].split(" ", 1)[1] if " " in frames[0] else frames[0]
            sym, _, dso = leaf.rpartition(" (")
            dso = dso.rstrip(")")
            kind = "kernel" if "kernel" in dso else os.path.basename(dso)
            kinds[kind] += 1
            native[f"{sym} [{kind}]"] += 1
            py = next((f.split(" ", 1)[1].split(" (")[0] for f in frames if " py::" in f), "(no Python frame)")
            python[py.removeprefix("py::").replace(str(self.b.pgdoorman_src) + "/", "")] += 1
        us = c.pooler_us or 0.0

        def top(cnt: collections.Counter[str]) -> list[dict[str, Any]]:
            return [{"name": k, "pct": round(100 * v / n, 1), "us_per_tx": round(us * v / n, 2)}
                    for k, v in cnt.most_common(self.a.top * 2)]

        by_kind = {k: round(us * v / n, 2) for k, v in kinds.most_common()} if n else {}
        print(f"  perf w={workers}: {bench.one_line(c)}; {n} samples; us/tx by object: {by_kind}", flush=True)
        return {"kind": "perf", "workers": workers, "tps": c.tps, "pooler_us": c.pooler_us, "samples": n,
                "by_object_us_per_tx": by_kind, "native": top(native), "python": top(python),
                "cmd": f"PYTHON_PERF_JIT_SUPPORT=1 pgdoorman ...; perf record -k 1 -F {self.a.perf_hz} "
                       f"--call-graph dwarf,16384 -p PID -- sleep {window}; perf inject --jit; perf script"}

    def counters(self, workers: int) -> dict[str, Any]:
        path = Path(tempfile.mkdtemp(prefix="counters-", dir=self.b.tmp)) / "counters.jsonl"
        env = {"PGDOORMAN_COUNTERS": str(path), "PGDOORMAN_SAMPLE_HZ": str(self.a.sample_hz)}
        p = self.start(workers, launch=[str(SCRIPT_DIR / "pgdoorman_counters.py")], env=env)
        t0 = 0.0
        try:
            def mark() -> None:
                nonlocal t0
                t0 = time.monotonic()

            # Counted from 2.5 s into the run (the snapshot before that moment) to its end: n_tx is rebuilt
            # from pgbench's progress lines over the same span.
            c = self.single(p.pid, mark)
            time.sleep(1.5)
        finally:
            self.b.procs.stop(p)
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        first = max((x for x in lines if x["t"] <= t0), key=lambda x: x["t"], default=lines[0])
        last = lines[-1]
        # Transactions from the snapshot's time to the end, from pgbench's per-second progress (its -T run
        # started at t0 - 2.5 s in CLOCK_MONOTONIC terms).
        since = first["t"] - (t0 - 2.5)
        n = max(1, round(sum(tps for t, tps in c.progress if t > since))) if c.progress else c.n_tx or 1

        def delta(kind: str) -> dict[str, collections.Counter[str]]:
            out: dict[str, collections.Counter[str]] = {}
            for th, d in last[kind].items():
                prev = first[kind].get(th, {})
                out[th] = collections.Counter({k: v - prev.get(k, 0) for k, v in d.items() if v - prev.get(k, 0)})
            return out

        counts = delta("threads")
        total: collections.Counter[str] = collections.Counter()
        for d in counts.values():
            total.update(d)
        # pgbench -S runs one statement per transaction, which checks out a server once (any -M): the
        # checkout count is the exact number of transactions in the counted span (n is the progress estimate).
        checkouts = total.get("pool.acquire.queued", 0) + total.get("pool.acquire.local_idle", 0)
        if checkouts:
            n = checkouts
        per_tx = {k: round(v / n, 4) for k, v in sorted(total.items())}
        samples = delta("samples")
        sampler = delta("sampler")
        top: dict[str, list[tuple[str, float]]] = {}
        for th, d in sorted(samples.items()):
            s = sum(d.values()) or 1
            top[th] = [(fn, round(100 * k / s, 1)) for fn, k in d.most_common(self.a.top)]
        all_s: collections.Counter[str] = collections.Counter()
        for d in samples.values():
            all_s.update(d)
        s = sum(all_s.values()) or 1
        top["all workers"] = [(fn, round(100 * k / s, 1)) for fn, k in all_s.most_common(self.a.top)]
        print(f"  counters w={workers}: {bench.one_line(c)}", flush=True)
        for k in ("adopt", "hand_over", "wake.sent", "call_soon_threadsafe", "pool_lock.acquire", "pool_lock.wait",
                  "epoll.wait", "epoll.events"):
            print(f"    {k}/tx = {per_tx.get(k, 0)}", flush=True)
        return {"kind": "counters", "workers": workers, "tps": c.tps, "pooler_us_with_counters": c.pooler_us,
                "n_tx": n, "per_tx": per_tx, "per_thread": {k: dict(v) for k, v in counts.items()},
                "samples_total": {k: sum(v.values()) for k, v in samples.items()},
                "sampler": {k: dict(v) for k, v in sampler.items()}, "top": top}

    def pyspy(self, workers: int) -> dict[str, Any] | None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.path.exists(exe):
            print("  py-spy: not installed (pip install py-spy); skipped", flush=True)
            return None
        p = self.start(workers)
        raw = Path(tempfile.mkdtemp(prefix="pyspy-", dir=self.b.tmp)) / "pyspy.txt"
        window = max(2, self.a.duration - 4)
        try:
            rec: subprocess.Popen[Any] | None = None

            def start_pyspy() -> None:
                nonlocal rec
                # --native cannot go with --nonblocking: py-spy stops the process for each sample (the CPU
                # figure of this run is not the plain one).
                rec = subprocess.Popen([exe, "record", "--threads", "--native", "-r", "97", "-d", str(window),
                                        "-f", "raw", "-o", str(raw), "-p", str(p.pid)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

            c = self.single(p.pid, start_pyspy)
            if rec is not None:
                _, err = rec.communicate(timeout=60)
                if rec.returncode != 0 or not raw.exists():
                    print(f"  py-spy failed: {err.decode(errors='replace')[-300:]}", flush=True)
                    return None
        finally:
            self.b.procs.stop(p)
        # Raw lines: "thread (TID): worker-N;outermost;...;innermost COUNT"; Python frames look like
        # "func (file.py:line)", native ones "symbol (library)".
        native: collections.Counter[str] = collections.Counter()
        python: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, k = line.rpartition(" ")
            frames = stack.split(";")
            if not (stack and k.isdigit() and "worker-" in frames[0]):
                continue
            native[frames[-1]] += int(k)
            py = next((f for f in reversed(frames[1:]) if re.search(r"\.py:\d+\)$", f)), "(no Python frame)")
            python[re.sub(r":\d+\)$", ")", py)] += int(k)
        n = sum(native.values()) or 1

        def top(cnt: collections.Counter[str]) -> list[dict[str, Any]]:
            return [{"name": k, "pct": round(100 * v / n, 1)} for k, v in cnt.most_common(self.a.top * 2)]

        print(f"  py-spy w={workers}: {bench.one_line(c)}; {n} samples", flush=True)
        return {"kind": "py-spy", "workers": workers, "tps": c.tps, "pooler_us": c.pooler_us, "samples": n,
                "native": top(native), "python": top(python)}

    def run(self) -> None:
        b = self.b
        b.collect_versions()
        self.results["versions"] = b.versions
        bench.raise_nofile(bench.MAX_CLIENTS_POOLER + 4096)
        print(f"workdir {b.tmp}; creating the cluster ...", flush=True)
        b.start_cluster()
        # Plain runs interleaved (1, 2, 1, 2, ...): a drift in the machine's other load hits every worker count.
        for rep in range(self.a.repeat):
            for w in self.a.workers:
                self.results["runs"].append(self.plain(w, rep))
        for w in self.a.workers:
            if self.a.perf:
                r = self.perf(w)
                if r:
                    self.results["runs"].append(r)
            if self.a.counters:
                self.results["runs"].append(self.counters(w))
            if self.a.py_spy:
                r = self.pyspy(w)
                if r:
                    self.results["runs"].append(r)


def summary(res: dict[str, Any]) -> str:
    out = []
    runs = res["runs"]
    for w in res["args"]["workers"]:
        plain = [r for r in runs if r["kind"] == "plain" and r["workers"] == w and r["pooler_us"]]
        us = [r["pooler_us"] for r in plain if not r["contaminated"]] or [r["pooler_us"] for r in plain]
        if us:
            out.append(f"workers={w}: pooler us/tx {', '.join(map(str, us))} (tps "
                       f"{', '.join(str(round(r['tps'] or 0)) for r in plain)}; foreign cores "
                       f"{', '.join(str(r['foreign_cores']) for r in plain)})")
            for v in plain[-1]["threads"][:4]:
                out.append(f"    thread (busiest first, from 2.5 s into the run): {v}")
        for r in runs:
            if r["workers"] != w:
                continue
            if r["kind"] == "perf":
                # Sampling with DWARF stacks costs the pooler CPU itself: shares are applied to the plain runs'
                # median CPU per transaction.
                base = sorted(us)[len(us) // 2] if us else r["pooler_us"] or 0.0
                r["plain_median_us"] = base
                out.append(f"  perf (w={w}, {r['samples']} samples; pooler us/tx {r['pooler_us']} under perf, shares "
                           f"below applied to the plain median {base})")
                tot = sum(r["by_object_us_per_tx"].values()) or 1
                out.append("   by object: " + ", ".join(
                    f"{k} {100 * v / tot:.1f}% = {base * v / tot:.1f} us/tx" for k, v in r["by_object_us_per_tx"].items()))
                out.append("   native self (leaf symbol): %, us/tx")
                out += [f"    {x['pct']:5.1f}% {base * x['pct'] / 100:6.2f}  {x['name']}" for x in r["native"]]
                out.append("   Python self (innermost Python function, its C calls and syscalls included): %, us/tx")
                out += [f"    {x['pct']:5.1f}% {base * x['pct'] / 100:6.2f}  {x['name']}" for x in r["python"]]
            elif r["kind"] == "counters":
                out.append(f"  counters per tx (w={w}, pooler us/tx with counters {r['pooler_us_with_counters']}):")
                out += [f"    {k} = {v}" for k, v in r["per_tx"].items()]
                for th, d in sorted(r["sampler"].items()):
                    out.append(f"    {th}: {d}")
                for th, top in r["top"].items():
                    out.append(f"  sampled Python frames on CPU, {th}:")
                    out += [f"    {pct:5.1f}%  {fn}" for fn, pct in top]
            elif r["kind"] == "py-spy":
                out.append(f"  py-spy --native (w={w}, {r['samples']} samples of the worker threads):")
                out.append("   leaf frame (native or Python): %")
                out += [f"    {x['pct']:5.1f}%  {x['name']}" for x in r["native"]]
                out.append("   innermost Python function: %")
                out += [f"    {x['pct']:5.1f}%  {x['name']}" for x in r["python"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=str(REPO / ".venv-ft" / "bin" / "python"), help="interpreter for pgdoorman")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker_threads values")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--mode", default="simple", choices=bench.MODES)
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--duration", type=int, default=20, help="seconds per pgbench run")
    ap.add_argument("--repeat", type=int, default=2, help="plain runs per worker count")
    ap.add_argument("--wait-quiet", type=float, default=30.0,
                    help="seconds to wait for an idle machine before each run (bench.py's --wait-quiet)")
    ap.add_argument("--no-perf", dest="perf", action="store_false")
    ap.add_argument("--perf-hz", type=int, default=199)
    ap.add_argument("--no-counters", dest="counters", action="store_false")
    ap.add_argument("--sample-hz", type=float, default=97.0, help="Python frame samples per second (counters run)")
    ap.add_argument("--py-spy", action="store_true", help="also a py-spy run (GIL builds only)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--src", help="directory holding the pgdoorman/ package to run (default: this checkout)")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args(argv)
    a.workers = [int(x) for x in a.workers.split(",") if x]
    # As in bench.py: SIGTERM/SIGHUP and (even when started in the background) SIGINT stop the run through
    # `finally`, which stops every process it started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, bench._on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prof = Profiler(a)
    try:
        prof.run()
    except (KeyboardInterrupt, bench.Interrupted):
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        prof.b.cleanup()
    text = summary(prof.results)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(prof.results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
