"""An executor's workers forked from the template (_pools/forked.py): what a spawned one would see."""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import psutil
import pytest

import reflectmgr
from reflectmgr._manager import launch
from reflectmgr._pools.forked import WorkerContext

from ..helpers import CHILD, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _template_pid() -> int:
    template = launch.template_for_workers(CHILD)
    assert template is not None, "this Linux machine starts a template"
    return template.pid


def _what_a_worker_sees() -> dict[str, object]:
    import late_module  # type: ignore[import-not-found]  # on a sys.path entry added after the template started

    return {
        "parent": os.getppid(),
        "setting": os.environ.get("SOME_SETTING"),
        "cwd": os.getcwd(),
        "module": late_module.VALUE,
        "argv": sys.argv,
        "authkey": bytes(multiprocessing.current_process().authkey),
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }


def test_workers_are_forked_from_the_template_and_see_the_owner_of_now(
    m: reflectmgr.Manager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = _template_pid()
    # All of it changed after the template started: a spawned worker would see it, so must ours.
    (tmp_path / "late_module.py").write_text("VALUE = 'found'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOME_SETTING", "set late")
    with m.executor(2, max_tasks_per_child=1) as ex:  # a new worker per task
        seen = [ex.submit(_what_a_worker_sees).result(CHILD) for _ in range(3)]
    assert launch._templates.template is not None and launch._templates.template.pid == template
    for one in seen:
        assert one == {
            "parent": template,
            "setting": "set late",
            "cwd": str(tmp_path),
            "module": "found",
            "argv": sys.argv,
            "authkey": bytes(multiprocessing.current_process().authkey),
            "sigint": True,  # Ctrl-C reaches a worker as KeyboardInterrupt, as in a spawned one
        }


def test_a_forked_workers_exit_code_join_and_signals_are_a_processes(m: reflectmgr.Manager) -> None:
    template = _template_pid()
    ctx = WorkerContext()
    exits = ctx.Process(target=_exit_with, args=(7,))
    exits.start()
    exits.join(CHILD)
    assert exits.exitcode == 7 and not exits.is_alive()
    sleeps = ctx.Process(target=time.sleep, args=(60,))
    sleeps.start()
    assert psutil.Process(sleeps.pid).ppid() == template  # (the other may be gone and reaped already)
    assert sleeps.is_alive() and sleeps.exitcode is None
    sleeps.join(0.05)
    assert sleeps.is_alive()
    sleeps.terminate()
    sleeps.join(CHILD)
    assert sleeps.exitcode == -signal.SIGTERM
    for process in (exits, sleeps):
        process.close()


def _exit_with(code: int) -> None:
    os._exit(code)  # (by name: under coverage os._exit is a local function, which does not pickle)


def _share(text: bytes) -> tuple[str, list[str]]:
    block = shared_memory.SharedMemory(create=True, size=len(text))
    block.buf[: len(text)] = text
    block.close()
    return block.name, [" ".join(child.cmdline()) for child in psutil.Process().children()]


def test_shared_memory_a_worker_made_outlives_the_worker(m: reflectmgr.Manager) -> None:
    # A worker registers what it creates with its owner's resource tracker, as a spawned one does:
    # a tracker of its own would unlink the block when the worker exits.
    _template_pid()
    with m.executor(1, max_tasks_per_child=1) as ex:
        name, children = ex.submit(_share, b"kept").result(CHILD)
    assert children == []  # no resource tracker of its own
    block = shared_memory.SharedMemory(name)
    try:
        assert bytes(block.buf[:4]) == b"kept"
    finally:
        block.close()
        block.unlink()


def test_without_a_template_workers_are_spawned(m: reflectmgr.Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    state = launch._Templates()
    state.failed = True  # as where a template cannot start (no SOCK_SEQPACKET unix sockets)
    monkeypatch.setattr(launch, "_templates", state)
    with m.executor(1) as ex:
        seen = ex.submit(os.getppid).result(CHILD)
    assert seen == os.getpid()


def test_a_worker_is_spawned_when_the_template_died(m: reflectmgr.Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "_templates", launch._Templates())  # this process's own, untouched
    template = launch.template_for_workers(CHILD)
    assert template is not None
    os.kill(template.pid, signal.SIGKILL)
    dead = psutil.Process(template.pid)
    wait_until(lambda: dead.status() == psutil.STATUS_ZOMBIE, message="the template's death")  # not reaped
    with m.executor(1) as ex:
        seen = ex.submit(os.getppid).result(CHILD)
    assert seen == os.getpid()
    assert launch._templates.template is None  # let go; the next worker or manager starts another
    assert template._popen.returncode == -signal.SIGKILL  # and reaped


def test_an_entry_the_template_cannot_import_is_refused_and_the_template_goes_on(m: reflectmgr.Manager) -> None:
    template = launch.template_for_workers(CHILD)
    assert template is not None
    with pytest.raises(OSError, match="could not fork"):
        template.fork_entry("reflectmgr_no_such_module:run", [], CHILD)
    with m.executor(1) as ex:
        assert ex.submit(os.getppid).result(CHILD) == template.pid


def test_the_template_forgets_the_workers_a_pool_replaced(m: reflectmgr.Manager) -> None:
    # A pool that replaces its workers (max_tasks_per_child) for days must not leave an entry per
    # worker it ever had in the owner's side of the template.
    template = launch.template_for_workers(CHILD)
    assert template is not None
    known = set(template._known)  # this test's manager, if forked from it, and the like
    with m.executor(1, max_tasks_per_child=1) as ex:
        workers = {ex.submit(os.getpid).result(CHILD) for _ in range(6)}
    del ex
    gc.collect()
    assert len(workers) == 6
    assert template._known <= known and set(template._exits) <= known
