"""Run every adapter on the same workloads, each in a fresh process, and compare.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME ...]

Every system runs in its own fresh process; repetitions are interleaved across systems so that
machine noise hits them alike. Prints, per operation, the median time per call with its
interquartile range for every system,
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


def serve(adapter: str) -> None:
    """Child process: set up one adapter, then time operations on request (JSON lines on stdin)."""
    mod = importlib.import_module(f"adapters.{adapter}")
    state = mod.setup(False)
    try:
        ops = mod.operations(state)
        for fn in ops.values():
            fn()  # warm: connections opened, caches filled
        _reply({"name": mod.NAME, "ops": list(ops)})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            _reply({"seconds": time_op(ops[cmd["op"]], repeat=1, number=cmd["number"])[0]})
    finally:
        mod.teardown(state)


def _reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Child:
    """One adapter in its own fresh process, driven over a pipe."""

    def __init__(self, adapter: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.adapter = adapter
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--child", adapter],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        hello = self._read()
        self.name, self.ops = hello["name"], hello["ops"]

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"adapter {self.adapter} exited (code {self.proc.wait()})")
        return json.loads(line)

    def time(self, op: str, number: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "number": number}) + "\n")
        self.proc.stdin.flush()
        return float(self._read()["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(60)


def run_all(adapters: list[str], quick: bool) -> list[dict[str, Any]]:
    """Interleave the systems: each repetition of an operation runs on every system in turn
    (rotating who goes first), so a noisy neighbour slows them all alike instead of one."""
    children = [Child(a) for a in adapters]
    try:
        ops: list[str] = []
        for c in children:
            ops += [op for op in c.ops if op not in ops]
        samples: dict[tuple[str, str], list[float]] = {}
        reps = 5 if quick else 21
        for op in ops:
            number = 1 if op.startswith("iterate") else (200 if quick else 1000)
            for rep in range(reps):
                order = children[rep % len(children) :] + children[: rep % len(children)]
                for c in order:
                    if op in c.ops:
                        samples.setdefault((c.adapter, op), []).append(c.time(op, number))
        return [
            {
                "adapter": c.adapter,
                "name": c.name,
                "results": {op: summarize(samples[(c.adapter, op)]) for op in c.ops},
            }
            for c in children
        ]
    finally:
        for c in children:
            c.close()


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
        serve(args.child)
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
