"""Shared state for Ray tasks and actors: a manager owned by a Ray actor.

``reflectmgr.ray.Manager()`` starts a Ray actor (no CPU reserved) that owns the objects. Proxies
go into ``@ray.remote`` tasks and actors as arguments and work there with no setup: the worker
finds the manager's key in the cluster, never in the task's arguments. Calls go over
reflectmgr's own transport (a unix socket with shared memory on the owner's node, TCP from other
nodes), not through Ray's actor RPC.

Run:  python examples/ray_shared_state.py      (needs: pip install 'reflectmgr[ray]')
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

import reflectmgr.ray


@ray.remote
def crawl(pages: Any, lock: Any, stats: Any, start: int) -> int:
    """Record a few made-up pages; bump a shared counter under a shared lock."""
    for i in range(start, start + 5):
        pages[f"page-{i}"] = {"links": [i + 1, i + 2], "worker": os.getpid()}
        with lock:
            stats["visited"] += 1  # read, add, write: exact because of the lock
    return os.getpid()


@ray.remote
class Indexer:
    """An actor that keeps a proxy and reads the shared pages whenever asked."""

    def __init__(self, pages: Any) -> None:
        self.pages = pages

    def count_links(self) -> int:
        return sum(len(page["links"]) for page in self.pages.values())


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with reflectmgr.ray.Manager() as m:
            pages = m.dict()
            stats = m.dict(visited=0)
            lock = m.Lock()
            workers = ray.get([crawl.remote(pages, lock, stats, start) for start in range(0, 40, 5)])
            indexer = Indexer.remote(pages)
            links = ray.get(indexer.count_links.remote())
            print(f"{len(pages)} pages from {len(set(workers))} worker processes, {stats['visited']} visits counted")
            print(f"the indexer actor counted {links} links; the owner actor is pid {m.pid}")
            assert len(pages) == 40 and stats["visited"] == 40 and links == 80
            ray.kill(indexer)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
