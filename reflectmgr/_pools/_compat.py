"""Per-Python-version shims for subinterpreters.

3.14 ships ``concurrent.interpreters`` (PEP 734). On 3.13 we use the PyPI package
``interpreters-pep-734`` (module ``interpreters_backport``): it is the reference implementation
of the same API, maintained with CPython's own, so the code here is the 3.14 code. Below 3.13
there are no per-interpreter GILs worth using, and asking for them is an error.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import ReflectmgrError

MIN_VERSION = (3, 13)


def interpreters() -> Any:
    """The PEP 734 ``interpreters`` module; raises ReflectmgrError naming the version needed."""
    if sys.version_info < MIN_VERSION:
        raise ReflectmgrError(
            "subinterpreter pools need Python 3.13 or newer (per-interpreter GIL and PEP 734); "
            f"this is Python {sys.version_info.major}.{sys.version_info.minor}"
        )
    try:
        from concurrent import interpreters as mod  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        try:
            from interpreters_backport import interpreters as mod
        except ImportError as exc:
            raise ReflectmgrError(
                "subinterpreter pools on Python 3.13 need the interpreters-pep-734 package "
                "(pip install interpreters-pep-734; reflectmgr's install pulls it in on 3.13)"
            ) from exc
    return mod


def queue_import(mod: Any) -> str:
    """Code that a new subinterpreter runs before it can receive a queue."""
    if mod.__name__.startswith("concurrent."):
        return "import concurrent.interpreters\n"
    return "import interpreters_backport.interpreters.queues\n"


def create_queue(mod: Any) -> Any:
    """A cross-interpreter queue (``create_queue`` on 3.14, ``queues.create`` in the backport)."""
    if mod.__name__.startswith("concurrent."):
        return mod.create_queue()
    from interpreters_backport.interpreters import queues

    return queues.create()
