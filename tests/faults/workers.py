"""Child-process bodies for the crash tests (importable by spawned children)."""

from __future__ import annotations

import time
from typing import Any


def own_a_manager(report: Any) -> None:
    """Start a manager, report its pid, then wait to be killed."""
    import reflectmgr

    m = reflectmgr.Manager()
    m.start()
    report.put(m.pid)
    time.sleep(600)  # the test SIGKILLs us long before; the manager must then exit on its own


def hold_proxies(address: Any, authkey: bytes, n: int) -> None:
    """Connect, take ``n`` proxies, tell the parent, and wait to be killed."""
    import reflectmgr

    conn = reflectmgr.connect(address, authkey)
    d = conn.root["data"]
    held = [d[str(i)] for i in range(n)]
    conn.root["ready"] = len(held)
    time.sleep(600)  # killed by the test while holding every proxy
