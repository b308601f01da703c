"""``m.executor(kind="interpreter")``: tasks in subinterpreters of this process, one GIL each.

    submit(fn, *args) --pickle_task (proxies borrowed)--> ThreadPoolExecutor work queue
    worker thread i   --owns subinterpreter i--> exec(RUN) with the task; reads the result
                        from a cross-interpreter queue (exec returns after the task, so no wait)

Each subinterpreter is a client of the manager: over in-process shared-memory rings when the owner
runs in this process (``Manager(in_process=True)``), over the manager's transport otherwise.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .._manager.client import Client
from .._manager.transfer import dumps_for_workers
from ..errors import RemoteTraceback
from . import _compat
from .interp_worker import BOOTSTRAP, CLOSE, RUN


class InterpreterExecutor(ThreadPoolExecutor):
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
        self._interpreters = _compat.interpreters()  # raises below 3.13, naming the version
        if max_tasks_per_child is not None or mp_context is not None:
            raise ValueError("max_tasks_per_child and mp_context apply to kind='process' only")
        main = getattr(sys.modules["__main__"], "__file__", None)
        self._cfg = pickle.dumps(
            {
                "path": list(sys.path),
                "main": os.path.abspath(main) if main else None,
                "address": client.address,
                "authkey": client.authkey,
                "init": dumps_for_workers((initializer, initargs)),
            }
        )
        self._client = client
        self._local = threading.local()
        self._workers: list[tuple[Any, Any]] = []
        self._workers_lock = threading.Lock()
        super().__init__(max_workers or os.cpu_count() or 1, "reflectmgr-interp", self._start_worker)
        # An executor never shut down: close its interpreters before this one finalizes them.
        threading._register_atexit(_shutdown_at_exit, weakref.ref(self))  # type: ignore[attr-defined]

    def _start_worker(self) -> None:
        interp = self._interpreters.create()
        out = _compat.create_queue(self._interpreters)
        with self._workers_lock:
            self._workers.append((interp, out))
        interp.exec(_compat.queue_import(self._interpreters))
        interp.prepare_main(_rm_cfg=self._cfg, _rm_out=out)
        interp.exec(BOOTSTRAP)
        self._local.interp, self._local.out = interp, out

    # Any: tasks take and return anything; the signature is concurrent.futures.Executor's.
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        keep: list[Any] = []
        blob = self._client.pickle_task((fn, args, kwargs), keep)
        future = super().submit(self._run, blob)
        if keep:
            future.add_done_callback(lambda _f: keep.clear())
        return future

    def _run(self, blob: bytes) -> Any:
        interp = self._local.interp
        interp.prepare_main(_rm_task=blob)
        interp.exec(RUN)
        kind, data, tb = pickle.loads(self._local.out.get_nowait())
        value = pickle.loads(data)
        if kind == "ok":
            return value
        value.__cause__ = RemoteTraceback(tb)
        raise value

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        if wait:
            self._close_interpreters()
        else:
            threading.Thread(target=self._close_when_idle, name="reflectmgr-interp-close").start()

    def _close_when_idle(self) -> None:
        for t in list(self._threads):
            t.join()
        self._close_interpreters()

    def _close_interpreters(self) -> None:
        with self._workers_lock:
            workers, self._workers = self._workers, []
        for interp, _out in workers:
            try:
                interp.exec(CLOSE)  # stop its client's threads; a running thread blocks close()
            except Exception:
                pass
            interp.close()


def _shutdown_at_exit(ref: weakref.ref[InterpreterExecutor]) -> None:
    executor = ref()
    if executor is not None:
        executor.shutdown(wait=True)
