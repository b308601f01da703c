"""``Manager.executor()``: a ProcessPoolExecutor whose workers are connected clients.

    submit(fn, *args)  --cloudpickle (proxies of this manager *borrowed*: no round trip)--> blob
                       --stdlib ProcessPoolExecutor--> worker: run_task(blob)
    worker             --unpickles borrowed proxies: counted for its own session with its next
                         message (or before the task returns, if it made none)
    result             --cloudpickle--> the caller (proxies in it are pinned, then claimed)

Everything else (map with chunksize and timeout, shutdown with cancel_futures, wait, as_completed,
BrokenProcessPool when a worker dies) is the standard executor's own behaviour.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from .._manager.client import Client
from .worker import init_worker, run_task


class ManagerExecutor(ProcessPoolExecutor):
    def __init__(
        self,
        client: Client,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        mp_context: Any = None,
    ) -> None:
        if mp_context is None:
            # spawn: workers inherit no threads or locks from this (threaded) client process
            mp_context = multiprocessing.get_context("spawn")
        super().__init__(
            max_workers,
            mp_context=mp_context,
            initializer=init_worker,
            initargs=(client.public_address, client.authkey, initializer, initargs),
            max_tasks_per_child=max_tasks_per_child,
        )
        self._client = client

    # Any: tasks take and return anything; the signature is concurrent.futures.Executor's.
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``; raises ReflectmgrPicklingError here if it does not pickle."""
        keep: list[Any] = []
        blob = self._client.pickle_task((fn, args, kwargs), keep)
        future = super().submit(run_task, blob)
        if keep:
            # The borrowed proxies keep their objects alive until the task is done.
            future.add_done_callback(lambda _f: keep.clear())
        return future
