"""Fixtures: a manager per transport, and a check that no test leaves a process behind."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator

import psutil
import pytest

import reflectmgr
from reflectmgr._manager.launch import close_template
from reflectmgr._manager.template import MARKER as TEMPLATE

from .helpers import DEATH

TRANSPORTS = ["shm", "pipe", "tcp"]

# Helper processes the stdlib keeps for the life of the test worker, not started by a test.
_LONG_LIVED = ("resource_tracker", "forkserver", "semaphore_tracker")


def _children() -> dict[int, psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            # This process's manager template lives as long as it does (reflectmgr/_manager/
            # template.py); the managers it forks share its command line and are checked.
            template = TEMPLATE in cmd and p.ppid() == os.getpid()
        except psutil.Error:
            continue
        if not template and not any(name in cmd for name in _LONG_LIVED):
            out[p.pid] = p
    return out


@pytest.fixture(scope="session", autouse=True)
def template_ends_with_the_session() -> Iterator[None]:
    """This worker's manager template exits before the session's end: it saves its coverage data
    while pytest-cov still combines (it would exit with the worker, later)."""
    yield
    close_template()


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = set(_children())
    yield
    new = [p for pid, p in _children().items() if pid not in before]
    if not new:
        return
    _, alive = psutil.wait_procs(new, timeout=DEATH)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if alive:
        pytest.fail(f"processes left running after the test: {[p.pid for p in alive]}")


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def manager(transport: str) -> Iterator[reflectmgr.Manager]:
    address = ("127.0.0.1", 0) if transport == "tcp" else None
    with reflectmgr.Manager(address, transport=transport) as m:
        yield m


@pytest.fixture
def m() -> Iterator[reflectmgr.Manager]:
    """One manager on the default transport, for tests that are not about transports."""
    with reflectmgr.Manager() as mgr:
        yield mgr


# Modules that must stay at 100% branch coverage, measured over every process the suite starts
# (issue 10: the cache, the object table and the release path they implement). Checked when the
# suite runs with --cov, as the README's test command does; the package's floor is
# [tool.coverage.report] fail_under in pyproject.toml.
FULLY_COVERED = ["reflectmgr/_proxy/cache.py", "reflectmgr/_owner/table.py"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[object]:
    result = yield  # outermost: pytest-cov has combined every process's data by now
    plugin = session.config.pluginmanager.getplugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    if controller is None or hasattr(session.config, "workerinput"):
        return result
    out = io.StringIO()
    total = controller.cov.report(include=FULLY_COVERED, file=out, show_missing=True, skip_covered=False)
    if total < 100.0:
        session.testsfailed += 1
        reporter = session.config.pluginmanager.getplugin("terminalreporter")
        reporter.write_line(f"FAIL: {', '.join(FULLY_COVERED)} must be fully covered, are at {total:.1f}%:", red=True)
        reporter.write_line(out.getvalue())
    return result


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    if not hasattr(config, "workerinput"):  # once, in the controller, before any worker starts
        _compile_sources()


def _compile_sources() -> None:
    """Write the bytecode of the package, the tests, the benchmarks and the examples. An editable
    install has none, and where PYTHONDONTWRITEBYTECODE is set (these machines set it) no process
    writes it: each of the thousands of processes the suite starts (every manager, client and
    worker) would compile what it imports again, a tenth of a second each. Bytecode is read even
    so; an edited file is compiled anew (its timestamp no longer matches)."""
    import compileall

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ("reflectmgr", "tests", "benchmarks", "examples"):
        compileall.compile_dir(os.path.join(root, folder), quiet=2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The slow tests first (a stable sort: otherwise in collection order). pytest-xdist hands out
    # tests in this order, so the long ones start while there is still short work to balance the
    # workers, instead of one of them finishing alone at the end.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if sys.version_info >= (3, 13):
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    skip = pytest.mark.skip(reason=f"subinterpreter pools need Python 3.13+; this is Python {version}")
    for item in items:
        if "interpreters" in item.keywords:
            item.add_marker(skip)
