"""Spawning a child from a program whose main script cannot be read again.

A spawned child runs the parent's main script (as ``__mp_main__``) from its ``__file__``, so that
what the script defines can be found by name. A script read from standard input (``python -
<<EOF``) has ``"<stdin>"`` there, which the child cannot open: it dies before it starts (the
stdlib's spawn does the same). Our children need nothing from ``__main__``: the classes and
functions defined there reach them by value (cloudpickle). So while one of them is spawned (an
executor's worker; a manager started with a spawn context given as ``ctx``: by default the
manager never runs the script, see launch.py), such a name is hidden, and the child starts as it
does from ``python -c`` or the REPL, whose ``__main__`` has no file. A script that exists is left
alone.

And a task for an executor's worker may name something of ``__main__`` (``ex.map(work, ...)``
pickles ``partial(_process_chunk, work)``, an argument may be an instance of a class defined
there): that goes by name only where the worker can find it, that is where the main script is a
file it runs too (``main_runs_in_children``); elsewhere (stdin, ``-c``, the REPL, a notebook) by
value.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator

# Held while a name is hidden. A thread that spawns meanwhile (the executor replaces a worker
# while a manager starts) would otherwise read None and hide nothing, and if the first thread
# put the name back before this one's start() read it, its child would get "<stdin>".
_hiding = threading.RLock()  # reentrant: a spawn inside another's block finds it hidden already


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held it at fork: the child's only thread must not find it taken.
    global _hiding
    _hiding = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


@contextlib.contextmanager
def main_file_hidden_if_unreadable() -> Iterator[None]:
    """While the block runs, ``__main__.__file__`` is None if it names no file (see above)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or (isinstance(path, str) and _is_file(path)):
        yield  # a script (the common case): nothing to hide, no lock
        return
    with _hiding:
        path = getattr(main, "__file__", None)  # another thread's hiding is over now
        hide = isinstance(path, str) and not _is_file(path)
        if hide:
            main.__file__ = None
        try:
            yield
        finally:
            if hide:
                main.__file__ = path


def main_runs_in_children() -> bool:
    """True if a spawned child runs the main script, so finds what it defines by name (asked for
    every task that names ``__main__``: the answer for a path is kept, not a stat per task)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return isinstance(path, str) and _is_file(path)


@functools.lru_cache(maxsize=8)
def _is_file(path: str) -> bool:
    return os.path.exists(path)
