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
there): that goes by name only where the worker finds it (``found_in_children``): the main
script is a file the worker runs too (``main_runs_in_children``), and defines it at its top
level, outside the ``if __name__ == "__main__":`` block that the worker skips. Elsewhere (a
lambda, what the block defines; stdin, ``-c``, the REPL, a notebook, ``python -m package``) it
goes by value (``transfer.dumps_for_workers``).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    every task that names ``__main__``: the answer for a path is kept, not a stat per task). A
    package's ``__main__`` (``python -m package``) is a file, but spawn does not run it."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(name, str) and name.rpartition(".")[2] == "__main__":
        return False
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and _is_file(path)


def found_in_children(obj: Any) -> bool:
    """True if a child that runs the main script finds ``obj`` (a function or class of
    ``__main__``) there by its name: the script defines it at its top level, outside its ``if
    __name__ == "__main__":`` block (which the child skips), and the name still holds ``obj``
    here. Only then may a task name it instead of carrying it by value."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    name = getattr(obj, "__qualname__", None)
    if not (isinstance(path, str) and isinstance(name, str) and main_runs_in_children()):
        return False
    if name.partition(".")[0] not in _defined_for_children(path):
        return False
    found: Any = main
    for part in name.split("."):  # "<locals>" in a nested function's name finds nothing
        found = getattr(found, part, _MISSING)
    return found is obj


_MISSING = object()


@functools.lru_cache(maxsize=8)
def _is_file(path: str) -> bool:
    return os.path.exists(path)


@functools.lru_cache(maxsize=8)
def _defined_for_children(path: str) -> frozenset[str]:
    """The names of the functions and classes a child running the script at ``path`` defines:
    ``def`` and ``class`` statements at its top level (in ``if``, ``try`` and ``with`` blocks
    too), less every name the ``if __name__ == "__main__":`` block binds (a redefinition there
    is not the child's). Read once per path; a script that cannot be read or parsed defines
    nothing (its objects then go by value)."""
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return frozenset()
    defined: set[str] = set()
    guarded: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.If) and _is_main_guard(node.test):
                guarded.update(_bound_in(node.body))
                visit(node.orelse)
            else:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    elif isinstance(child, (ast.ExceptHandler, ast.match_case)):
                        visit(child.body)

    visit(tree.body)
    return frozenset(defined - guarded)


def _is_main_guard(test: ast.expr) -> bool:
    """``__name__ == "__main__"``, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [side.id for side in sides if isinstance(side, ast.Name)]
    texts = [side.value for side in sides if isinstance(side, ast.Constant)]
    return names == ["__name__"] and texts == ["__main__"]


def _bound_in(statements: list[ast.stmt]) -> set[str]:
    """The module-level names that ``statements`` bind (not the locals of functions they define)."""
    names: set[str] = set()
    pending: list[ast.AST] = list(statements)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            # their own locals are not the module's; a `global` statement inside names one
            names.update(n for inner in ast.walk(node) if isinstance(inner, ast.Global) for n in inner.names)
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).partition(".")[0])
        elif isinstance(node, ast.Global):
            names.update(node.names)
        if not isinstance(node, ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))
    return names
