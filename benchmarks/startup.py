"""Manager start-up: start, one call, shutdown, against the stdlib's manager (fork and spawn).

    python benchmarks/startup.py [--quick | --smoke] [--json FILE]

Each system runs in programs of its own: a script written for the run, whose top level takes
``TOP_LEVELS`` seconds outside any ``if __name__ == "__main__":`` guard (what a script's own
imports take: NumPy, a model). A spawned manager runs that top level again before it serves;
reflectmgr's manager never runs the main script. Each program starts ``STARTS`` managers one
after the other: its first start (a reflectmgr program launches an interpreter) is reported
apart from its second (reflectmgr's starts the template then) and the later ones (forked from
the template). Quiet, then with every core busy with unrelated processes
(``field.busy_cores``). Times are per start, median and p90 over the programs (first, second) or
over every later start of them.
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
STARTS = 5  # per program: the first, the second, then three later ones
KINDS = ("first", "second", "later")

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


def measure(script: Path, system: str, programs: int, starts: int, top_level: float) -> dict[str, list[float]]:
    """The first and second start of each of ``programs`` programs, and every later one."""
    out: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(programs):
        proc = subprocess.run(
            [sys.executable, str(script), system, str(starts), str(top_level)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        if proc.returncode != 0:
            raise SystemExit(f"{system} (top level {top_level} s) failed:\n{proc.stderr}")
        times: list[float] = json.loads(proc.stdout.splitlines()[-1])
        out["first"].append(times[0])
        out["second"].append(times[1])
        out["later"].extend(times[2:])
    return out


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 programs per system and case (default 12)")
    ap.add_argument("--smoke", action="store_true", help="1 program of 3 starts per system and case (for CI)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    programs = 1 if args.smoke else (4 if args.quick else 12)
    starts = 3 if args.smoke else STARTS
    top_levels = TOP_LEVELS[-1:] if args.smoke else TOP_LEVELS
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "start_a_manager.py"
        script.write_text(PROGRAM)
        for load in ("quiet", "busy"):
            with busy_cores() if load == "busy" else contextlib.nullcontext():
                for top in top_levels:
                    for system in SYSTEMS:
                        times = measure(script, system, programs, starts, top)
                        results[f"{load}|{top}|{system}"] = {k: summary(v) for k, v in times.items()}
    print(
        f"manager start + one call + shutdown, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{programs} programs of {starts} starts each"
    )
    print("ms, median / p90; ratio = the stdlib's median over ours (above 1: ours is faster)")
    for load in ("quiet", "busy"):
        print("quiet:" if load == "quiet" else "every core busy with unrelated processes:")
        for top in top_levels:
            print(f"  script top level {top:.1f} s:")
            for which in KINDS:
                row = [results[f"{load}|{top}|{s}"][which] for s in SYSTEMS]
                cells = "  ".join(
                    f"{s} {r['median'] * 1e3:4.0f} / {r['p90'] * 1e3:4.0f}" for s, r in zip(SYSTEMS, row, strict=True)
                )
                fork, spawn = (row[i]["median"] / row[0]["median"] for i in (1, 2))
                print(f"    {which + ' start:':14}{cells}  vs fork {fork:.2f}  vs spawn {spawn:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
