"""CPython's own manager tests (Lib/test/_test_multiprocessing.py), run against reflectmgr.

The stdlib's test module is imported as is; inside *its* namespace only, ``multiprocessing.Manager``
and ``multiprocessing.managers.{BaseManager, SyncManager, BaseProxy, RemoteError}`` are replaced
by reflectmgr's (nothing else in the process sees the change). Then the test classes for the
'manager' type, ``TestSyncManagerTypes`` and the remote-manager tests are installed here.

Excluded tests, each with its reason, are listed in EXCLUDED below.
"""

from __future__ import annotations

import multiprocessing.managers as _stdlib_managers
import sys
import types
import unittest
from typing import Any

import pytest

import reflectmgr
import reflectmgr.managers

_REPLACED = ("BaseManager", "SyncManager", "BaseProxy", "RemoteError")


def _import_stdlib_tests() -> Any:
    """Import the stdlib test module with reflectmgr's classes in multiprocessing.managers, so
    the classes it defines at import (``class MyManager(BaseManager)``...) are built on ours.
    The real attributes are restored before anything else runs."""
    saved = {name: getattr(_stdlib_managers, name) for name in _REPLACED}
    for name in _REPLACED:
        setattr(_stdlib_managers, name, getattr(reflectmgr.managers, name))
    try:
        from test import _test_multiprocessing
    finally:
        for name, value in saved.items():
            setattr(_stdlib_managers, name, value)
    return _test_multiprocessing


try:
    tm = _import_stdlib_tests()
except ImportError as exc:  # a Python built without its test package
    pytest.skip(f"CPython's test package is not installed: {exc}", allow_module_level=True)


_managers = types.SimpleNamespace(**vars(_stdlib_managers))
for _name in _REPLACED:
    setattr(_managers, _name, getattr(reflectmgr.managers, _name))


class _Multiprocessing(types.ModuleType):
    """multiprocessing, as the stdlib test module sees it: Manager and managers are ours."""

    def __getattr__(self, name: str) -> Any:
        import multiprocessing

        return getattr(multiprocessing, name)


_mp = _Multiprocessing("multiprocessing")


def _manager() -> reflectmgr.Manager:
    """``multiprocessing.Manager()``: reflectmgr's Manager, started at once as the stdlib's is (a
    reflectmgr Manager starts at first use; started inside a test instead of in setUpClass, the
    suite's leftover-process check would take it for a process the test left behind)."""
    m = reflectmgr.Manager()
    m.start()
    return m


_mp.Manager = _manager  # type: ignore[attr-defined]
_mp.managers = _managers  # type: ignore[attr-defined]
tm.multiprocessing = _mp

# Test name -> why it does not apply to reflectmgr: the two deliberate differences that remain
# (docs/differences.md). Everything else in the stdlib's suite runs unmodified.
EXCLUDED: dict[str, str] = {
    "WithManagerTestEvent.test_repr": (
        "a reflected proxy shows its referent's repr, not '<EventProxy object, typeid ...>'"
    ),
    "WithManagerTestRemoteManager.test_remote": (
        "serializer='xmlrpclib' is accepted but reflectmgr always pickles: tuples stay tuples, functions travel"
    ),
}


def _install() -> None:
    g = globals()
    # forkserver: its children get their arguments pickled, as spawn's do (every proxy a test hands
    # to a child travels as a reference), it is Linux's default start method from Python 3.14 on,
    # and the suite's children (five per Barrier test) cost a third less CPU than spawned ones.
    tm.install_tests_in_module_dict(g, "forkserver", only_type="manager")
    for name, reason in EXCLUDED.items():
        cls_name, _, test = name.partition(".")
        cls = g.get(cls_name)
        if cls is not None and hasattr(cls, test):
            setattr(cls, test, unittest.skip(reason)(getattr(cls, test)))


class TestSyncManagerTypes(tm.TestSyncManagerTypes):  # type: ignore[misc,name-defined]
    """The stdlib class, built on reflectmgr's SyncManager at import (see _import_stdlib_tests)."""


_install()
setUpModule = globals()["setUpModule"]
tearDownModule = globals()["tearDownModule"]

# These tests start processes and managers of their own: give them the module to themselves.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
_ = sys
