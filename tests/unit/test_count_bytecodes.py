"""scripts/count_bytecodes.py (make bench-count): the per-transaction table it prints, and its tracer, which
must count what a traced program executes in every thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import count_bytecodes as cb  # noqa: E402


def test_report_divides_by_transactions_and_sorts_by_difference() -> None:
    a = {"ops": {"n": 10, "rows": [["x.py", "f", 3, 100], ["x.py", "f", 4, 100], ["y.py", "g", 1, 50]]},
         "calls": {"n": 10, "rows": [["x.py", "f", 0, 10], ["C", "len", 0, 30]]}}
    b = {"ops": {"n": 20, "rows": [["x.py", "f", 3, 400], ["z.py", "h", 9, 200]]},
         "calls": {"n": 20, "rows": [["x.py", "f", 0, 20], ["C", "len", 0, 20]]}}
    assert cb.by_function(a["ops"]) == {"x.py:f": 20.0, "y.py:g": 5.0}
    text = cb.report(["A", "B"], {"simple": {"A": a, "B": b}}, top=5)
    lines = text.splitlines()
    assert lines[0] == "simple: bytecodes/tx 25  30   (A, B)"
    assert lines[1].split() == ["0.0", "10.0", "+10.0", "z.py:h"]  # the largest difference first
    assert [ln.split()[-1] for ln in lines[2:4]] == ["y.py:g", "x.py:f"]
    assert lines[4] == "simple: Python calls/tx 1.0  1.0   C calls/tx 3.0  1.0"


def test_tracer_counts_every_thread(tmp_path: Path) -> None:
    """The wrapper runs a module under the tracer: a program whose second thread runs a known function is
    counted, and the dump signal writes the counts."""
    pkg = tmp_path / "pgdoorman"  # the wrapper runs the module named pgdoorman
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import threading, time\n"
        "def spin():\n"
        "    n = 0\n"
        "    for _ in range(1000):\n"
        "        n += 1\n"
        "t = threading.Thread(target=spin); t.start(); t.join()\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    out = tmp_path / "counts.json"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    p = subprocess.Popen([sys.executable, str(SCRIPTS / "count_bytecodes.py"), "--trace", "ops", "--trace-out",
                          str(out)], env=env)
    try:
        rows = None
        for _ in range(300):  # (a signal before the tracer's handler is set would end the process)
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.1)
        os.kill(p.pid, cb.DUMP)
        for _ in range(100):
            time.sleep(0.1)
            if out.exists():
                rows = json.loads(out.read_text())
                break
        assert rows is not None
        spin = sum(r[3] for r in rows if r[1] == "spin")
        assert spin > 1000 * 4  # at least four instructions per loop turn, in the thread
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
