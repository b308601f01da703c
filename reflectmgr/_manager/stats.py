"""``Manager.stats()``: what the manager holds, for tests, dashboards and leak hunting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stats:
    objects: int  # objects currently referenced by at least one client
    clients: int  # connected client sessions (processes)
    connections: int  # open connections over all sessions
    rss: int  # resident memory of the manager process, in bytes
    pid: int
    calls: int = 0  # requests answered since the manager started (two readings give calls/s)


def collect(server: Any) -> Stats:
    import psutil  # only the manager process pays for it

    sessions = list(server.sessions.values())
    return Stats(
        objects=len(server.table),
        clients=len(sessions),
        connections=sum(s.connections for s in sessions),
        rss=psutil.Process().memory_info().rss,
        pid=os.getpid(),
        calls=server.calls(),
    )
