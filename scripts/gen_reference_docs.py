#!/usr/bin/env python3
"""Writes the configuration reference docs/reference/*.md from the config field table
(pgdoorman.config.render_docs). `--check` only compares and exits 1 when the files are stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgdoorman.config import render_docs  # noqa: E402 - needs the sys.path entry above


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "reference", help="output directory")
    parser.add_argument("--check", action="store_true", help="report stale files instead of writing them")
    args = parser.parse_args(argv)
    out: Path = args.output
    docs = render_docs()
    existing = {p.name for p in out.glob("*.md")} if out.is_dir() else set()
    stale = sorted(name for name, text in docs.items() if not (out / name).is_file() or (out / name).read_text() != text)
    extra = sorted(existing - docs.keys())
    if args.check:
        for name in stale:
            print(f"{out / name}: out of date; run scripts/gen_reference_docs.py")
        for name in extra:
            print(f"{out / name}: not generated from the field table; remove it")
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).write_text(docs[name])
        print(f"wrote {out / name}")
    for name in extra:
        (out / name).unlink()
        print(f"removed {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
