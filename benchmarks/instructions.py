"""Instructions per call, client and manager, counted by callgrind: the repeatable measure.

Wall times on this shared VM move 10-30% between runs, and a one-core run has a slow state in
about one run in three; an instruction count does not move (the same code gives the same count
within about 1%, whatever else the machine does). So a change to the call path is judged here
first, then on the clock (run.py's field scenarios).

    python3 benchmarks/instructions.py              # reflectmgr shm and the stdlib, d[k]
    python3 benchmarks/instructions.py --calls 500  # fewer calls
    python3 benchmarks/instructions.py --op missing # d[missing]: the KeyError's way back
    python3 benchmarks/instructions.py --op queue   # a Queue put and get (two calls)
    python3 benchmarks/instructions.py --systems reflectmgr  # ours alone (half the time)
    python3 benchmarks/instructions.py --systems reflectmgr --smoke  # one run, start-up included: the suite's check

Each system runs twice under ``valgrind --tool=callgrind --trace-children=yes``, each run pinned to
one CPU (so nobody spins: with one usable core reflectmgr never does; the four runs go at once,
on as many CPUs as there are, since a count does not depend on what runs beside), making
``calls`` and then ``5 * calls`` calls of ``d[k]`` (or of ``d[missing]``, caught); the difference divided by the
extra calls is what one call costs each process, start-up and shutdown cancelled out. User space
only: the kernel's part is not counted. Needs valgrind (Debian: ``apt install valgrind``);
without it, says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_REFS = re.compile(r"==(\d+)== I\s+refs:\s+([\d,]+)")
_COMMAND = re.compile(r"==(\d+)== Command: (.*)")
OPS = ("d[k]", "missing", "queue")
SYSTEMS = ("stdlib", "reflectmgr")
# How long shutdown() waits for a manager to exit before it terminates, then kills it. Under
# callgrind, with the other runs beside it on a busy machine, a manager's exit takes seconds (the
# stdlib's default is 1 s), and a killed process never prints its count: so, long.
STOP_WITHIN = 600.0


def _loop(kind: str, calls: int, op: str) -> None:
    """The measured program: a manager, one dict, ``calls`` reads (run under valgrind)."""
    if kind == "reflectmgr":
        import reflectmgr

        manager = reflectmgr.Manager(transport="shm", shutdown_timeout=STOP_WITHIN)
        manager.start()
    else:
        from multiprocessing.managers import SyncManager

        manager = SyncManager(shutdown_timeout=STOP_WITHIN)
        manager.start()
    d = manager.dict(k=0)
    if op == "queue":
        q = manager.Queue()
        for _ in range(calls):
            q.put(1)
            q.get()
    elif op == "missing":
        for _ in range(calls):
            try:
                d["missing"]
            except KeyError:
                pass
    else:
        for _ in range(calls):
            d["k"]
    manager.shutdown()


def _count(kind: str, calls: int, folder: Path, op: str, cpu: int | None) -> dict[str, int]:
    """Instructions per process (client, manager) of one run of ``calls`` calls, on ``cpu``."""
    log = folder / f"{kind}.{calls}.log"
    # multiprocessing's resource tracker is neither side of a call: not run under valgrind at all
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes", "--trace-children-skip-by-arg=*resource_tracker*"]
    cmd.append(f"--callgrind-out-file={folder}/cg.%p")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    cmd += [sys.executable, __file__, "--child", kind, str(calls), op]
    # Without coverage, when a suite that measures it runs this: a tracer's instructions are no
    # call's, and under callgrind it makes every process several times slower.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_PROCESS_", "COV_CORE_"))}
    with log.open("w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, timeout=1800, env=env)
    text = log.read_text()
    commands = dict(_COMMAND.findall(text))
    counts: dict[str, int] = {}
    for pid, refs in _REFS.findall(text):
        command = commands.get(pid, "")
        if "resource_tracker" in command:
            continue  # multiprocessing's helper (if this valgrind traced it after all)
        role = "client" if "--child" in command else "manager"
        counts[role] = counts.get(role, 0) + int(refs.replace(",", ""))
    if set(counts) != {"client", "manager"}:
        raise RuntimeError(f"{kind}, {calls} calls: no count for every process, valgrind said:\n{text[-4000:]}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls in the short run (the long one makes 5x)")
    ap.add_argument("--op", choices=OPS, default="d[k]", help="the call counted (default d[k])")
    ap.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS), help="default: both")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="one run per system, counted whole (start-up and shutdown included): checks that the tools work",
    )
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _loop(args.child[0], int(args.child[1]), args.child[2])
        return
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts (apt install valgrind)")
        return
    short, long = args.calls, 5 * args.calls
    per_call: dict[str, dict[str, float]] = {}
    runs = [(kind, calls) for kind in args.systems for calls in ((short,) if args.smoke else (short, long))]
    cpus: list[int | None] = [None]
    if hasattr(os, "sched_getaffinity") and shutil.which("taskset"):
        cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="reflectmgr-callgrind-") as tmp, ThreadPoolExecutor(len(cpus)) as pool:
        futures = [
            pool.submit(_count, kind, calls, Path(tmp), args.op, cpus[i % len(cpus)])
            for i, (kind, calls) in enumerate(runs)
        ]
        counts = {run: future.result() for run, future in zip(runs, futures, strict=True)}
    call = {"d[k]": "d[k]", "missing": "d[missing] (KeyError)", "queue": "Queue put+get (two calls)"}[args.op]
    for kind in args.systems:
        a = counts[kind, short]
        if args.smoke:
            per_call[kind] = {role: float(a[role]) for role in ("client", "manager")}
            continue
        b = counts[kind, long]
        per_call[kind] = {role: (b[role] - a[role]) / (long - short) for role in ("client", "manager")}
    if args.smoke:
        print(f"instructions of a whole run of {short} {call} calls, start-up and shutdown included (callgrind, smoke)")
    else:
        print(f"instructions per {call} call (callgrind, user space, {long - short} calls, one CPU)")
    w = 14 if args.smoke else 10  # a whole run's counts are in the hundreds of millions
    print(f"{'':12s}{'client':>{w}s}{'manager':>{w}s}{'total':>{w}s}")
    for kind, roles in per_call.items():
        total = roles["client"] + roles["manager"]
        print(f"{kind:12s}{roles['client']:{w},.0f}{roles['manager']:{w},.0f}{total:{w},.0f}")
    if len(per_call) == len(SYSTEMS):
        ours, theirs = per_call["reflectmgr"], per_call["stdlib"]
        ratio = (ours["client"] + ours["manager"]) / (theirs["client"] + theirs["manager"])
        print(f"reflectmgr / stdlib: {ratio:.2f}x the instructions")


if __name__ == "__main__":
    main()
