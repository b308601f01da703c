"""_manager/launch.py: the manager's own interpreter (the whole programs: tests/faults/test_real_programs.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import reflectmgr
from reflectmgr._manager import launch, process, template
from reflectmgr._manager.launch import ManagerProcess
from reflectmgr._manager.template import MARKER as TEMPLATE
from reflectmgr._manager.template import ForkedChild

from ..helpers import CHILD, DEATH, gone, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def test_the_manager_gets_our_sys_path_argv_and_authkey_launched_or_forked() -> None:
    # The first start of a process launches a fresh interpreter, later ones fork from its
    # template: whichever this test worker's start is, and a second one, which is forked.
    with reflectmgr.Manager() as first, reflectmgr.Manager() as second:
        assert isinstance(second._process, ForkedChild)
        for m in (first, second):
            assert isinstance(m._process, (ManagerProcess, ForkedChild)) and m._process.is_alive()
            assert m._process.exitcode is None
            parent = psutil.Process(m.pid).parent()
            assert parent is not None
            forked = TEMPLATE in " ".join(parent.cmdline()) and parent.ppid() == os.getpid()
            assert parent.pid == os.getpid() or forked
            assert list(m.new(_sys_path)) == [p for p in sys.path if isinstance(p, str)]
            assert list(m.new(_sys_argv)) == sys.argv
            assert m.new(_default_authkey) == bytes(multiprocessing.current_process().authkey)


def test_a_forked_manager_writes_to_our_stdout_and_stderr_of_now(capfd: pytest.CaptureFixture[str]) -> None:
    # The template started in some earlier test, with that test's captured stdout: a manager
    # forked now writes where this process's fd 1 and 2 point now, as a launched one would.
    with reflectmgr.Manager() as first, reflectmgr.Manager() as m:
        del first
        assert isinstance(m._process, ForkedChild)
        m.new(_say, "to stdout", "to stderr")
        out, err = capfd.readouterr()
    assert "to stdout" in out and "to stderr" in err


def _say(out: str, err: str) -> None:
    print(out, flush=True)
    print(err, file=sys.stderr, flush=True)


def test_a_forked_manager_killed_reports_its_signal_as_exit_code() -> None:
    with reflectmgr.Manager() as first, reflectmgr.Manager(shutdown_timeout=DEATH) as m:
        del first
        assert isinstance(m._process, ForkedChild)
        os.kill(m.pid, signal.SIGKILL)
        wait_until(lambda: not m._process.is_alive(), DEATH, "the template to report the exit")  # no join
        assert m._process.exitcode == -signal.SIGKILL
        with pytest.raises(reflectmgr.BrokenManagerError):
            m.dict()


def test_a_forked_child_of_the_owner_starts_its_managers_without_its_parents_template() -> None:
    with reflectmgr.Manager() as first, reflectmgr.Manager() as second:
        del first
        template = psutil.Process(second.pid).ppid()
        child = os.fork()
        if child == 0:  # the child inherits the template's socket, which is not its to use
            code = 1
            try:
                with reflectmgr.Manager() as c, reflectmgr.Manager() as d:
                    parent_of_c, parent_of_d = psutil.Process(c.pid).ppid(), psutil.Process(d.pid).ppid()
                    own_template = psutil.Process(parent_of_d).ppid() == os.getpid()
                    code = 0 if parent_of_c == os.getpid() and parent_of_d != template and own_template else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # 3: a manager of the child's came from elsewhere
        with reflectmgr.Manager() as third:  # the parent's template still serves the parent
            assert psutil.Process(third.pid).ppid() == template


def test_a_stuck_forked_manager_is_terminated_then_killed_by_its_template() -> None:
    with reflectmgr.Manager() as first, reflectmgr.Manager(shutdown_timeout=0.5) as m:
        del first
        assert isinstance(m._process, ForkedChild)
        pid = m.pid
        os.kill(pid, signal.SIGSTOP)
        m.shutdown()  # no answer: SIGTERM, pending on a stopped process, then SIGKILL
        assert m._process.exitcode == -signal.SIGKILL and not psutil.pid_exists(pid)


def test_a_template_that_cannot_start_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "_templates", launch._Templates())  # this process's own, untouched
    monkeypatch.setattr(template, "TEMPLATE_BOOT", "raise SystemExit(3)")
    managers = [reflectmgr.Manager() for _ in range(3)]
    try:
        for m in managers:
            m.start()
        assert all(isinstance(m._process, ManagerProcess) for m in managers)  # launched, all three
        assert launch._templates.failed and launch._templates.template is None
        assert launch._templates.starts == 3
    finally:
        for m in managers:
            m.shutdown()


_TEMPLATE_PROGRAM = """
import json, os, signal, sys
import psutil, reflectmgr

def parent_of(m):
    parent = psutil.Process(m.pid).parent()
    return "me" if parent.pid == os.getpid() else parent.pid

def seen():
    import os, sys
    return [os.getcwd(), os.environ.get("SOME_SETTING"), sys.path[0], os.environ.get("REFLECTMGR_COLOCATE")]

out = {}
with reflectmgr.Manager() as m1, reflectmgr.Manager() as m2, reflectmgr.Manager() as m3:
    out["parents"] = [parent_of(m) for m in (m1, m2, m3)]
    template = psutil.Process(out["parents"][1])
    out["template"] = [template.pid, template.ppid() == os.getpid(), " ".join(template.cmdline())]
    managers = [m1.pid, m2.pid, m3.pid]
os.chdir(sys.argv[1])
os.environ["SOME_SETTING"] = "set since"
sys.path.insert(0, sys.argv[1])
with reflectmgr.Manager() as m4:
    out["forked, place of now"] = [parent_of(m4), list(m4.new(seen))]
kept = reflectmgr.Manager()  # runs while its template is replaced
kept.start()
os.environ["REFLECTMGR_COLOCATE"] = "0"  # read at import: the template's children cannot have it
with reflectmgr.Manager() as m5:
    out["another import-time environment"] = [parent_of(m5), m5.new(seen)[3]]
del os.environ["REFLECTMGR_COLOCATE"]
with reflectmgr.Manager() as m5b:  # the same environment as the first template's again
    out["back"] = parent_of(m5b)
out["kept"] = [parent_of(kept), kept.dict(a=1)["a"]]
kept.shutdown()
out["kept's exit code, from its retired template"] = kept._process.exitcode
m6 = reflectmgr.Manager()
m6.start()
current = psutil.Process(parent_of(m6))
current.kill()
current.wait(10)
m6._process.kill()  # its template gone: through a pidfd
m6._process.join(10)
try:
    code = m6._process.exitcode
except reflectmgr.BrokenManagerError as exc:
    code = str(exc)
def running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # reaped by init, or not yet
    except psutil.NoSuchProcess:
        return False

out["template killed: m6"] = [m6._process.is_alive(), running(m6.pid), code]
m6.shutdown()
with reflectmgr.Manager() as m7:
    out["then launched"] = parent_of(m7)
out["killed"] = current.pid
out["templates"] = [t.pid for t in psutil.Process().children() if "serve_template" in " ".join(t.cmdline())]
out["managers"] = managers + [m4.pid, kept.pid, m5.pid, m5b.pid, m6.pid, m7.pid]
print(json.dumps(out))
"""


def test_a_program_forks_its_managers_after_the_first_from_one_template(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _TEMPLATE_PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=CHILD
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    first, second, third = out["parents"]
    assert first == "me" and second == third != "me"  # the first launched, the next two forked
    template, its_child, cmdline = out["template"]
    assert template == second and its_child and TEMPLATE in cmdline
    # What changed since the template started travels with the start: cwd, environment, sys.path.
    assert out["forked, place of now"] == [template, [str(tmp_path), "set since", str(tmp_path), None]]
    # A variable read at import differs from the template's: a template of its own, which has it.
    second_template, colocate = out["another import-time environment"]
    assert second_template not in ("me", template) and colocate == "0"
    assert out["back"] not in ("me", template, second_template)  # a new one
    # The first template, retired, still served the manager it had forked, to its exit code.
    assert out["kept"] == [template, 1] and out["kept's exit code, from its retired template"] == 0
    alive, running, code = out["template killed: m6"]  # killed and waited for without its parent
    assert not alive and not running and "exit code is unknown" in code
    assert out["killed"] == out["back"]
    assert out["then launched"] not in ("me", template, second_template, out["back"])  # replaced
    assert out["templates"] == [out["then launched"]]
    for pid in [*out["managers"], *out["templates"], template, second_template, out["back"]]:
        wait_until(lambda pid=pid: gone(pid), DEATH, f"process {pid} to exit")


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
