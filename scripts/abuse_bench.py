#!/usr/bin/env python3
"""What abusive clients cost the pooler: its RSS (and peak RSS, fds) at a baseline, after a flood of refused
connections (wrong passwords and bad startup packets), while many half-open connections are held and after
they go, while clients that never read a large result are connected and after they go; and the latency of
canary clients (SELECT 1 on a pool of their own: persistent sessions and log-in-per-query ones) during
each phase. Plain measurements: nothing here asserts a time.

    .venv/bin/python scripts/abuse_bench.py [--refused 20000] [--half-open 2000] [--stalled 200]
        [--pooler-src DIR] [--json FILE]

--pooler-src runs the pooler from another checkout (e.g. `git worktree add /tmp/old <commit>`), so the same
harness measures the code before and after a change. A throwaway PostgreSQL is started and removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustness_common import (  # noqa: E402
    MD5_PASSWORD,
    MD5_USER,
    ROOT,
    SCRAM_PASSWORD,
    SCRAM_USER,
    Canary,
    PoolerProcess,
    admin_rows,
    pooler_config,
    raise_nofile,
    stack,
    wire,
)

I32 = struct.Struct("!i")
BIG_RESULT = "SELECT repeat('x', 1000) FROM generate_series(1, 200000)"  # about 200 MB if it were read


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ refused logins

def bad_startup(kind: int, rng: random.Random) -> bytes:
    """A startup the pooler must refuse, in one of several ways (all answered by a FATAL and a close)."""
    if kind == 0:  # unsupported protocol version (2.0; 1234.5678 would be a CancelRequest)
        body = I32.pack(2 << 16) + b"user\x00x\x00\x00"
        return I32.pack(len(body) + 4) + body
    if kind == 1:  # length word below the minimum
        return I32.pack(3)
    if kind == 2:  # no user
        return wire.startup_message({"database": "app"})
    if kind == 3:  # unknown database
        return wire.startup_message({"user": MD5_USER, "database": "no_such_db"})
    if kind == 4:  # layout: no terminator
        body = I32.pack(wire.PROTOCOL_V3) + b"user\x00" + MD5_USER.encode()
        return I32.pack(len(body) + 4) + body
    # random bytes behind a plausible length and the 3.0 code: mostly a bad layout
    junk = rng.randbytes(rng.randint(1, 64))
    body = I32.pack(wire.PROTOCOL_V3) + junk
    return I32.pack(len(body) + 4) + body


def has_error(data: bytes) -> bool:
    """Whether the messages in `data` include an ErrorResponse."""
    pos = 0
    while pos + 5 <= len(data):
        if data[pos] == 69:
            return True
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
    return False


async def read_to_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return out


async def refused_once(host: str, port: int, i: int, rng: random.Random, timeout: float) -> str:
    """One refused connection; the outcome: 'refused' (an ErrorResponse, then the pooler closed), or why not."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return f"connect: {e.__class__.__name__}"
    try:
        if i % 2 == 0:  # wrong password for a real user
            writer.write(wire.startup_message({"user": MD5_USER, "database": "app"}))
            async with asyncio.timeout(timeout):
                hdr = await reader.readexactly(5)
                body = await reader.readexactly(struct.unpack("!I", hdr[1:])[0] - 4)
            if hdr[:1] != b"R":
                return "no auth request"
            code = I32.unpack_from(body)[0]
            if code == 10:
                writer.write(wire.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=wrongwrongwrong"))
            else:
                writer.write(wire.password_message("md5" + "0" * 32 if code == 5 else "wrong"))
        else:
            writer.write(bad_startup(i // 2 % 6, rng))
        data = await read_to_eof(reader, timeout)
        return "refused" if has_error(data) else "closed without error"
    except TimeoutError:
        return "no answer in time"
    except (OSError, asyncio.IncompleteReadError) as e:
        return f"io: {e.__class__.__name__}"
    finally:
        writer.close()


async def refused_flood(host: str, port: int, n: int, concurrency: int, timeout: float) -> dict[str, int]:
    rng = random.Random(18)
    outcomes: dict[str, int] = {}
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            r = await refused_once(host, port, i, rng, timeout)
        outcomes[r] = outcomes.get(r, 0) + 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return outcomes


# ------------------------------------------------------------------------------------------ held connections

async def open_half(host: str, port: int, n: int, concurrency: int) -> list[asyncio.StreamWriter]:
    """n connections that never finish a startup packet: half send nothing, half two bytes of it."""
    sem = asyncio.Semaphore(concurrency)
    held: list[asyncio.StreamWriter] = []

    async def one(i: int) -> None:
        async with sem:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                return
            if i % 2:
                writer.write(b"\x00\x00")
                await writer.drain()
            held.append(writer)

    await asyncio.gather(*(one(i) for i in range(n)))
    return held


def open_stalled(pooler: PoolerProcess, n: int) -> tuple[list[wire.WireClient], int]:
    """n logged-in clients that each send a query with a large result and never read it."""
    clients: list[wire.WireClient] = []
    failed = 0
    for _ in range(n):
        try:
            c = pooler.connect(MD5_USER, MD5_PASSWORD)
            c.send(wire.query(BIG_RESULT))
            clients.append(c)
        except (OSError, TimeoutError, wire.WireError):
            failed += 1
    return clients, failed


# ------------------------------------------------------------------------------------------ the run

def sample(pooler: PoolerProcess, label: str, results: dict[str, Any], canary: Canary, since: float) -> float:
    st = pooler.stats()
    now = time.monotonic()
    pools = {f"{r['database']}/{r['user']}": {k: r[k] for k in ("cl_active", "cl_waiting", "sv_active", "sv_idle")}
             for r in admin_rows(pooler, "SHOW POOLS") if r["database"] == "app"}
    results["phases"].append({"phase": label, **st, "canary": canary.window(since, now), "pools": pools})
    c = results["phases"][-1]["canary"]
    log(f"{label:<38} RSS {st['rss_kib'] / 1024:7.1f} MiB  peak {st['hwm_kib'] / 1024:7.1f} MiB  fds {st['fds']:5d}"
        f"  canary p99 {c['persistent']['p99_ms']:7.1f} ms (reconnect {c['reconnecting']['p99_ms']:7.1f} ms)"
        f"  errors {c['persistent']['errors'] + c['reconnecting']['errors']}")
    return now


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refused", type=int, default=20000, help="refused connections (default 20000)")
    ap.add_argument("--half-open", type=int, default=2000, help="half-open connections held (default 2000)")
    ap.add_argument("--stalled", type=int, default=200, help="clients that never read a large result (default 200)")
    ap.add_argument("--concurrency", type=int, default=64, help="connections in flight during the flood")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the held connections stay (default 10)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait before an 'after' sample")
    ap.add_argument("--timer-wait", type=float, default=65.0,
                    help="also sample this long after the flood, past the 60 s login timeout (0: skip)")
    ap.add_argument("--workers", type=int, default=1, help="pooler worker_threads (default 1)")
    ap.add_argument("--pooler-src", type=Path, default=ROOT, help="source tree to run the pooler from")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = ap.parse_args(argv)

    raise_nofile(args.half_open + args.stalled + 4096)

    def config(pg: Any) -> dict[str, Any]:
        users = [
            # the abusers' pool: room for every stalled client to hold a server
            {"username": MD5_USER, "password": pg.stored_password(MD5_USER), "pool_size": args.stalled + 5},
            # the canaries' pool
            {"username": SCRAM_USER, "password": pg.stored_password(SCRAM_USER), "pool_size": 5},
        ]
        return pooler_config(pg, users=users, general={"worker_threads": args.workers})

    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "phases": []}
    with stack(config, args.pooler_src, "pgdoorman-abuse-", settings={"max_connections": str(args.stalled + 60)}) as (_, pooler):
        log(f"pooler pid {pooler.pid} on port {pooler.port}, source {args.pooler_src}")
        canary = Canary(pooler, SCRAM_USER, SCRAM_PASSWORD).start()
        time.sleep(5)
        t = sample(pooler, "baseline", results, canary, time.monotonic() - 5)

        t0 = time.monotonic()
        outcomes = asyncio.run(refused_flood(pooler.host, pooler.port, args.refused, args.concurrency, 10.0))
        rate = args.refused / (time.monotonic() - t0)
        log(f"{args.refused} refused connections in {time.monotonic() - t0:.1f} s ({rate:.0f}/s): {outcomes}")
        results["refused_outcomes"] = outcomes
        results["refused_per_s"] = round(rate)
        t = sample(pooler, f"after {args.refused} refused", results, canary, t)
        time.sleep(args.settle)
        t = sample(pooler, f"  +{args.settle:.0f} s", results, canary, t)
        if args.timer_wait > args.settle:
            time.sleep(args.timer_wait - args.settle)
            t = sample(pooler, f"  +{args.timer_wait:.0f} s (login timers expired)", results, canary, t)

        async def half_open_phase() -> None:
            nonlocal t
            held = await open_half(pooler.host, pooler.port, args.half_open, args.concurrency)
            log(f"{len(held)} half-open connections held")
            await asyncio.sleep(args.hold)
            t = sample(pooler, f"with {len(held)} half-open", results, canary, t)
            for w in held:
                w.close()
            await asyncio.sleep(args.settle)
            t = sample(pooler, "  after they went", results, canary, t)

        asyncio.run(half_open_phase())

        stalled, failed = open_stalled(pooler, args.stalled)
        log(f"{len(stalled)} clients stalled on a large result ({failed} could not start)")
        time.sleep(args.hold)
        t = sample(pooler, f"with {len(stalled)} stalled readers", results, canary, t)
        for c in stalled:
            c.close()
        time.sleep(args.settle)
        t = sample(pooler, "  after they went", results, canary, t)
        time.sleep(args.settle)
        # The abusers' pool still works, and its servers came back idle (or were closed).
        with pooler.connect(MD5_USER, MD5_PASSWORD) as c:
            results["abuser_pool_answers"] = c.query_rows("SELECT 42") == [["42"]]
            c.terminate()
        t = sample(pooler, "final", results, canary, t)
        canary.stop()
        results["canary_errors"] = canary.errors[:20]
        results["tracebacks_in_log"] = pooler.tracebacks()
        log(f"abusers' pool answers afterwards: {results['abuser_pool_answers']}; "
            f"tracebacks in the pooler log: {results['tracebacks_in_log']}; canary errors: {len(canary.errors)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
