"""``Manager.executor()``: a ProcessPoolExecutor whose workers are connected clients.

    submit(fn, *args)  --pickle; what the workers do not find by name, cloudpickle (proxies of
                         this manager *borrowed*: no round trip)--> blob
                       --stdlib ProcessPoolExecutor--> worker: run_task(blob)
    worker             --unpickles borrowed proxies: counted for its own session with its next
                         message (or before the task returns, if it made none)
    result             --cloudpickle--> the caller (proxies in it are pinned, then claimed)

Everything else (map with chunksize and timeout, shutdown with cancel_futures, wait, as_completed,
BrokenProcessPool when a worker dies) is the standard executor's own behaviour.
"""

from __future__ import annotations

import os
import threading
import types
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from .._manager.client import Client
from .._manager.spawning import found_in_children, main_file_hidden_if_unreadable, main_runs_in_children
from ..errors import ReflectmgrPicklingError
from .forked import WorkerContext
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
            # spawn's semantics (workers inherit no threads or locks from this threaded client
            # process), forked from the template where there is one (forked.py)
            mp_context = WorkerContext()
        if (
            isinstance(initializer, (types.FunctionType, type))
            and initializer.__module__ == "__main__"
            and mp_context.get_start_method() != "fork"
            and not found_in_children(initializer)
        ):
            # By name it cannot be found there; by value it would run, but in globals of its own
            # (cloudpickle's), so the globals it sets (its usual purpose) would not be the tasks'.
            where = (
                "it is defined inside the script's `if __name__ == '__main__':` block, which they skip"
                if main_runs_in_children()
                else "this program has no script file for them to run (stdin, -c, the REPL, a notebook, "
                "a package's __main__)"
            )
            raise ReflectmgrPicklingError(
                f"the initializer {initializer!r} is defined in __main__ where the executor's workers cannot "
                f"find it: {where}. Define it at the script's top level or in a module, or pass "
                "mp_context=multiprocessing.get_context('fork')"
            )
        super().__init__(
            max_workers,
            mp_context=mp_context,
            initializer=init_worker,
            initargs=(client.route_for_children, client.authkey, initializer, initargs, client.tls_for_children),
            max_tasks_per_child=max_tasks_per_child,
        )
        self._client = client
        # Shut down before the interpreter tears its modules down, as concurrent.futures does for
        # its threads: an executor collected later has its weakref callback fail noisily. Only in
        # this process: a forked child (a fork-context worker of this very pool) inherits the
        # hook and a copy of the executor whose locks its parent's threads may have held.
        threading._register_atexit(_shutdown_at_exit, weakref.ref(self), os.getpid())  # type: ignore[attr-defined]

    def _adjust_process_count(self) -> None:
        # Run by the pool's manager thread when a worker exited at its max_tasks_per_child: the
        # stdlib's asks the idle-worker semaphore first, which may hold a token of a worker now
        # gone, and then spawns none, so that a backlog of tasks waits for ever (CPython
        # gh-115634, 3.11 to 3.14; fixed the same way upstream). Replace the worker outright.
        if threading.current_thread() is getattr(self, "_executor_manager_thread", None):
            if len(self._processes) < self._max_workers:  # type: ignore[attr-defined]
                self._spawn_process()
            return
        super()._adjust_process_count()

    def _spawn_process(self) -> None:
        # A worker needs nothing from __main__ either (tasks from there travel by value): a
        # script read from stdin can use the executor (spawning.py). The stdlib's method since 3.9.
        with main_file_hidden_if_unreadable():
            super()._spawn_process()  # type: ignore[misc]

    # Any: tasks take and return anything; the signature is concurrent.futures.Executor's.
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)``. As with the standard executor, a task that does not
        pickle fails its future (with ReflectmgrPicklingError naming the argument), not ``submit``;
        ``submit`` raises only when the pool is broken or shut down."""
        with self._shutdown_lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
        keep: list[Any] = []
        try:
            blob = self._client.pickle_task((fn, args, kwargs), keep)
        except Exception as exc:
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed
        future = super().submit(run_task, blob)
        if keep:
            # The borrowed proxies keep their objects alive until the task is done.
            future.add_done_callback(lambda _f: keep.clear())
        return future


def _shutdown_at_exit(ref: weakref.ref[ManagerExecutor], pid: int) -> None:
    executor = ref()
    if executor is not None and os.getpid() == pid:
        executor.shutdown(wait=True)
