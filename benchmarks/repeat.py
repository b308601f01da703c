"""Scenario (a) of field.py many times over, against the stdlib's manager: the spread of the runs.

    python benchmarks/repeat.py [--runs 24] [--rounds 1000] [--smoke] [--system reflectmgr_pipe]

One run of field.py is one draw: a run.py table shows scenario (a)'s figures from one or three
repetitions, and on a small machine a whole run can land in a worse mode (a placement that holds
for the run) without anything looking wrong in it. Here both systems run (a), as field.py does
(one CPU-bound worker per core, ``d[k]`` between slices of compute; quick: 1 000 rounds), many
times, interleaved and with the same server each, and the report gives, per system, the call's
median time in each run (min / median / max over the runs) and how many runs had a median
above 1.5x the system's own median (``slow runs``): a mode that one draw would report as the
system's figure now and then. The added time per call (field.py's headline figure) is shown
the same way. Nothing is asserted: numbers are read by people.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys

import field

ANCHOR = "stdlib"
SLOW = 1.5  # a run whose median call is this many times the system's median over runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1000, help="compute + call rounds per worker and run")
    ap.add_argument("--smoke", action="store_true", help="two short runs: checks it runs (CI)")
    ap.add_argument("--system", default="reflectmgr_shm", help="the adapter set against the stdlib's (default: shm)")
    args = ap.parse_args()
    runs, rounds = (2, 50) if args.smoke else (args.runs, args.rounds)
    ours = args.system
    systems = (ANCHOR, ours)
    mods = {name: importlib.import_module(f"adapters.{name}") for name in systems}
    states = {name: mod.setup(True) for name, mod in mods.items()}
    try:
        work = field.calibrate()
        p50: dict[str, list[float]] = {name: [] for name in systems}
        added: dict[str, list[float]] = {name: [] for name in systems}
        for run in range(runs):
            for name in systems if run % 2 == 0 else systems[::-1]:
                mod, state = mods[name], states[name]
                plan = {"ops": ["d[k]"], "work": work, "rounds": rounds}
                res = field.run_clients(name, mod.client_info(state), mod.server_pid(state), field.CORES, plan)
                p50[name].append(res["d[k]"]["p50"])
                added[name].append(res["d[k]"]["added"])
    finally:
        for name, mod in mods.items():
            mod.teardown(states[name])
    print(
        f"(a) {field.CORES} CPU-bound workers, d[k], {runs} runs of {rounds} rounds each, Python "
        f"{sys.version.split()[0]}: per system, min / median / max over the runs (us)"
    )
    for what, figures in (("the call's median", p50), ("added per call", added)):
        for name in systems:
            values = figures[name]
            mid = statistics.median(values)
            slow = sum(v > SLOW * mid for v in values)
            print(
                f"  {what:17} {mods[name].NAME:15} {min(values) * 1e6:6.1f} / {mid * 1e6:6.1f} / "
                f"{max(values) * 1e6:6.1f}   slow runs (> {SLOW:g}x its median): {slow} of {runs}"
            )
        ratio = statistics.median(figures[ANCHOR]) / statistics.median(figures[ours])
        print(f"  {what:17} {'ratio':15} {ratio:.1f}x (the stdlib's median over ours)")


if __name__ == "__main__":
    main()
