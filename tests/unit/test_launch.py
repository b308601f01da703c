"""_manager/launch.py: the manager's own interpreter (the whole programs: tests/faults/test_real_programs.py)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys

import psutil
import pytest

import reflectmgr
from reflectmgr._manager import process
from reflectmgr._manager.launch import ManagerProcess

from ..helpers import DEATH

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def test_the_manager_runs_in_a_fresh_interpreter_with_our_sys_path_and_authkey(m: reflectmgr.Manager) -> None:
    assert isinstance(m._process, ManagerProcess) and m._process.is_alive() and m._process.exitcode is None
    manager = psutil.Process(m.pid)
    assert manager.ppid() == os.getpid()
    assert "reflectmgr._manager.process import boot" in " ".join(manager.cmdline())
    assert list(m.new(_sys_path)) == [p for p in sys.path if isinstance(p, str)]
    assert list(m.new(_sys_argv)) == sys.argv
    assert m.new(_default_authkey) == bytes(multiprocessing.current_process().authkey)


def _sys_path() -> list[str]:
    return list(sys.path)


def _sys_argv() -> list[str]:
    return list(sys.argv)


def _default_authkey() -> bytes:
    return bytes(multiprocessing.current_process().authkey)


def test_joining_and_exit_code_belong_to_the_process_that_started_it() -> None:
    m = reflectmgr.Manager(shutdown_timeout=DEATH)
    m.start()
    pid = m.pid
    child = os.fork()
    if child == 0:  # a forked child inherits the Manager object, not the manager process
        try:
            m.join(0)
        except reflectmgr.BrokenManagerError as exc:
            os._exit(0 if "only the process that started the manager" in str(exc) else 2)
        os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    m.shutdown()
    assert m._process.exitcode == 0 and not psutil.pid_exists(pid)


def test_a_manager_whose_parent_is_gone_before_it_sends_the_arguments_just_exits() -> None:
    ours, theirs = socket.socketpair()
    ours.close()
    assert process.boot(theirs.detach()) is None  # EOF: returns, nothing raised, nothing served


@pytest.mark.parametrize("ctx", ["fork", "forkserver"])
def test_another_start_method_still_starts_the_manager_with_its_own_process(ctx: str) -> None:
    with reflectmgr.Manager(ctx=ctx) as m:
        assert not isinstance(m._process, ManagerProcess)
        d = m.dict(a=1)
        d["b"] = 2
        assert d == {"a": 1, "b": 2}


def test_a_frozen_program_starts_its_manager_with_multiprocess_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    # A frozen executable runs no "-c": multiprocess's spawn knows how to start one (freeze_support).
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    ctx = reflectmgr.Manager()._context()
    assert ctx is not None and ctx.get_start_method() == "spawn" and type(ctx).__module__.startswith("multiprocess.")
    monkeypatch.setattr(sys, "frozen", False)
    assert reflectmgr.Manager()._context() is None and reflectmgr.Manager(ctx="spawn")._context() is None
