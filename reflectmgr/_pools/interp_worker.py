"""Runs inside each subinterpreter of an interpreter pool.

pool thread (main interpreter)                 subinterpreter
prepare_main(_rm_cfg=bytes, _rm_out=queue) --> bootstrap(cfg): sys.path, main module as
                                               spawn does, connect to the manager, initializer
prepare_main(_rm_task=blob); exec(RUN)     --> run(blob, out): result or exception, pickled,
out.get_nowait() <-------------------------------- put on the queue (bytes are shareable)
"""

from __future__ import annotations

import os
import pickle
import runpy
import sys
import traceback
from typing import Any

import cloudpickle

from .._wire.exceptions import without_init
from . import worker

BOOTSTRAP = "import reflectmgr._pools.interp_worker as _rm_w\n_rm_w.bootstrap(_rm_cfg)\n"
RUN = "_rm_w.run(_rm_task, _rm_out)\n"
CLOSE = "import reflectmgr._pools.worker\nreflectmgr._pools.worker.close()\n"


def bootstrap(cfg_blob: bytes) -> None:
    cfg = pickle.loads(cfg_blob)
    sys.path[:] = cfg["path"]
    _import_main(cfg["main"])
    initializer, initargs = pickle.loads(cfg["init"])
    worker.init_worker(cfg["address"], cfg["authkey"], initializer, initargs)


def _import_main(path: str | None) -> None:
    """Like spawn: run the caller's main script as ``__mp_main__`` and expose its names in
    ``__main__``, so functions and classes defined there resolve here too."""
    if not path or os.path.splitext(os.path.basename(path))[0] == "__main__":
        return
    namespace = runpy.run_path(path, run_name="__mp_main__")
    main = sys.modules["__main__"]
    for name, value in namespace.items():
        if not name.startswith("__"):
            setattr(main, name, value)


def run(blob: bytes, out: Any) -> None:
    try:
        result = worker.execute(blob)
        message = ("ok", cloudpickle.dumps(result, protocol=5), "")
    except BaseException as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        data = _loadable(exc)
        if data is None:
            from ..errors import RemoteError

            data = cloudpickle.dumps(RemoteError(f"{type(exc).__qualname__}", str(exc), tb), protocol=5)
        message = ("err", data, tb)
    out.put_nowait(pickle.dumps(message, protocol=5))


def _loadable(exc: BaseException) -> bytes | None:
    """``exc`` pickled so that it loads: as it is, else built again without its ``__init__``
    (``_wire/exceptions.py``); None if neither loads."""
    for candidate in (exc, without_init(exc)):
        if candidate is None:
            continue
        try:
            data = cloudpickle.dumps(candidate, protocol=5)
            pickle.loads(data)
        except Exception:
            continue
        return bytes(data)
    return None
