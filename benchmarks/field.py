"""The field scenarios: how each system does where managers are used, not only on a quiet machine.

(a) workers     P CPU-bound processes on P cores, each computing ~200 us of pure Python between
                two calls; reported as the wall time each call adds against compute alone (each
                worker alternates blocks of compute-only rounds and compute+call rounds, so that
                drift and noise hit both alike).
(b) clients     1, 2, 4 and 8 processes calling at once: aggregate calls/s, p50 and p99 latency.
(c) busy cores  one client while every core runs an unrelated busy loop: p50 and p99 latency.
(d) CPU         CPU time per call, client plus server (from the one-client run of (b), and
                from (c)): what a call costs a machine that has other work to do.
(e) one core    one client, with the server's threads and the client on one CPU: nothing
                overlaps, so a call takes its whole cost (both sides' work, two kernel
                wake-ups and two switches). The quiet, repeatable twin of (a) and (c), where
                every call pays the same; set beside the kernel's own round trip on one core
                (physical.py).

Client processes are spawned by the adapter's own process (the one that owns the server), once
per scenario and system: they run the scenario's ops one after another, all clients beginning and
ending each op together (a barrier shared with the runner, which reads the server's CPU time at
both), and report their counts, wall and CPU times and per-call latencies for each.
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import multiprocessing
import os
import time
from array import array
from collections.abc import Iterator
from typing import Any

from physical import ONE_CORE  # (e): the CPU the server and its client share
from workloads import MISS

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
CLIENT_COUNTS = (1, 2, 4, 8)
FIELD_OPS = ("d[k]", "d[k] = v", "Queue put+get", MISS)
SLICE = 200e-6  # the compute between two calls in (a)
BLOCKS = 10  # (a): blocks of compute-only rounds alternating with blocks of compute+call rounds


def burn(n: int) -> int:
    """Pure-Python work: holds the GIL and a core, like a CPU-bound task."""
    x = 0
    for i in range(n):
        x += i * i
    return x


def calibrate(seconds: float = SLICE) -> int:
    """Iterations of :func:`burn` that take ``seconds`` on this machine (median of a few tries)."""
    n = 10_000
    tries = []
    for _ in range(7):
        start = time.perf_counter()
        burn(n)
        tries.append(time.perf_counter() - start)
    tries.sort()
    return max(1, int(n * seconds / tries[len(tries) // 2]))


def _client(adapter: str, info: Any, plan: dict[str, Any], ready: Any, turn: Any, results: Any) -> None:
    """A client process: connect, then run each of the plan's ops in turn, all clients together
    (``turn``, a barrier with the runner: before and after each op), and report each."""
    if plan.get("cpu") is not None:
        os.sched_setaffinity(0, {plan["cpu"]})
    mod = importlib.import_module(f"adapters.{adapter}")
    ops, close = mod.client(info)
    for name in plan["ops"]:
        ops[name]()  # connected, and each op warm, before the clock starts
    ready.release()
    for name in plan["ops"]:
        turn.wait()
        results.put((name, _measure(ops[name], plan)))
        turn.wait()
    close()


def _measure(op: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """One client's figures for one op: with ``work``, blocks of compute-only rounds alternating
    with compute+call rounds; without, calls for ``seconds`` with each one's latency."""
    lat, starts = array("q"), array("q")  # starts: (a) only, to find the calls that met another's
    now = time.perf_counter_ns
    cpu = time.process_time()
    compute_only = 0.0
    if plan["work"]:
        work, blocks = plan["work"], BLOCKS
        per_block = plan["rounds"] // blocks
        n, wall = blocks * per_block, 0.0
        for _ in range(blocks):
            t0 = time.perf_counter()
            for _ in range(per_block):
                burn(work)
            t1 = time.perf_counter()
            for _ in range(per_block):
                burn(work)
                began = now()
                op()
                lat.append(now() - began)  # the call's own time (the added time also counts its wake on the compute)
                starts.append(began)  # perf_counter: one clock for every process (CLOCK_MONOTONIC on Linux)
            compute_only += t1 - t0
            wall += time.perf_counter() - t1
    else:
        began = time.perf_counter()
        n, end = 0, now() + int(plan["seconds"] * 1e9)
        t0 = now()
        while t0 < end:
            op()
            t1 = now()
            lat.append(t1 - t0)
            t0 = t1
            n += 1
        wall = time.perf_counter() - began
    return {
        "n": n,
        "wall": wall,
        "cpu": time.process_time() - cpu,
        "lat": lat.tobytes(),
        "starts": starts.tobytes(),
        "base": compute_only,
    }


def run_clients(adapter: str, info: Any, server_pid: int, clients: int, plan: dict[str, Any]) -> dict[str, Any]:
    """Run ``clients`` processes on ``plan`` together, one op after another (``plan["ops"]``: the
    clients start once for all of them); in the process that owns the server. Returns the
    figures per op."""
    import psutil

    ctx = multiprocessing.get_context("spawn")
    ready, turn, results = ctx.Semaphore(0), ctx.Barrier(clients + 1, timeout=300), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(adapter, info, plan, ready, turn, results)) for _ in range(clients)]
    for p in procs:
        p.start()
    server = psutil.Process(server_pid)
    confined = _confine(server, plan["cpu"]) if plan.get("cpu") is not None else {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a client did not connect within 60 s")
        for op in plan["ops"]:
            turn.wait()
            s0 = sum(server.cpu_times()[:2])
            turn.wait()
            server_cpu = sum(server.cpu_times()[:2]) - s0
            reports = [report for _, report in (results.get(timeout=10) for _ in procs)]
            out[op] = _figures(reports, server_cpu)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        _release(server, confined)
    return out


def _figures(reports: list[dict[str, Any]], server_cpu: float) -> dict[str, Any]:
    """What the report shows of one op, from every client's figures and the server's CPU."""
    calls = sum(r["n"] for r in reports)
    lat = array("q")
    for r in reports:
        lat.frombytes(r["lat"])
    out: dict[str, Any] = {
        "calls": calls,
        "wall": sum(r["wall"] for r in reports) / len(reports),
        "added": sum((r["wall"] - r["base"]) / r["n"] for r in reports) / len(reports),
        "rate": sum(r["n"] / r["wall"] for r in reports),
        "cpu": (sum(r["cpu"] for r in reports) + server_cpu) / max(1, calls),
    }
    if lat:
        ordered = sorted(lat)
        out["p50"] = ordered[len(ordered) // 2] / 1e9
        out["p99"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e9
    if len(reports) > 1 and all(r.get("starts") for r in reports):
        out.update(_meetings(reports))
    return out


def _meetings(reports: list[dict[str, Any]]) -> dict[str, float]:
    """(a): the calls that overlapped another worker's call (the manager served both at once:
    its threads share one GIL) against those that did not, their share and mean times."""
    spans = []
    for r in reports:
        starts, lat = array("q"), array("q")
        starts.frombytes(r["starts"])
        lat.frombytes(r["lat"])
        spans.append(sorted((b, b + d) for b, d in zip(starts, lat, strict=True)))
    alone: list[int] = []
    met: list[int] = []
    for i, mine in enumerate(spans):
        others = sorted(span for j, theirs in enumerate(spans) if j != i for span in theirs)
        begins = [b for b, _ in others]
        longest = max((e - b for b, e in others), default=0)
        for b, e in mine:
            # another's call overlaps [b, e) if it began before e and ended after b; it began at
            # most `longest` before b
            k = bisect.bisect_left(begins, b - longest)
            overlaps = False
            while k < len(others) and others[k][0] < e:
                if others[k][1] > b:
                    overlaps = True
                    break
                k += 1
            (met if overlaps else alone).append(e - b)
    calls = len(alone) + len(met)
    return {
        "met share": len(met) / calls if calls else 0.0,
        "alone mean": sum(alone) / len(alone) / 1e9 if alone else 0.0,
        "met mean": sum(met) / len(met) / 1e9 if met else 0.0,
    }


def _confine(server: Any, cpu: int) -> dict[int, set[int]]:
    """Put every thread of the server process on ``cpu`` (threads it starts later inherit it);
    returns what each had, for :func:`_release`."""
    before: dict[int, set[int]] = {}
    for thread in server.threads():
        try:
            before[thread.id] = os.sched_getaffinity(thread.id)
            os.sched_setaffinity(thread.id, {cpu})
        except OSError:  # ended meanwhile
            continue
    return before


def _release(server: Any, before: dict[int, set[int]]) -> None:
    """Give each thread of the server back what it had; one started while confined gets what
    the process's main thread had (it would otherwise stay on the one CPU for later scenarios)."""
    if not before:
        return
    default = before.get(server.pid) or next(iter(before.values()))
    for thread in server.threads():
        try:
            os.sched_setaffinity(thread.id, before.get(thread.id, default))
        except OSError:  # ended meanwhile
            continue


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


@contextlib.contextmanager
def busy_cores(n: int = CORES) -> Iterator[None]:
    """``n`` unrelated processes in a busy loop, for as long as the block runs."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    hogs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for hog in hogs:
        hog.start()
    try:
        yield
    finally:
        stop.set()
        for hog in hogs:
            hog.join(10)
            if hog.is_alive():
                hog.kill()


def run(children: list[Any], quick: bool, smoke: bool) -> dict[str, dict[str, Any]]:
    """All four scenarios, each system in turn (rotating who goes first). ``children`` are the
    runner's adapter processes; returns, per adapter, the figures the report shows."""
    seconds = 0.2 if smoke else (1.0 if quick else 3.0)
    reps = 1 if smoke or quick else 3
    rounds = 100 if smoke else (1000 if quick else 3000)
    work = calibrate()
    out: dict[str, dict[str, Any]] = {c.adapter: {} for c in children}

    def turns(rep: int) -> list[Any]:
        return children[rep % len(children) :] + children[: rep % len(children)]

    def put(c: Any, key: str, value: Any) -> None:
        out[c.adapter].setdefault(key, []).append(value)

    # (a) CPU-bound workers on every core
    for rep in range(reps):
        for c in turns(rep):
            ops = [op for op in FIELD_OPS if op in c.client_ops]
            res = c.ask(field={"clients": CORES, "plan": {"ops": ops, "work": work, "rounds": rounds}})
            for op in ops:
                put(c, f"workers {op}", res[op]["added"])
                put(c, f"workers call {op}", res[op])
    # (b) several clients at once, and (d) the CPU per call of one
    for n in CLIENT_COUNTS:
        for rep in range(reps):
            for c in turns(rep):
                res = c.ask(field={"clients": n, "plan": {"ops": ["d[k]"], "work": 0, "seconds": seconds}})
                put(c, f"clients {n}", res["d[k]"])
    # (e) one core: the server and its client on one CPU (Linux: the others cannot confine)
    if ONE_CORE:
        for rep in range(reps):
            for c in turns(rep):
                plan = {"ops": ["d[k]"], "work": 0, "seconds": seconds, "cpu": ONE_CORE[0]}
                put(c, "one core", c.ask(field={"clients": 1, "plan": plan})["d[k]"])
    # (c) every core busy with unrelated processes, and (d) the CPU per call there
    with busy_cores():
        for rep in range(reps):
            for c in turns(rep):
                ops = [op for op in FIELD_OPS if op in c.client_ops]
                res = c.ask(field={"clients": 1, "plan": {"ops": ops, "work": 0, "seconds": seconds}})
                for op in ops:
                    put(c, f"busy {op}", res[op])
    return {adapter: {k: _median(v) for k, v in figures.items()} for adapter, figures in out.items()}


def _median(values: list[Any]) -> Any:
    """The median run (by rate or by value): one run's figures stay together."""
    if isinstance(values[0], dict):
        return sorted(values, key=lambda r: r["rate"])[len(values) // 2]
    return sorted(values)[len(values) // 2]


ANCHOR = "stdlib"


def report(runs: list[dict[str, Any]], fmt: Any, floor: float | None = None) -> str:
    """The field table: rows are scenarios, a column per system, ratios against the stdlib;
    ``floor``: the kernel's round trip on one core (physical.py), the least (e) can take."""
    anchor = next((r for r in runs if r["adapter"] == ANCHOR and r.get("field")), None)
    rows: list[tuple[str, str, str]] = []  # (label, key, what)
    for op in FIELD_OPS:
        rows.append((f"(a) {CORES} workers: {op}", f"workers {op}", "value"))
    for op in FIELD_OPS:
        rows.append((f"(a) the call itself: {op} p50/p99", f"workers call {op}", "p50/p99"))
    rows.append(("(a) d[k] mean: alone/meeting another", "workers call d[k]", "met"))
    for n in CLIENT_COUNTS:
        rows.append((f"(b) {n} client{'s' if n > 1 else ''}: calls/s", f"clients {n}", "rate"))
        rows.append((f"(b) {n} client{'s' if n > 1 else ''}: p50/p99", f"clients {n}", "p50/p99"))
    for op in FIELD_OPS:
        rows.append((f"(c) cores busy: {op} p50/p99", f"busy {op}", "p50/p99"))
    rows.append(("(d) CPU/call quiet (d[k])", "clients 1", "cpu"))
    rows.append(("(d) CPU/call cores busy", "busy d[k]", "cpu"))
    rows.append(("(e) one core: d[k] p50/p99", "one core", "p50/p99"))
    width, label_width = 32, 44
    lines = [f"{'scenario':<{label_width}}" + "".join(f"{r['name']:>{width}}" for r in runs)]
    lines.append("-" * len(lines[0]))
    for label, key, what in rows:
        row = f"{label:<{label_width}}"
        for r in runs:
            fig = (r.get("field") or {}).get(key)
            base = (anchor or {}).get("field", {}).get(key) if anchor is not None and r is not anchor else None
            row += f"{_cell(fig, base, what, fmt):>{width}}"
        lines.append(row)
    lines.append("")
    lines.append(
        "(a) wall time a call adds to a CPU-bound worker, one worker per core, and the call's own time "
        "(p50/p99 over the workers' calls; the mean of the calls alone and of those that overlapped "
        "another worker's call, with their share); (b) aggregate over the "
        "clients; (c) one client, every core running an unrelated busy loop; (d) client + server CPU "
        "per call; (e) one client, it and the server confined to one CPU (a call's whole cost, "
        "nothing overlapping). Nx = how many times better than the stdlib (>1: better)."
    )
    if floor is not None:
        lines.append(
            f"(e)'s floor: a one-byte pipe round trip between two processes on that one CPU takes "
            f"{fmt(floor)}; a call costs that plus both sides' work."
        )
    return "\n".join(lines)


def ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per scenario (short label), each system's ratio to the stdlib (>1: better), for the chart."""
    anchor = next((r for r in runs if r["adapter"] == ANCHOR and r.get("field")), None)
    out: dict[str, dict[str, float]] = {}
    if anchor is None:
        return out
    base = anchor["field"]
    rows = [(f"(a) workers: {op}", f"workers {op}", "value") for op in FIELD_OPS]
    rows += [(f"(b) {n} clients calls/s", f"clients {n}", "rate") for n in CLIENT_COUNTS[1:]]
    rows += [(f"(c) busy: {op} p50", f"busy {op}", "p50") for op in FIELD_OPS]
    rows += [("(c) busy: d[k] p99", "busy d[k]", "p99"), ("(d) CPU/call, busy", "busy d[k]", "cpu")]
    rows += [("(e) one core: d[k] p50", "one core", "p50")]
    for label, key, what in rows:
        for r in runs:
            fig, ref = (r.get("field") or {}).get(key), base.get(key)
            if r is anchor or fig is None or ref is None:
                continue
            if what == "value":
                ratio = ref / fig if fig > 0 and ref > 0 else None
            elif what == "rate":
                ratio = fig["rate"] / ref["rate"]
            else:
                ratio = ref[what] / fig[what] if fig[what] > 0 else None
            if ratio is not None:
                out.setdefault(label, {})[r["name"]] = ratio
    return out


def _cell(fig: Any, base: Any, what: str, fmt: Any) -> str:
    if fig is None:
        return "n/a"
    if what == "value":
        text, ratio = fmt(fig), (base / fig if base and fig > 0 else None)
    elif what == "rate":
        text, ratio = f"{fig['rate']:,.0f}", (fig["rate"] / base["rate"] if base else None)
    elif what == "cpu":
        text, ratio = fmt(fig["cpu"]), (base["cpu"] / fig["cpu"] if base else None)
    elif what == "met":  # (a): the calls alone / the calls that met another worker's, and their share
        if "met mean" not in fig:
            return "n/a"
        text = f"{fmt(fig['alone mean'])}/{fmt(fig['met mean'])} ({fig['met share'] * 100:.0f}%)"
        if base and "met mean" in base and fig["alone mean"] > 0 and fig["met mean"] > 0:
            return f"{text} {base['alone mean'] / fig['alone mean']:.1f}x/{base['met mean'] / fig['met mean']:.1f}x"
        return text
    else:
        text = f"{fmt(fig['p50'])}/{fmt(fig['p99'])}"
        ratio = None
        if base:
            return f"{text} {base['p50'] / fig['p50']:.1f}x/{base['p99'] / fig['p99']:.1f}x"
    if ratio is None:
        return text
    return f"{text} {ratio:.1f}x"
