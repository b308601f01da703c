"""Run every adapter on the same workloads, each in a fresh process, and compare.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME ...]

Prints, per operation, the median time per call with its interquartile range for every system,
and the ratio to the stdlib manager ("vs stdlib": above 1 means faster than the stdlib). For
iteration it also prints how many times faster it is than one round trip per item would be.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from adapters import ADAPTERS  # noqa: E402
from workloads import BIG, summarize, time_op  # noqa: E402

ANCHOR = "stdlib"


def measure(adapter: str, quick: bool) -> dict[str, Any]:
    """Runs inside a fresh process: one adapter, every operation it supports."""
    mod = importlib.import_module(f"adapters.{adapter}")
    state = mod.setup(quick)
    try:
        results = {}
        for name, fn in mod.operations(state).items():
            if name.startswith("iterate"):
                samples = time_op(fn, repeat=3 if quick else 7, number=1)
            else:
                samples = time_op(fn, repeat=5 if quick else 15, number=200 if quick else 1000)
            results[name] = summarize(samples)
        return {"adapter": adapter, "name": mod.NAME, "results": results}
    finally:
        mod.teardown(state)


def run_all(adapters: list[str], quick: bool) -> list[dict[str, Any]]:
    out = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    for adapter in adapters:
        cmd = [sys.executable, str(Path(__file__)), "--child", adapter] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            print(f"{adapter} failed:\n{proc.stderr}", file=sys.stderr)
            continue
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def table(runs: list[dict[str, Any]]) -> str:
    anchor = next((r for r in runs if r["adapter"] == ANCHOR), None)
    ops: list[str] = []
    for r in runs:
        ops += [op for op in r["results"] if op not in ops]
    lines = []
    header = f"{'operation':<24}" + "".join(f"{r['name']:>34}" for r in runs)
    lines.append(header)
    lines.append("-" * len(header))
    for op in ops:
        row = f"{op:<24}"
        for r in runs:
            res = r["results"].get(op)
            if res is None:
                row += f"{'n/a':>34}"
                continue
            cell = f"{fmt(res['median'])} [{fmt(res['q1'])}-{fmt(res['q3'])}]"
            if anchor is not None and r is not anchor and op in anchor["results"]:
                cell += f" {anchor['results'][op]['median'] / res['median']:5.1f}x"
            row += f"{cell:>34}"
        lines.append(row)
    lines.append("")
    lines.append("cells: median [interquartile range]; Nx = stdlib time / this time (above 1: faster than stdlib)")
    for r in runs:
        it, rt = r["results"].get(f"iterate {BIG // 1000}k list"), r["results"].get("d[k]")
        if it and rt:
            lines.append(
                f"{r['name']}: iterating {BIG} items is {BIG * rt['median'] / it['median']:.1f}x faster "
                "than one round trip per item"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (CI smoke run)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    ap.add_argument("--only", nargs="*", default=None, help="adapters to run (default: all)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.quick)))
        return
    adapters = args.only or ADAPTERS
    started = time.time()
    runs = run_all(adapters, args.quick)
    print(
        f"reflectmgr benchmarks, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores{' (quick)' if args.quick else ''}"
    )
    print(table(runs))
    print(f"\n(took {time.time() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"python": platform.python_version(), "runs": runs}, indent=2))
    if len(runs) != len(adapters):
        sys.exit(1)


if __name__ == "__main__":
    main()
