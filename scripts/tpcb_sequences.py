#!/usr/bin/env python3
"""What the pool setting transaction_discard_sequences costs (docs/performance.md): pgbench's default script
(TPC-B-like: three UPDATEs, a SELECT and an INSERT a transaction, so every transaction marks its server and
every change of client on a server sends DISCARD SEQUENCES ahead), through two poolers on one throwaway
cluster (transaction mode, pool_size 20, one worker), the setting on and off, `pgbench -c 100 -j 2 -T 12 -M
simple` through each in turn (the order swapped each round, after a warm-up run); tps and the pooler's CPU per transaction
(/proc/PID/stat utime+stime). `insert` instead runs one autocommit INSERT into a table with a serial column a
transaction (no BEGIN for the discard to share a write with: its own write, the worst case).

    .venv/bin/python scripts/tpcb_sequences.py [ROUNDS] [tpcb|insert]     # default 2 tpcb
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from login_storm import cpu_seconds  # noqa: E402

from tests.support.cluster import DBNAME, SCRAM_PASSWORD, SCRAM_USER, pooler_config, throwaway_cluster  # noqa: E402
from tests.support.pooler import Pooler  # noqa: E402


def pgbench(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    out = subprocess.run(["pgbench", *args], env=env, capture_output=True, text=True, check=True).stdout
    tps = next(float(line.split()[2]) for line in out.splitlines() if line.startswith("tps = "))
    done = next(line for line in out.splitlines() if line.startswith("number of transactions actually processed"))
    return tps, int(done.split(":")[1].split("/")[0])


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    workload = sys.argv[2] if len(sys.argv) > 2 else "tpcb"
    env = dict(os.environ, PGPASSWORD=SCRAM_PASSWORD)
    with throwaway_cluster(settings={"max_connections": "200"}) as pg, tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["pgbench", "-i", "-q", "-s", "10", "-h", pg.host, "-p", str(pg.port), "-U", SCRAM_USER,
                        DBNAME], env=env, check=True, capture_output=True)
        script: list[str] = []
        if workload == "insert":
            subprocess.run(["psql", "-qX", "-h", pg.host, "-p", str(pg.port), "-U", SCRAM_USER, "-d", DBNAME, "-c",
                            "create table seq_bench (id serial primary key, x int)"], env=env, check=True)
            with open(f"{tmp}/insert.sql", "w") as f:
                f.write("insert into seq_bench (x) values (1);\n")
            script = ["-f", f"{tmp}/insert.sql"]
        poolers: dict[bool, Pooler] = {}
        try:
            for on in (True, False):
                cfg = pooler_config(pg, pool_mode="transaction", pool_size=20, general={"worker_threads": 1},
                                    pool={"transaction_discard_sequences": on})
                os.makedirs(f"{tmp}/{on}")
                poolers[on] = Pooler(cfg, f"{tmp}/{on}").start()
            warm = poolers[True]  # a first run, not counted: the first cell after pgbench -i ran slower either way
            pgbench([*script, "-n", "-c", "100", "-j", "2", "-T", "5", "-h", warm.host, "-p", str(warm.port), "-U",
                     SCRAM_USER, DBNAME], env)
            for r in range(rounds):
                for on in (True, False) if r % 2 == 0 else (False, True):
                    p = poolers[on]
                    assert p.proc is not None
                    before = cpu_seconds(p.proc.pid)
                    tps, n = pgbench([*script, "-n", "-c", "100", "-j", "2", "-T", "12", "-M", "simple", "-h", p.host, "-p",
                                      str(p.port), "-U", SCRAM_USER, DBNAME], env)
                    used = cpu_seconds(p.proc.pid) - before
                    print(f"round {r} transaction_discard_sequences={str(on).lower()}: {tps:,.0f} tps, pooler "
                          f"{1e6 * used / max(n, 1):.1f} us/tx", flush=True)
        finally:
            for p in poolers.values():
                p.stop()


if __name__ == "__main__":
    main()
