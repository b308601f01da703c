"""A pytest plugin: session objects shared by every pytest-xdist worker, through one manager.

A module of its own, outside the ``reflectmgr`` package: pytest loads every installed plugin at
start, and this one imports reflectmgr (and its dependencies) only when it is enabled.

Enabled with ``--reflectmgr-shared`` (or ``reflectmgr_shared = true`` in the ini file); it is
installed with reflectmgr but does nothing unless enabled. The manager starts in the controller
process (the one that runs ``pytest -n 4``) and shuts down with the session; each worker connects
to it at start. Without xdist, the one process is both. Fixtures (session scope):

``shared_dict``     a dict every worker sees (a cache, results to compare across workers)
``shared_counter``  ``shared_counter.increment(n=1) -> int``, atomic across workers; ``.value``
``shared_lock``     ``shared_lock(name)``: the same lock in every worker, for an external resource
                    (a port, a database); robust: released if the worker holding it dies
``run_once``        ``run_once(key, fn, *args)``: ``fn`` runs once in the whole session, in
                    whichever worker comes first; every caller gets its result (or its exception)

    def test_db(run_once, shared_lock):
        url = run_once("db", build_fixture_database)      # built once, across all workers
        with shared_lock("db"):
            ...
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import reflectmgr

OPTION = "reflectmgr_shared"
_ADDRESS, _AUTHKEY = "reflectmgr_address", "reflectmgr_authkey"
_ROOT = "pytest-shared"  # the key of the session's objects in the manager's root dict


class SharedCounter:
    """Lives in the manager; its methods run there, one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def increment(self, n: int = 1) -> int:
        with self._lock:
            self._value += n
            return self._value

    @property
    def value(self) -> int:
        return self._value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("reflectmgr")
    group.addoption(
        "--reflectmgr-shared",
        action="store_true",
        dest=OPTION,
        default=None,
        help="share session objects across pytest-xdist workers through a reflectmgr manager",
    )
    parser.addini(OPTION, type="bool", default=False, help="as --reflectmgr-shared")


def _enabled(config: pytest.Config) -> bool:
    option = config.getoption(OPTION)
    return bool(option if option is not None else config.getini(OPTION))


class _Session:
    """This process's side: the manager (controller) or a connection to it (worker)."""

    def __init__(self, config: pytest.Config) -> None:
        import reflectmgr  # only now: the plugin is enabled

        self.manager: reflectmgr.Manager | None = None
        self.connection: reflectmgr.Connection | None = None
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None and _ADDRESS in workerinput:
            address = workerinput[_ADDRESS]
            address = tuple(address) if isinstance(address, list) else address
            self.connection = reflectmgr.connect(address, bytes.fromhex(workerinput[_AUTHKEY]))
            self.objects = self.connection.root[_ROOT]
            return
        self.manager = reflectmgr.Manager(authkey=os.urandom(32))
        self.manager.start()
        m = self.manager
        m.root[_ROOT] = {
            "dict": m.dict(),
            "counter": m.new(SharedCounter),
            "locks": m.dict(),
            "results": m.dict(),
            "guard": m.Lock(robust=True),
        }
        self.objects = m.root[_ROOT]

    @property
    def factories(self) -> Any:
        return self.manager if self.manager is not None else self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        if self.manager is not None:
            self.manager.shutdown()


_KEY = pytest.StashKey[_Session]()


def pytest_configure(config: pytest.Config) -> None:
    if _enabled(config):
        config.stash[_KEY] = _Session(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller: tell each worker where the manager is."""
    session = node.config.stash.get(_KEY, None)
    if session is not None and session.manager is not None:
        node.workerinput[_ADDRESS] = session.manager.address
        node.workerinput[_AUTHKEY] = session.manager.authkey.hex()


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_KEY, None)
    if session is not None:
        del config.stash[_KEY]
        session.close()


def shared(config: pytest.Config) -> Any:
    """This process's handle on the shared session objects (for hooks and helpers): the manager
    in the controller, a connection in a worker. Raises UsageError if the plugin is not enabled."""
    session = config.stash.get(_KEY, None)
    if session is None:
        raise pytest.UsageError("the reflectmgr fixtures need --reflectmgr-shared (or reflectmgr_shared = true)")
    return session


@pytest.fixture(scope="session")
def shared_dict(pytestconfig: pytest.Config) -> dict[Any, Any]:
    """A dict every xdist worker of this session sees."""
    result: dict[Any, Any] = shared(pytestconfig).objects["dict"]
    return result


@pytest.fixture(scope="session")
def shared_counter(pytestconfig: pytest.Config) -> SharedCounter:
    """A counter every worker increments atomically: ``increment(n=1)`` returns the new value."""
    result: SharedCounter = shared(pytestconfig).objects["counter"]
    return result


@pytest.fixture(scope="session")
def shared_lock(pytestconfig: pytest.Config) -> Callable[[str], Any]:
    """``shared_lock(name)``: one robust lock per name for the whole session."""
    session = shared(pytestconfig)
    locks = session.objects["locks"]

    def lock(name: str) -> Any:
        existing = locks.get(name)
        if existing is not None:
            return existing
        return locks.setdefault(name, session.factories.Lock(robust=True))  # the first one made wins

    return lock


@pytest.fixture(scope="session")
def run_once(pytestconfig: pytest.Config, shared_lock: Callable[[str], Any]) -> Callable[..., Any]:
    """``run_once(key, fn, *args, **kwargs)``: ``fn`` runs once per session across all workers;
    every call with that key returns its result (a value: it is copied into the manager), or
    raises what it raised."""
    import reflectmgr

    results = shared(pytestconfig).objects["results"]

    def once(key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if key not in results:
            lock = shared_lock(f"run_once:{key}")
            try:
                lock.acquire()
            except reflectmgr.LockOwnerDied:
                pass  # the worker running it died: nothing was stored, this one runs it
            try:
                if key not in results:
                    try:
                        results[key] = ("ok", fn(*args, **kwargs))
                    except Exception as exc:
                        results[key] = ("error", exc)
            finally:
                lock.release()
        status, value = reflectmgr.value(results[key])
        if status == "error":
            raise value
        return value

    return once
