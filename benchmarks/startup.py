"""Manager start-up: start, one call, shutdown, against the stdlib's manager (fork and spawn).

    python benchmarks/startup.py [--quick | --smoke] [--json FILE]

Each system runs in a program of its own: a script written for the run, whose top level takes
``TOP_LEVELS`` seconds outside any ``if __name__ == "__main__":`` guard (what a script's own
imports take: NumPy, a model). A spawned manager runs that top level again before it serves;
reflectmgr's manager never runs the main script. Quiet, then with every core busy with unrelated
processes (``field.busy_cores``). Times are per start, median and p90 of the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from field import busy_cores  # benchmarks/ is not a package

SYSTEMS = ("reflectmgr", "stdlib fork", "stdlib spawn")
TOP_LEVELS = (0.0, 0.3)

PROGRAM = """
import json, multiprocessing, sys, time

time.sleep(float(sys.argv[3]))  # the script's top level, outside any guard


def start(system):
    if system == "reflectmgr":
        return reflectmgr.Manager()
    return multiprocessing.get_context(system.split()[1]).Manager()


if __name__ == "__main__":
    system, runs = sys.argv[1], int(sys.argv[2])
    import multiprocessing.managers  # the program's imports, not the start's
    import reflectmgr

    times = []
    for _ in range(runs):
        began = time.perf_counter()
        with start(system) as m:
            m.dict(a=1)["a"]
        times.append(time.perf_counter() - began)
    print(json.dumps(times))
"""


def measure(script: Path, system: str, runs: int, top_level: float) -> list[float]:
    proc = subprocess.run(
        [sys.executable, str(script), system, str(runs), str(top_level)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise SystemExit(f"{system} (top level {top_level} s) failed:\n{proc.stderr}")
    times: list[float] = json.loads(proc.stdout.splitlines()[-1])
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 starts per system and case (default 20)")
    ap.add_argument("--smoke", action="store_true", help="1 start per system and case, one top level (for CI)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    runs = 1 if args.smoke else (5 if args.quick else 20)
    top_levels = TOP_LEVELS[-1:] if args.smoke else TOP_LEVELS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "start_a_manager.py"
        script.write_text(PROGRAM)
        for load in ("quiet", "busy"):
            with busy_cores() if load == "busy" else contextlib.nullcontext():
                for top in top_levels:
                    for system in SYSTEMS:
                        results[f"{load}|{top}|{system}"] = summary(measure(script, system, runs, top))
    print(f"manager start + one call + shutdown, Python {sys.version.split()[0]}, {os.cpu_count()} cores, {runs} runs")
    print("ms, median / p90; ratio = stdlib spawn's median over ours (above 1: ours is faster)")
    for load in ("quiet", "busy"):
        print("quiet:" if load == "quiet" else "every core busy with unrelated processes:")
        for top in top_levels:
            row = [results[f"{load}|{top}|{s}"] for s in SYSTEMS]
            cells = "  ".join(
                f"{s} {r['median'] * 1e3:4.0f} / {r['p90'] * 1e3:4.0f}" for s, r in zip(SYSTEMS, row, strict=True)
            )
            ratio = row[2]["median"] / row[0]["median"]
            print(f"  script top level {top:.1f} s:  {cells}  ratio {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
