"""m.executor(): a concurrent.futures executor whose workers are clients of the manager."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import psutil
import pytest

import reflectmgr

from ..helpers import CHILD, DEATH, baseline_objects, in_thread, wait_until
from .objects import Inventory, NarrowInitError, RaisesOnLoad, keep_and_raise, read_kept


def _add(inv: object, name: str) -> int:
    return inv.add(name)["qty"]  # type: ignore[attr-defined, no-any-return]


def test_submit_map_and_proxies_as_arguments(m: reflectmgr.Manager) -> None:
    inv = m.new(Inventory)
    shared = m.dict(seen=[])
    with m.executor(max_workers=2) as ex:
        futures = [ex.submit(_add, inv, f"fruit{i}") for i in range(4)]
        assert [f.result(CHILD) for f in cf.as_completed(futures)] == [1, 1, 1, 1]
        assert ex.submit(_add, inv, "fruit0").result(CHILD) == 2
        # closures and lambdas travel with cloudpickle; proxies nested in them still work
        results = list(ex.map(lambda i: shared["seen"].append(i) or i * i, range(6), chunksize=2))
        assert results == [0, 1, 4, 9, 16, 25]
        done, pending = cf.wait([ex.submit(pow, 2, 10)], timeout=CHILD)
        assert not pending and done.pop().result() == 1024
    assert sorted(shared["seen"]) == list(range(6))
    assert inv.total() == 5


def _give_back(d: object) -> object:
    return d["nested"]  # type: ignore[index]


def test_task_returns_a_proxy(m: reflectmgr.Manager) -> None:
    d = m.dict(nested={"k": 1})
    with m.executor(max_workers=1) as ex:
        nested = ex.submit(_give_back, d).result(CHILD)
    assert reflectmgr.is_proxy(nested) and nested is d["nested"]
    nested["k"] = 2
    assert d["nested"]["k"] == 2


def test_borrowed_proxies_are_released_after_tasks(m: reflectmgr.Manager) -> None:
    d = m.dict({str(i): [i] for i in range(20)})
    base = baseline_objects(m)
    items = [d[str(i)] for i in range(20)]
    with m.executor(max_workers=2) as ex:
        # the task never calls the manager: its borrowed reference must still be registered
        assert list(ex.map(lambda x: 1, items)) == [1] * 20
        assert list(ex.map(len, items)) == [1] * 20
    del items
    assert wait_until(lambda: baseline_objects(m) == base, message="borrowed references to go")


def _boom(x: int) -> None:
    raise ValueError(f"task failed on {x}")


def test_task_exception_keeps_type_and_worker_traceback(m: reflectmgr.Manager) -> None:
    with m.executor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="task failed on 3") as info:
            ex.submit(_boom, 3).result(CHILD)
    assert "_boom" in str(info.value.__cause__)


def _narrow(code: int) -> None:
    raise NarrowInitError(code, f"bad {code}")


def test_an_exception_whose_pickle_does_not_load_reaches_the_caller_and_the_pool_goes_on(
    m: reflectmgr.Manager,
) -> None:
    # Loading it calls the class with its args, which its __init__ refuses: the caller's result
    # thread failed, and the whole pool broke ("terminated abruptly"), as the stdlib's does.
    with m.executor(max_workers=1) as ex:
        with pytest.raises(NarrowInitError) as info:
            ex.submit(_narrow, 7).result(CHILD)
        assert info.value.code == 7 and info.value.args == ("bad 7",)
        assert "_narrow" in str(info.value.__cause__)  # the worker's traceback
        assert ex.submit(abs, -3).result(CHILD) == 3


def _die(hold: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_dead_worker_breaks_the_pool_and_releases_its_references(m: reflectmgr.Manager) -> None:
    d = m.dict(x=[1])
    base = baseline_objects(m)
    ex = m.executor(max_workers=1)
    try:
        assert ex.submit(len, d["x"]).result(CHILD) == 1
        started = time.monotonic()
        with pytest.raises(BrokenProcessPool):
            ex.submit(_die, d["x"]).result(CHILD)
        assert time.monotonic() - started < DEATH
    finally:
        ex.shutdown(wait=True)
    assert wait_until(lambda: baseline_objects(m) == base, DEATH, "the dead worker's references to go")


def test_unpicklable_task_argument_fails_its_future_not_submit(m: reflectmgr.Manager) -> None:
    import threading

    with m.executor(max_workers=1) as ex:
        future = ex.submit(print, threading.Lock())  # the standard executor's contract: no raise here
        error = future.exception(CHILD)
        assert isinstance(error, reflectmgr.ReflectmgrPicklingError) and "argument 0" in str(error)
        assert ex.submit(abs, -3).result(CHILD) == 3
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, -3)


def test_system_exit_while_unpickling_a_task_is_an_ordinary_exception(m: reflectmgr.Manager) -> None:
    with m.executor(max_workers=1) as ex:
        future = ex.submit(repr, RaisesOnLoad(SystemExit(3)))
        error = future.exception(CHILD)
        assert isinstance(error, reflectmgr.ReflectmgrError) and "SystemExit" in str(error)
        with pytest.raises(Exception, match="SystemExit"):  # an `except Exception` handler sees it
            future.result()
        with pytest.raises(KeyError):
            ex.submit(repr, RaisesOnLoad(KeyError("k"))).result(CHILD)  # an Exception keeps its type
        assert ex.submit(abs, -3).result(CHILD) == 3  # the worker is still there


def test_a_task_that_raises_still_registers_its_borrowed_proxies(m: reflectmgr.Manager) -> None:
    lst = m.list(["kept"])
    with m.executor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="keeping its proxy"):
            ex.submit(keep_and_raise, lst).result(CHILD)
        del lst  # the submitter's proxy goes: only the worker's keeps the list alive now
        gc.collect()
        m.client.flush()
        assert ex.submit(read_kept).result(CHILD) == ["kept"]


@pytest.mark.slow
def test_exiting_without_shutting_the_executor_down_prints_nothing(tmp_path: Path) -> None:
    script = tmp_path / "left_open.py"
    script.write_text(
        "import reflectmgr\n\n"
        "def task(x):\n    return x + 1\n\n"
        "if __name__ == '__main__':\n"
        "    m = reflectmgr.Manager()\n    m.start()\n"
        "    ex = m.executor(1)\n    print(ex.submit(task, 1).result())\n"
    )
    for _ in range(3):  # the noise depended on timing at interpreter exit
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=CHILD)
        assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
        assert "Exception ignored" not in proc.stderr, proc.stderr


def _initialized() -> object:
    return _STATE.get("ready")


_STATE: dict[str, object] = {}


def _init(value: object) -> None:
    _STATE["ready"] = value


def test_initializer_and_shutdown_cancel(m: reflectmgr.Manager) -> None:
    ex = m.executor(max_workers=1, initializer=_init, initargs=("yes",), max_tasks_per_child=5)
    assert ex.submit(_initialized).result(CHILD) == "yes"
    slow = [ex.submit(time.sleep, 0.2) for _ in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in slow)


def test_workers_that_reach_max_tasks_per_child_are_replaced_while_a_backlog_waits(m: reflectmgr.Manager) -> None:
    # ProcessPoolExecutor's own replacement asks its idle-worker semaphore first, which may hold a
    # token of the worker that just left: it spawned none and the backlog waited for ever
    # (CPython gh-115634, 3.11-3.14); here too, until the executor replaced the worker outright.
    ex = m.executor(1, max_tasks_per_child=2)
    try:
        futures = [ex.submit(os.getpid) for _ in range(8)]
        pids = [f.result(CHILD) for f in futures]
        assert len(set(pids)) == 4 and all(pids.count(pid) == 2 for pid in pids)
        assert sorted(ex.map(abs, range(-5, 1))) == [0, 1, 2, 3, 4, 5]  # map's backlog too
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    for pid in set(pids):
        wait_until(lambda pid=pid: not psutil.pid_exists(pid), DEATH, f"worker {pid} to exit")


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="checks the error given below Python 3.13")
def test_interpreter_pool_below_313_names_the_version(m: reflectmgr.Manager) -> None:
    with pytest.raises(reflectmgr.ReflectmgrError, match=r"Python 3\.13 or newer.*this is Python 3\.1[0-2]"):
        m.executor(kind="interpreter")


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_every_start_method_runs_tasks_and_shuts_down(m: reflectmgr.Manager, method: str) -> None:
    # A fork-context worker inherits the parent's exit hook and a copy of the executor: running
    # that copy's shutdown in the worker hung it (and so the parent's shutdown) with locks its
    # parent's threads held at fork.
    import multiprocessing

    d = m.dict()
    ex = m.executor(2, mp_context=multiprocessing.get_context(method))
    assert list(ex.map(_store, [d] * 4, range(4))) == [0, 1, 2, 3]
    t, out = in_thread(lambda: ex.shutdown(wait=True))
    t.join(DEATH)
    assert not t.is_alive(), f"shutdown of a {method} pool did not return within {DEATH} s"
    assert out == [None]
    assert dict(d) == {0: 0, 1: 1, 2: 2, 3: 3}


def _store(d: object, i: int) -> int:
    d[i] = i  # type: ignore[index]
    return i


# What a task names from the main script: by name where the workers find it (as the standard
# executor sends it, so it runs with the globals the initializer set in the worker), by value
# where they do not (the `if __name__ == "__main__":` block, which they skip; a lambda). `submit`
# sent a script's function by value always (it could not see the initializer's globals) and
# `map` by name always (a function of the block was not found).
_MAIN_SCRIPT = """
import multiprocessing, sys
import reflectmgr

def init(value):
    global CONN
    CONN = value

def task(x):
    return CONN + x

def twice(x):
    return 2 * x

class Box:
    def __init__(self, v):
        self.v = v

def unbox(box):
    return box.v

if __name__ == "__main__":
    def twice(x):  # the block's own: the workers only have the one above
        return 3 * x

    class Inner:
        def __init__(self, v):
            self.v = v

    def guarded(x):
        return -x

    def guarded_init():
        pass

    how = sys.argv[1]
    ctx = multiprocessing.get_context("fork") if how == "fork" else None
    pool = dict(kind="interpreter") if how == "interpreter" else dict(mp_context=ctx)
    with reflectmgr.Manager(in_process=how == "interpreter") as m:
        try:
            m.executor(1, initializer=guarded_init if how != "package" else init, mp_context=ctx)
        except reflectmgr.ReflectmgrPicklingError as exc:
            refused = str(exc)
        else:
            refused = "accepted"
        kept = dict(initializer=init, initargs=(10,)) if how != "package" else {}
        with m.executor(2, **pool, **kept) as ex:
            if how != "package":
                by_name = ex.submit(task, 1).result(), list(ex.map(task, [1, 2]))
                print(*by_name, ex.submit(lambda x: task(x) * 2, 1).result())
            print(
                ex.submit(guarded, 4).result(), list(ex.map(guarded, [5])),
                ex.submit(twice, 1).result(), list(ex.map(twice, [1])),
                ex.submit(unbox, Box(7)).result(), ex.submit(unbox, Inner(8)).result(),
                list(ex.map(unbox, [Inner(9)])),
            )
            import psutil  # here: the workers run the top level, and psutil loads in no subinterpreter

            started = [child.pid for child in psutil.Process().children(recursive=True)]
        print(refused)
        print(*started)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "how", ["script", "fork", "package", pytest.param("interpreter", marks=pytest.mark.interpreters)]
)
def test_a_task_from_the_main_script_sees_its_workers_globals_or_travels_by_value(tmp_path: Path, how: str) -> None:
    if how == "package":  # python -m app: spawn does not run a package's __main__ (all by value)
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "__init__.py").write_text("")
        (tmp_path / "app" / "__main__.py").write_text(_MAIN_SCRIPT)
        args = [sys.executable, "-m", "app", how]
    else:
        (tmp_path / "main_script.py").write_text(_MAIN_SCRIPT)
        args = [sys.executable, "main_script.py", how]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0, proc.stderr
    *lines, refused, started = proc.stdout.splitlines()
    for pid in map(int, started.split()):  # the manager, the workers: gone with the program
        wait_until(lambda pid=pid: not psutil.pid_exists(pid), DEATH, f"process {pid} to exit")
    by_value = "-4 [-5] 3 [3] 7 8 [9]"  # the block's own twice(), and its class, travel by value
    if how == "package":  # no script the workers run: an initializer of its own cannot be found
        assert lines == [by_value]
        assert "no script file" in refused and "a package's __main__" in refused
    else:
        assert lines == ["11 [11, 12] 22", by_value]
        if how == "fork":  # the workers are copies of this process: they have the block's too
            assert refused == "accepted"
        else:  # (the refused one is a process pool's, for the interpreter pool too)
            assert "`if __name__ == '__main__':` block" in refused, refused
