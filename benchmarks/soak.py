"""Hours of load in minutes: many clients at full rate, some killed and restarted all along.

    python3 benchmarks/soak.py                         # 8 clients, 10 minutes, a kill every 30 s
    python3 benchmarks/soak.py --minutes 1 --clients 4 --kill-every 5    # a short one
    python3 benchmarks/soak.py --json soak.json

Each client (a spawned process) mixes, at full rate: container operations on a shared dict and
list, method calls on a shared object, new objects made and dropped, proxies passed to other
processes through a shared queue and used there, 1-4 MiB values in and out, and an increment of
a shared counter under a shared robust lock. Every ``--kill-every`` seconds one client, chosen at
random, is killed with SIGKILL (wherever it is: in a call, holding the lock) and another starts.

The increment is one remote ``dict.update`` of the counter and of the client's own tally, under
the lock: it happens whole or not at all, so after the run ``counter == sum(tallies)`` exactly,
whatever the kills interrupted (a killed holder's lock is released to the next acquirer with
LockOwnerDied, see docs/reliability.md). Then, with every client gone, the run checks that:

- no update was lost (the exact counter);
- the manager's RSS grew less than 5% from the end of the warm-up (the first fifth of the run);
- its open descriptors and threads are back to their baseline (before any client);
- no new ``reflectmgr`` entry is left in /dev/shm or the temp directory;
- ``stats().objects`` is back to its baseline.

It prints the figures and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import reflectmgr

WARMUP_SHARE = 0.2  # the part of the run after which the RSS baseline is taken
RSS_BOUND = 0.05
SETTLE = 30.0  # how long the manager has to release a run's leftovers after the last client


class Item:
    """A user object living in the manager (its methods are called remotely)."""

    def __init__(self) -> None:
        self.count = 0
        self.log: list[int] = []

    def bump(self, k: int) -> int:
        self.count += 1
        self.log.append(k)
        del self.log[:-16]
        return self.count


def client(address: Any, authkey: bytes, cid: str, seed: int) -> None:
    """One client process: the mixed operations until the driver sets ``stop`` (or kills it)."""
    rng = random.Random(seed)
    conn = reflectmgr.connect(address, authkey)
    root = conn.root
    shared, lst, item = root["shared"], root["list"], root["item"]
    counter, lock, mailbox, stop = root["counter"], root["lock"], root["mailbox"], root["stop"]
    big = os.urandom(rng.randrange(1, 5) << 20)
    ops = 0
    while not stop.is_set():
        kind = rng.randrange(100)
        if kind < 35:  # container operations
            k = f"{cid}-{rng.randrange(64)}"
            shared[k] = [ops, {"n": ops}]
            assert shared[k][0] == ops
            shared.pop(k, None)
        elif kind < 50:
            lst.append(ops)
            if len(lst) > 256:
                del lst[:128]
        elif kind < 62:  # a method of a user object
            item.bump(ops)
        elif kind < 72:  # new objects, made and dropped
            d = conn.dict(a=list(range(10)))
            ns = conn.Namespace(x=ops)
            assert d["a"][9] == 9 and ns.x == ops
            del d, ns
        elif kind < 84:  # a proxy to another process, through the manager
            if rng.random() < 0.5:
                mailbox.put(conn.dict(sender=cid, n=ops))
            else:
                try:
                    got = mailbox.get(timeout=0.01)
                except Exception:  # queue.Empty, as the remote exception
                    got = None
                if got is not None:
                    got["read_by"] = cid
        elif kind < 86:  # a large value in and out
            shared[f"{cid}-big"] = big
            assert len(shared[f"{cid}-big"]) == len(big)
            del shared[f"{cid}-big"]
        else:  # the exact counter: one atomic update under the robust lock
            try:
                lock.acquire()
            except reflectmgr.LockOwnerDied:
                pass  # the previous holder was killed; the update is whole or absent, go on
            try:
                counter.update({"n": counter["n"] + 1, cid: counter.get(cid, 0) + 1})
            finally:
                lock.release()
        ops += 1
    conn.close()


def _prime(m: reflectmgr.Manager, clients: int) -> None:
    """Connect as many sessions as the run will have, then leave: what the manager makes once, at
    its first crowd, and keeps (the dispatcher's thread and bell), is then part of the baseline."""
    from reflectmgr._manager.client import Client

    sessions = [Client(m.address, m.authkey) for _ in range(clients)]  # one session each
    for s in sessions:
        s.close()
    deadline = time.monotonic() + SETTLE
    while m.stats().clients > 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the manager's count of sessions


def _entries() -> set[str]:
    out = set()
    for folder in ("/dev/shm", tempfile.gettempdir()):
        try:
            out |= {os.path.join(folder, name) for name in os.listdir(folder) if "reflectmgr" in name}
        except OSError:
            continue
    return out


def soak(minutes: float, clients: int, kill_every: float, seed: int, rss_bound: float = RSS_BOUND) -> dict[str, Any]:
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("spawn")
    entries_before = _entries()
    report: dict[str, Any] = {"minutes": minutes, "clients": clients, "kill_every_s": kill_every, "seed": seed}
    with reflectmgr.Manager() as m:
        root = m.root
        root["shared"], root["list"], root["item"] = m.dict(), m.list(), m.new(Item)
        root["counter"], root["lock"] = m.dict(n=0), m.Lock(robust=True)
        root["mailbox"], root["stop"] = m.Queue(), m.Event()
        manager = psutil.Process(m.pid)
        _prime(m, clients)
        objects_before = m.stats().objects
        fds_before, threads_before = manager.num_fds(), manager.num_threads()
        started = time.monotonic()
        end = started + minutes * 60
        warm_at = started + minutes * 60 * WARMUP_SHARE
        rss_warm: int | None = None
        procs: dict[str, Any] = {}
        births = kills = 0

        def start() -> None:
            nonlocal births
            cid = f"c{births}"
            births += 1
            p = ctx.Process(target=client, args=(m.address, m.authkey, cid, rng.randrange(1 << 30)), daemon=True)
            p.start()
            procs[cid] = p

        for _ in range(clients):
            start()
        next_kill = started + kill_every
        peak_rss = 0
        while time.monotonic() < end:
            time.sleep(0.5)  # the driver's pace: sampling and kills, not synchronisation
            rss = manager.memory_info().rss
            peak_rss = max(peak_rss, rss)
            if rss_warm is None and time.monotonic() >= warm_at:
                rss_warm = rss
            for cid, p in list(procs.items()):
                if not p.is_alive():  # a client that failed on its own: a bug, not a kill
                    raise AssertionError(f"client {cid} exited with code {p.exitcode}")
            if time.monotonic() >= next_kill:
                victim = rng.choice(sorted(procs))
                procs.pop(victim).kill()
                kills += 1
                start()
                next_kill += kill_every
        root["stop"].set()
        for p in procs.values():
            p.join(60)
            if p.exitcode != 0:
                raise AssertionError(f"a client ended with exit code {p.exitcode}")
        while True:  # the proxies left in the mailbox
            try:
                root["mailbox"].get_nowait()
            except Exception:
                break
        counter = root["counter"].copy()
        tallies = sum(v for k, v in counter.items() if k != "n")
        report.update(
            {
                "client_processes": births,
                "kills": kills,
                "locked_increments": counter["n"],
                "sum_of_tallies": tallies,
                "item_calls": root["item"].count,
            }
        )
        deadline = time.monotonic() + SETTLE
        while True:
            objects = m.stats().objects
            fds, threads = manager.num_fds(), manager.num_threads()
            if (objects, fds, threads) == (objects_before, fds_before, threads_before) or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # polling the manager's own counts until they settle
        rss_end = manager.memory_info().rss
        assert rss_warm is not None
        report.update(
            {
                "objects_before_after": [objects_before, objects],
                "fds_before_after": [fds_before, fds],
                "threads_before_after": [threads_before, threads],
                "rss_warm_mib": round(rss_warm / 2**20, 1),
                "rss_end_mib": round(rss_end / 2**20, 1),
                "rss_peak_mib": round(peak_rss / 2**20, 1),
                "rss_growth_pct": round((rss_end - rss_warm) / rss_warm * 100, 2),
            }
        )
    leftovers = sorted(_entries() - entries_before)
    report["new_entries"] = leftovers
    failures = []
    if counter["n"] != tallies:
        failures.append(f"lost updates: counter {counter['n']} != sum of tallies {tallies}")
    if report["rss_growth_pct"] > rss_bound * 100:
        failures.append(f"manager RSS grew {report['rss_growth_pct']}% after warm-up")
    if objects != objects_before:
        failures.append(f"objects {objects} != baseline {objects_before}")
    if fds != fds_before or threads != threads_before:
        failures.append(f"fds {fds_before}->{fds}, threads {threads_before}->{threads}")
    if leftovers:
        failures.append(f"new entries left: {leftovers}")
    report["failures"] = failures
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--rss-bound", type=float, default=RSS_BOUND * 100, help="allowed RSS growth after warm-up, in percent"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(
        f"soak: {args.clients} clients, {args.minutes} min, a kill every {args.kill_every} s, seed {seed}", flush=True
    )
    report = soak(args.minutes, args.clients, args.kill_every, seed, args.rss_bound / 100)
    for key, value in report.items():
        if key != "failures":
            print(f"  {key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["failures"]:
        for failure in report["failures"]:
            print(f"FAILED: {failure}")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
