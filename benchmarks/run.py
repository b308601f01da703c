"""Run every adapter on the same workloads, each in a fresh process, and compare.

    python benchmarks/run.py [--quick] [--smoke] [--json FILE] [--png FILE] [--only NAME ...]

Every system runs in its own fresh process; repetitions are interleaved across systems so that
machine noise hits them alike. Prints two tables:

- quiet: per operation, the median time per call with its interquartile range for every system,
  and the ratio to the stdlib manager ("Nx": above 1 means faster than the stdlib);
- field (field.py): the same systems under load: CPU-bound workers on every core, 1-8 clients at
  once (calls/s, p50/p99), every core busy with other processes (p50/p99), CPU time per call.

The notes relate each system to the physical limits measured in the same run, and give idle CPU
and, for reflectmgr, the manager's memory after many proxies were made and dropped.
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

import field  # noqa: E402
import physical  # noqa: E402
from adapters import ADAPTERS  # noqa: E402
from workloads import BIG, LARGE, SLOW, summarize, time_op  # noqa: E402

IDLE_SECONDS = 5.0  # idle CPU is measured over this long with no calls at all
PROXIES = 100_000  # proxies created and dropped for the memory check

ANCHOR = "stdlib"


def _available(adapter: str) -> bool:
    """Anchors from the bench extra (RPyC, Pyro5) are skipped, with a note, when not installed."""
    try:
        importlib.import_module(f"adapters.{adapter}")
    except ImportError as exc:
        print(f"skipping {adapter}: {exc} (pip install -e '.[bench]')", file=sys.stderr)
        return False
    return True


def serve(adapter: str, slow: bool = True) -> None:
    """Child process: set up one adapter, then time operations on request (JSON lines on stdin).
    Without ``slow``, the SLOW operations are left out (not even warmed: the stdlib's warm-up
    iteration alone is 100k round trips)."""
    mod = importlib.import_module(f"adapters.{adapter}")
    state = mod.setup(False)
    try:
        ops = mod.operations(state)
        if not slow:
            ops = {op: fn for op, fn in ops.items() if not op.startswith(SLOW)}
        for fn in ops.values():
            fn()  # warm: connections opened, caches filled
        client_ops = list(getattr(mod, "CLIENT_OPS", field.FIELD_OPS))
        _reply({"name": mod.NAME, "ops": list(ops), "client_ops": client_ops})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            if cmd.get("idle"):
                _reply(_idle(mod, state, cmd["idle"]))
            elif cmd.get("proxies"):
                _reply(_proxy_memory(state, cmd["proxies"]))
            elif cmd.get("field"):
                f = cmd["field"]
                info, pid = mod.client_info(state), mod.server_pid(state)
                _reply(field.run_clients(adapter, info, pid, f["clients"], f["plan"]))
            else:
                _reply({"seconds": time_op(ops[cmd["op"]], repeat=1, number=cmd["number"])[0]})
    finally:
        mod.teardown(state)


def _idle(mod: Any, state: Any, seconds: float) -> dict[str, float]:
    """CPU used by this client and by the server while nothing is asked of them, and (Linux) how
    often their threads woke up: voluntary context switches a second, the client's own sleep here
    taken off."""
    import psutil

    me, server = psutil.Process(), psutil.Process(mod.server_pid(state))
    c0, s0 = sum(me.cpu_times()[:2]), sum(server.cpu_times()[:2])
    w0 = (_switches(me.pid), _switches(server.pid))
    time.sleep(seconds)  # the measurement itself: wall time with no calls
    w1 = (_switches(me.pid), _switches(server.pid))
    c1, s1 = sum(me.cpu_times()[:2]), sum(server.cpu_times()[:2])
    out = {"client %": 100 * (c1 - c0) / seconds, "server %": 100 * (s1 - s0) / seconds}
    if None not in w0 + w1:
        out["client wake-ups/s"] = max(0, w1[0] - w0[0] - 1) / seconds  # type: ignore[operator]
        out["server wake-ups/s"] = (w1[1] - w0[1]) / seconds  # type: ignore[operator]
    return out


def _switches(pid: int) -> int | None:
    """Voluntary context switches of every thread of ``pid`` (Linux /proc), or None."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += int(f.read().split("voluntary_ctxt_switches:")[1].split()[0])
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def _proxy_memory(state: Any, n: int) -> dict[str, float]:
    """reflectmgr only: manager RSS growth after creating and dropping ``n`` proxies."""
    import gc

    m = state["m"]
    d = m.dict({str(i): [i] for i in range(100)})
    before = m.stats().rss
    for i in range(n):
        d[str(i % 100)]
    gc.collect()
    after = m.stats().rss
    return {"proxies": n, "rss growth MB": (after - before) / 1e6, "objects after": m.stats().objects}


def _reply(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Child:
    """One adapter in its own fresh process, driven over a pipe. Starts it; :meth:`ready` waits
    for it to be set up (so several start at once)."""

    def __init__(self, adapter: str, slow: bool = True) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
        self.adapter = adapter
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "--child", adapter, *([] if slow else ["--no-slow"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def ready(self) -> Child:
        hello = self._read()
        self.name, self.ops, self.client_ops = hello["name"], hello["ops"], hello["client_ops"]
        return self

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"adapter {self.adapter} exited (code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def time(self, op: str, number: int) -> float:
        return float(self.ask(op=op, number=number)["seconds"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it already exited (and said why on stderr)
        self.proc.wait(60)


def run_all(adapters: list[str], quick: bool, smoke: bool = False, field_only: bool = False) -> list[dict[str, Any]]:
    """Interleave the systems: each repetition of an operation runs on every system in turn
    (rotating who goes first), so a noisy neighbour slows them all alike instead of one."""
    started = [Child(a, slow=not (smoke or field_only)) for a in adapters]
    try:
        children = [c.ready() for c in started]
        ops: list[str] = []
        for c in children:
            ops += [op for op in c.ops if op not in ops]
        samples: dict[tuple[str, str], list[float]] = {}
        for op in [] if field_only else ops:
            slow = any(op.startswith(s) for s in SLOW)
            reps = (2 if quick else 5) if slow else (5 if quick else 21)
            if slow:
                number = 1
            elif op.startswith("1 MiB"):
                number = 5 if quick else 20
            else:
                number = 200 if quick else 1000
            if smoke:
                if slow:
                    continue
                reps, number = 1, 3
            for rep in range(reps):
                order = children[rep % len(children) :] + children[: rep % len(children)]
                for c in order:
                    if op in c.ops:
                        samples.setdefault((c.adapter, op), []).append(c.time(op, number))
        loaded = field.run(children, quick, smoke)
        idle_seconds = 0.5 if smoke else (1.0 if quick else IDLE_SECONDS)
        idle = [{} if field_only else c.ask(idle=idle_seconds) for c in children]
        proxies = PROXIES // 100 if smoke else (PROXIES // 10 if quick else PROXIES)
        memory = (
            {} if field_only else {c.adapter: c.ask(proxies=proxies) for c in children if "reflectmgr" in c.adapter}
        )
        return [
            {
                "adapter": c.adapter,
                "name": c.name,
                "results": {op: summarize(samples[(c.adapter, op)]) for op in c.ops if (c.adapter, op) in samples},
                "idle": idle[i],
                "memory": memory.get(c.adapter),
                "field": loaded.get(c.adapter),
            }
            for i, c in enumerate(children)
        ]
    finally:
        for c in started:
            c.close()


def fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def table(runs: list[dict[str, Any]], limits: dict[str, float]) -> str:
    anchor = next((r for r in runs if r["adapter"] == ANCHOR), None)
    ops: list[str] = []
    for r in runs:
        ops += [op for op in r["results"] if op not in ops]
    width = 22
    lines = [f"{'operation':<22}" + "".join(f"{r['name']:>{width}}" for r in runs)]
    lines.append("-" * len(lines[0]))
    for op in ops:
        row = f"{op:<22}"
        for r in runs:
            res = r["results"].get(op)
            if res is None:
                row += f"{'n/a':>{width}}"
                continue
            spread = 100 * (res["q3"] - res["q1"]) / res["median"]
            cell = f"{fmt(res['median'])} ±{spread:.0f}%"
            if anchor is not None and r is not anchor and op in anchor["results"]:
                cell += f" {anchor['results'][op]['median'] / res['median']:.1f}x"
            row += f"{cell:>{width}}"
        lines.append(row)
    lines.append("")
    lines.append("cells: median ±interquartile range (% of the median); Nx = stdlib time / this time (>1: faster)")
    lines.append("")
    lines.append("physical limits (same run): " + ", ".join(f"{k} {fmt(v)}" for k, v in limits.items()))
    ping = limits.get("socketpair ping-pong")
    shm = limits.get("shm ping-pong")
    copy = limits.get("64 MiB copy")
    for r in runs:
        res = r["results"]
        notes = []
        if ping and "d[k]" in res:
            notes.append(f"d[k] = {res['d[k]']['median'] / ping:.1f}x a socketpair ping-pong")
        if shm and "d[k]" in res:
            notes.append(f"{res['d[k]']['median'] / shm:.1f}x a shm ping-pong")
        it = res.get(f"iterate {BIG // 1000}k list")
        if it and "d[k]" in res:
            notes.append(
                f"iteration {BIG * res['d[k]']['median'] / it['median']:.0f}x faster than a round trip per item"
            )
        for label, size in LARGE.items():
            for way in ("in", "out"):
                big = res.get(f"{label} {way}")
                if big and label == "64 MiB":
                    gib = size / big["median"] / (1 << 30)
                    frac = f" ({copy / big['median']:.0%} of an in-process copy)" if copy else ""
                    notes.append(f"64 MiB {way} {gib:.2f} GiB/s{frac}")
        idle = r.get("idle")
        if idle:
            notes.append(f"idle CPU: client {idle['client %']:.2f}%, server {idle['server %']:.2f}%")
            if "server wake-ups/s" in idle:
                notes.append(
                    f"idle wake-ups/s: client {idle['client wake-ups/s']:.1f}, server {idle['server wake-ups/s']:.1f}"
                )
        mem = r.get("memory")
        if mem:
            notes.append(f"{mem['proxies']} proxies made and dropped: manager RSS {mem['rss growth MB']:+.1f} MB")
        lines.append(f"{r['name']}: " + "; ".join(notes))
    return "\n".join(lines)


def chart(runs: list[dict[str, Any]], path: str) -> None:
    """Two panels, each system relative to the stdlib manager (log scale, above 1: better): the
    quiet workloads, and their loaded twins from the field scenarios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    anchor = next(r for r in runs if r["adapter"] == ANCHOR)
    others = [r for r in runs if r is not anchor]
    quiet = {
        op: {
            r["name"]: anchor["results"][op]["median"] / r["results"][op]["median"]
            for r in others
            if op in r["results"]
        }
        for op in anchor["results"]
    }
    loaded = field.ratios(runs)
    fig, axes = plt.subplots(1, 2, figsize=(16, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for ax, panel, title in ((axes[0], quiet, "quiet machine, one client"), (axes[1], loaded, "under load")):
        labels = [k for k, v in panel.items() if v]
        w = 0.8 / max(1, len(others))
        for i, r in enumerate(others):
            xs = [j + i * w for j, k in enumerate(labels) if r["name"] in panel[k]]
            ys = [panel[k][r["name"]] for k in labels if r["name"] in panel[k]]
            ax.bar(xs, ys, width=w, label=r["name"])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(labels))], labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0].set_ylabel("vs stdlib Manager (x, log; >1 better)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"reflectmgr benchmarks, medians, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--smoke", action="store_true", help="a few calls of each kind: checks the benchmark runs (CI)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    ap.add_argument("--only", nargs="*", default=None, help="adapters to run (default: all)")
    ap.add_argument("--png", metavar="FILE", help="also draw the chart (needs matplotlib: the bench extra)")
    ap.add_argument("--field-only", action="store_true", help="only the field scenarios (the loaded twins)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-slow", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        serve(args.child, slow=not args.no_slow)
        return
    adapters = args.only or [a for a in ADAPTERS if _available(a)]
    started = time.time()
    rounds = 50 if args.smoke else physical.ROUNDS
    limits = {} if args.field_only else physical.measure(rounds=rounds)
    if args.field_only and physical.ONE_CORE:  # the floor under field scenario (e)
        limits["pipe ping-pong, one core"] = physical.pipe_pingpong(rounds, physical.ONE_CORE[0])
    runs = run_all(adapters, args.quick, args.smoke, args.field_only)
    print(
        f"reflectmgr benchmarks, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} cores{' (quick)' if args.quick else ''}"
    )
    print(table(runs, limits))
    print("\nfield: the same systems under load (benchmarks/field.py)")
    print(field.report(runs, fmt, limits.get("pipe ping-pong, one core")))
    print(f"\n(took {time.time() - started:.0f} s)")
    if args.json:
        report = {"python": platform.python_version(), "limits": limits, "runs": runs}
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.png:
        chart(runs, args.png)
    if len(runs) != len(adapters):
        sys.exit(1)


if __name__ == "__main__":
    main()
