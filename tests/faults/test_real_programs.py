"""Issue 10: ordinary programs that broke the core. Each test failed before its fix.

connect()+close() in a library helper, arguments that fail to unpickle in the manager, a __del__
that calls back, a stopped manager, forks at awkward moments.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

import reflectmgr
from reflectmgr._manager import client as client_module
from reflectmgr._manager import registry
from reflectmgr._proxy import link
from reflectmgr._wire.opcodes import Op

from ..helpers import CHILD, DEATH, PROMPT, baseline_objects, gone, in_thread, second_session, wait_until
from ..integration.objects import CallsBackOnDel, EventBus, InterruptsIn, RaisesOnLoad, load_after_connect_then_close

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


# -- 2. connect() + close() ---------------------------------------------------------------------
def _library_helper(address: Any, authkey: bytes) -> int:
    """What any library does: connect, work, close."""
    with reflectmgr.connect(address, authkey) as conn:
        conn.root["seen"] = True
        return len(conn.root)


@pytest.mark.slow
def test_a_manager_starts_inside_a_multiprocessing_pool_worker() -> None:
    # Pool workers are daemonic, and the stdlib refuses to start a process from one; the manager
    # is started by multiprocess, which lets it (it watches its owner and exits with it).
    from .workers import manager_in_a_pool_task

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        value, pid = pool.apply(manager_in_a_pool_task, (41,))
    assert value == 42
    assert pid > 0
    wait_until(lambda: not psutil.pid_exists(pid), DEATH, "the manager to exit with its task's with block")


# A program whose main script cannot be read again: from stdin, or -c. Its classes and functions
# travel by value; the spawned manager and workers must not try to run the script. An executor
# initializer from there is refused at once, with the reason (by value it would set globals of
# its own, not the tasks').
_NO_SCRIPT_FILE = textwrap.dedent(
    """
    import os
    import reflectmgr

    class Point:
        def __init__(self, x):
            self.x = x

    def setup():
        pass

    def square(d, i):
        d[i] = i * i
        return os.getpid()

    def double(p):
        return p.x * 2

    with reflectmgr.Manager() as m:
        d = m.dict()
        counter = m.new(Point, 1)
        try:
            m.executor(initializer=setup)
        except reflectmgr.ReflectmgrPicklingError as exc:
            assert "no script file" in str(exc)
        else:
            raise AssertionError("an initializer from __main__ was accepted")
        with m.executor(max_workers=2) as ex:
            workers = set(ex.map(square, [d] * 3, range(3)))
            doubled = ex.submit(double, Point(21)).result()
        print(sorted(d.items()), doubled, counter.x, m.stats().pid, *workers)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_a_program_without_a_script_file_starts_a_manager_and_an_executor(how: str) -> None:
    if how == "stdin":
        args, stdin = [sys.executable, "-"], _NO_SCRIPT_FILE
    else:
        args, stdin = [sys.executable, "-c", _NO_SCRIPT_FILE], ""
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0, proc.stderr
    items, rest = proc.stdout.split("] ", 1)
    doubled, x, *pids = rest.split()
    assert items == "[(0, 0), (1, 1), (2, 4)"
    assert (doubled, x) == ("42", "1")
    assert len(pids) >= 2  # the manager and at least one worker
    for pid in map(int, pids):  # the manager and the workers are gone with the program
        wait_until(lambda pid=pid: not psutil.pid_exists(pid), DEATH, f"process {pid} to exit")


# A __del__ of the main module that calls a proxy as the program ends: it runs while the
# interpreter clears its modules, reflectmgr's first. It failed inside reflectmgr with a
# meaningless error ("'NoneType' object is not subscriptable", or a pickling error naming our own
# message type). An atexit function of the program still works.
_DEL_AT_EXIT = textwrap.dedent(
    """
    import atexit
    import sys

    import reflectmgr

    class Holder:
        def __init__(self, d):
            self.d = d

        def __del__(self):
            self.d["bye"] = 1

    if sys.argv[1] == "owner":
        m = reflectmgr.Manager()
        m.start()
        d = m.dict()
    else:
        address, key = sys.argv[2:]
        d = reflectmgr.connect(address, bytes.fromhex(key)).root
    atexit.register(lambda: d.__setitem__("atexit", 1))
    holder = Holder(d)
    print(m.pid if sys.argv[1] == "owner" else 0)
    """
)


@pytest.mark.parametrize("who", ["owner", "connected"])
def test_a_del_calling_a_proxy_as_the_program_ends_gets_manager_closed_error(
    m: reflectmgr.Manager, tmp_path: Path, who: str
) -> None:
    script = tmp_path / "del_at_exit.py"
    script.write_text(_DEL_AT_EXIT)
    proc = subprocess.run(
        [sys.executable, str(script), who, str(m.address), m.authkey.hex()],
        capture_output=True,
        text=True,
        timeout=CHILD,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Exception ignored in" in proc.stderr and "Holder.__del__" in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    expected = "was shut down" if who == "owner" else "while this interpreter exits"
    assert last.startswith("reflectmgr.errors.ManagerClosedError: ") and expected in last, proc.stderr
    if who == "connected":
        assert m.root.get("atexit") == 1 and "bye" not in m.root  # the atexit call was made
    pid = int(proc.stdout)
    if pid:
        wait_until(lambda: not psutil.pid_exists(pid), DEATH, "the manager to exit with the program")


# A script with no `if __name__ == "__main__":` guard, as quick scripts are written. Under spawn,
# the manager process ran the script again to start, started a manager of its own there, and died
# (BrokenManagerError). Its module sits in a folder only the script adds to sys.path: the manager
# imports it by name from there.
_UNGUARDED = textwrap.dedent(
    """
    import os
    import sys

    import reflectmgr

    print("top level", file=sys.stderr)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
    from shapes import Square

    with reflectmgr.Manager() as m:
        d = m.dict(a=1)
        d["b"] = 2
        square = m.new(Square, 3)
        print(sorted(d.items()), square.area(), m.pid)
    """
)


@pytest.mark.parametrize("how", ["script", "-m"])
def test_a_script_without_a_main_guard_starts_a_manager_which_never_runs_it(tmp_path: Path, how: str) -> None:
    (tmp_path / "unguarded.py").write_text(_UNGUARDED)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "shapes.py").write_text(
        "class Square:\n    def __init__(self, side):\n        self.side = side\n\n"
        "    def area(self):\n        return self.side * self.side\n"
    )
    args = [sys.executable, "unguarded.py"] if how == "script" else [sys.executable, "-m", "unguarded"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("top level") == 1, proc.stderr  # the manager did not run the script
    items, area, pid = proc.stdout.rsplit(" ", 2)
    assert (items, area) == ("[('a', 1), ('b', 2)]", "9")
    wait_until(lambda: not psutil.pid_exists(int(pid)), DEATH, "the manager to exit with the program")


def test_connect_and_close_leave_the_managers_own_connection_alone() -> None:
    m = reflectmgr.Manager(shutdown_timeout=DEATH)
    m.start()
    try:
        d = m.dict(a=1)
        assert _library_helper(m.address, m.authkey) == 1
        assert d["a"] == 1 and m.root["seen"] is True  # nothing of ours was closed
        other = reflectmgr.connect(m.address, m.authkey)
        third = reflectmgr.connect(m.address, m.authkey)
        other.close()
        assert third.root["seen"] is True  # closing one connection leaves the others
        other.close()  # idempotent
        with pytest.raises(reflectmgr.ManagerClosedError, match=r"connection .* was closed"):
            other.root  # noqa: B018 - the closed one refuses use
        third.close()
        assert m.stats().clients == 1
        assert isinstance(m.address, str)
        folder = Path(m.address.removeprefix("shm:")).parent
    finally:
        started = time.monotonic()
        m.shutdown()
    assert time.monotonic() - started < 3.0  # the manager answered SHUTDOWN: no 5 s join, no SIGTERM
    assert not folder.exists()


def test_last_connection_closed_ends_the_session() -> None:
    with reflectmgr.Manager() as m:
        assert m.address is not None
        server = second_session(m)  # plays the part of the owner; this test is a separate client
        conn = reflectmgr.connect(m.address, m.authkey)
        lst = conn.list([1])
        client = conn.client
        assert client is not m.client or client.implicit  # the manager's own is never closed by handles
        conn.close()
        if client is not m.client:
            assert client.closed
            with pytest.raises(reflectmgr.ManagerClosedError):
                lst.append(2)
        server.close()


def test_a_proxy_unpickled_through_a_connection_outlives_its_close(m: reflectmgr.Manager) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    blob = pickle.dumps(m.list(["shared"]))
    child = ctx.Process(target=load_after_connect_then_close, args=(m.address, m.authkey, blob, out))
    child.start()
    try:
        assert out.get(timeout=CHILD) == ("ok", ["shared"])
    finally:
        child.join(CHILD)
    assert child.exitcode == 0
    out.close()
    out.join_thread()


# -- 3. an argument that fails to unpickle in the manager -----------------------------------------
@pytest.mark.parametrize("error", [ValueError("v"), KeyError("k"), RuntimeError("r"), MemoryError("m")])
def test_unpickling_error_in_the_manager_keeps_its_type_and_the_connection(
    manager: reflectmgr.Manager, error: BaseException
) -> None:
    d = manager.dict()
    with pytest.raises(type(error)) as info:
        d["k"] = RaisesOnLoad(error)
    assert isinstance(info.value.__cause__, reflectmgr.RemoteTraceback)
    assert "raise_error" in str(info.value.__cause__)
    d["k"] = 1  # the same connection goes on
    assert d == {"k": 1}


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_system_exit_while_unpickling_arrives_as_a_reflectmgr_error(
    manager: reflectmgr.Manager, error: BaseException
) -> None:
    d = manager.dict()
    with pytest.raises(reflectmgr.ReflectmgrError, match=type(error).__name__) as info:
        d["k"] = RaisesOnLoad(error)
    assert not isinstance(info.value, (SystemExit, KeyboardInterrupt))
    d["k"] = 1
    assert d == {"k": 1} and manager.stats().clients == 1


def test_ctrl_c_while_the_main_thread_unpickles_a_reply_stays_a_keyboard_interrupt(m: reflectmgr.Manager) -> None:
    # A Ctrl-C lands in the main thread, whatever it is doing; while it unpickled a reply, the
    # program got "ReflectmgrError: could not unpickle the reply" instead (the CLI's stats --watch
    # then exited with 1). In another thread no signal lands: there it is the content's doing.
    shared = m.new(InterruptsIn, os.getpid())
    with pytest.raises(KeyboardInterrupt):
        shared.fresh()  # it comes back by value: unpickled here
    assert shared.pid == os.getpid()  # the same manager goes on serving this thread
    errors: list[BaseException] = []

    def copy_in_a_thread() -> None:
        try:
            shared.fresh()
        except BaseException as exc:  # the test asserts what it was
            errors.append(exc)

    thread = threading.Thread(target=copy_in_a_thread)
    thread.start()
    thread.join(PROMPT)
    assert len(errors) == 1 and type(errors[0]) is reflectmgr.ReflectmgrError, errors
    assert "KeyboardInterrupt" in str(errors[0])
    assert m.stats().clients == 1


# -- a call that waits, left by its client --------------------------------------------------------
# The connection's thread in the manager stayed in the call and completed it for nobody: the next
# item put was taken (lost), the semaphore or lock taken (for ever), the notify() consumed.
def _interrupt_when(predicate: Callable[[], Any]) -> threading.Thread:
    """Ctrl-C this process (its main thread, this test's) once ``predicate`` holds."""

    def interrupt() -> None:
        wait_until(predicate, message="the call to wait in the manager")
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


def test_a_get_interrupted_while_it_waits_takes_no_item(manager: reflectmgr.Manager) -> None:
    q = manager.Queue()
    sleepers = q.not_empty._waiters  # the manager's own deque of waiting threads
    interrupter = _interrupt_when(lambda: len(sleepers) == 1)
    with pytest.raises(KeyboardInterrupt):
        q.get()
    interrupter.join()
    q.put("item")
    assert q.get(timeout=DEATH) == "item"
    assert q.qsize() == 0


def test_an_acquire_interrupted_while_it_waits_takes_nothing(manager: reflectmgr.Manager) -> None:
    sem = manager.Semaphore(0)
    sleepers = sem._cond._waiters
    interrupter = _interrupt_when(lambda: len(sleepers) == 1)
    with pytest.raises(KeyboardInterrupt):
        sem.acquire()
    interrupter.join()
    sem.release()
    assert sem.acquire(timeout=DEATH)


def test_a_call_waiting_when_its_owner_shuts_the_manager_down_says_closed(transport: str) -> None:
    # It said BrokenManagerError, "it exited or was killed": the connection's end reached the
    # thread before shutdown() marked the client closed.
    address = ("127.0.0.1", 0) if transport == "tcp" else None
    with reflectmgr.Manager(address, transport=transport) as mgr:
        q = mgr.Queue()
        sleepers = q.not_empty._waiters
        t, out = in_thread(q.get)
        wait_until(lambda: len(sleepers) == 1, PROMPT, "the get to wait in the manager")
    t.join(PROMPT)
    assert not t.is_alive() and len(out) == 1
    assert isinstance(out[0], reflectmgr.ManagerClosedError) and "shut down" in str(out[0]), out


@pytest.mark.parametrize("kind", ["queue", "condition"])
def test_a_client_killed_while_it_waits_leaves_the_next_item_or_notify_to_the_others(
    manager: reflectmgr.Manager, kind: str
) -> None:
    from .workers import wait_in

    obj: Any = manager.Queue() if kind == "queue" else manager.Condition()
    sleepers = obj.not_empty._waiters if kind == "queue" else obj._waiters
    child = multiprocessing.get_context("spawn").Process(
        target=wait_in, args=(obj, "get" if kind == "queue" else "wait")
    )
    child.start()
    wait_until(lambda: len(sleepers) == 1, CHILD, "the child to wait in the manager")
    child.kill()
    child.join(DEATH)
    assert child.exitcode == -signal.SIGKILL
    # a live waiter, behind the dead one
    if kind == "queue":
        thread, out = in_thread(lambda: obj.get(timeout=DEATH))
    else:

        def wait() -> bool:
            with obj:
                return bool(obj.wait(DEATH))

        thread, out = in_thread(wait)
    wait_until(lambda: len(sleepers) == 2, message="the second waiter")
    if kind == "queue":
        obj.put("task")
    else:
        with obj:
            obj.notify()  # one: the dead waiter is first in line
    thread.join(DEATH + PROMPT)
    assert out == ["task" if kind == "queue" else True]


def test_releases_riding_on_a_message_that_fails_to_unpickle_are_applied(m: reflectmgr.Manager) -> None:
    src = m.dict({str(i): [i] for i in range(50)})
    base = baseline_objects(m)
    held = [src[str(i)] for i in range(50)]
    assert m.stats().objects == base + 50
    d = m.dict()
    del held
    gc.collect()
    with pytest.raises(ValueError):
        d["k"] = RaisesOnLoad(ValueError("no"))  # carries the 50 releases
    assert wait_until(lambda: m.stats().objects == base + 1, PROMPT, "the releases to be applied")


# -- 4. user code in __del__ calling back into the manager ---------------------------------------
def test_del_that_calls_back_into_the_manager_does_not_deadlock_it(m: reflectmgr.Manager) -> None:
    made: list[Any] = []
    obj = m.new(CallsBackOnDel, reflectmgr.byref(lambda: made.append(m.dict(from_del=True))))
    del obj
    gc.collect()
    done = threading.Event()

    def flush() -> None:
        m.client.flush()  # carries the release: the manager frees the object, __del__ calls us back
        done.set()

    threading.Thread(target=flush, daemon=True).start()
    assert done.wait(PROMPT), "the manager deadlocked in __del__"
    # The release may have left on the release flusher's thread instead (every 0.2 s), flush()
    # then having nothing to send: the callback comes through that thread's wait.
    assert wait_until(lambda: len(made) == 1, PROMPT, "__del__'s callback")
    assert made[0]["from_del"] is True
    other = second_session(m)
    assert other.dict(x=1)["x"] == 1  # every client is still served
    other.close()


class _Garbage:
    """An object in a reference cycle: only a collection frees it, wherever one happens to run."""

    def __init__(self, on_del: Any) -> None:
        self.me = self
        self.on_del = on_del

    def __del__(self) -> None:
        self.on_del()


@pytest.fixture
def collecting_on_receive(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each proxy this process receives is made after a collection of the garbage in the list
    that is returned (and with a proxy of the same manager just dropped, so releases are
    pending): what an allocation in the cache's update may trigger, at a chosen point."""
    pending: list[Any] = []
    make = link.new_proxy

    def collecting(*args: Any) -> Any:
        if pending:
            pending.clear()
            gc.collect()
        return make(*args)

    monkeypatch.setattr(link, "new_proxy", collecting)
    return pending


def test_a_del_run_by_a_collection_while_a_proxy_arrives_calls_back_on_the_same_thread(
    m: reflectmgr.Manager, collecting_on_receive: list[Any]
) -> None:
    d = m.dict(k=1, inner={"x": 2})
    seen: list[Any] = []
    # User code in __del__: a plain value and a proxy of the one object being received outside.
    collecting_on_receive += [m.list(), _Garbage(lambda: seen.extend((d["k"], d["inner"])))]
    t, out = in_thread(lambda: d["inner"])
    t.join(PROMPT)
    assert not t.is_alive(), "a __del__ calling back from inside the proxy cache deadlocked"
    assert seen[0] == 1
    assert out == [seen[1]] and out[0] is seen[1]  # one proxy for one object
    assert out[0]["x"] == 2
    base = m.stats().objects
    del out[0], seen[1]
    m.client.flush()  # the release the collection dropped, and this one's: nothing stays held
    assert wait_until(lambda: m.stats().objects == base - 1, PROMPT, "the releases to be applied")


def test_a_dropped_manager_collected_while_its_proxy_arrives_shuts_down_without_a_hang(
    collecting_on_receive: list[Any],
) -> None:
    mgr = reflectmgr.Manager()
    mgr.start()
    pid = mgr.pid
    d = mgr.dict(inner={})
    collecting_on_receive += [mgr.list(), _Garbage(lambda: None)]
    collecting_on_receive[-1].manager = mgr  # the Manager itself is in the cycle now
    del mgr
    t, out = in_thread(lambda: d["inner"]["x"])
    t.join(CHILD)
    assert not t.is_alive(), "the dropped Manager's shutdown deadlocked inside the proxy cache"
    assert isinstance(out[0], reflectmgr.ManagerClosedError)
    assert wait_until(lambda: gone(pid), DEATH, "the manager to exit")


def test_a_dropped_manager_collected_while_the_registry_is_locked_shuts_down_without_a_hang() -> None:
    mgr = reflectmgr.Manager()
    mgr.start()
    pid = mgr.pid
    _Garbage(lambda: None).manager = mgr
    del mgr

    def collect_inside() -> None:
        with registry.lock:  # an allocation in any of its sections may run a collection
            gc.collect()

    t, out = in_thread(collect_inside)
    t.join(CHILD)
    assert not t.is_alive(), "the dropped Manager's shutdown deadlocked on the client registry"
    assert out == [None]
    assert wait_until(lambda: gone(pid), DEATH, "the manager to exit")


_GARBAGE_SCRIPT = """
    import gc
    import reflectmgr

    class Garbage:  # in a reference cycle: only a collection frees it
        def __init__(self, on_del):
            self.me = self
            self.on_del = on_del

        def __del__(self):
            self.on_del()

    def collect_first(make):  # what an allocation inside ``make`` may trigger, at a chosen point
        def collecting(*args):
            gc.collect()
            return make(*args)

        return collecting
"""


def _run_garbage_script(tmp_path: Path, body: str) -> str:
    """Run a program (``_GARBAGE_SCRIPT`` then ``body``) in a process of its own: what it does to
    a module's state must not reach this one. Returns its output."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(_GARBAGE_SCRIPT) + textwrap.dedent(body))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="the hang-up watcher needs epoll (Linux)")
def test_a_del_opening_a_connection_while_the_first_is_opened_does_not_hang(tmp_path: Path) -> None:
    out = _run_garbage_script(
        tmp_path,
        """
        from reflectmgr._transport import hangup

        with reflectmgr.Manager(transport="pipe") as m:  # a pipe connection needs no watcher
            m.root["d"] = m.dict(k=1)
            assert hangup._watcher is None
            seen = []

            def on_del():
                c = reflectmgr.connect(m.address, m.authkey, transport="shm")
                seen.append((c.root["d"]["k"], any(t._watch for t in c.client._transports)))
                c.close()

            hangup._Watcher = collect_first(hangup._Watcher)  # made by the first shm connection
            Garbage(on_del)
            c = reflectmgr.connect(m.address, m.authkey, transport="shm")
            print(seen, c.root["d"]["k"], all(t._watch for t in c.client._transports))
            c.close()
        print(m.pid)
        """,
    )
    result, pid = out.splitlines()
    # The __del__'s connection works, unwatched (its sleepers look for themselves); the outer one
    # gets the process's watcher.
    assert result == "[(1, False)] 1 True"
    assert wait_until(lambda: gone(int(pid)), DEATH, "the program's manager to exit")


def test_a_del_starting_a_manager_while_the_template_starts_does_not_hang(tmp_path: Path) -> None:
    out = _run_garbage_script(
        tmp_path,
        """
        from reflectmgr._manager import launch

        seen, inner_pid = [], []

        def on_del():
            with reflectmgr.Manager() as inner:
                seen.append(inner.dict(k=1)["k"])
                inner_pid.append(inner.pid)

        launch.Template = collect_first(launch.Template)  # made under the templates' lock
        with reflectmgr.Manager() as first:  # a process's first manager is launched: no template
            Garbage(on_del)
            with reflectmgr.Manager() as second:  # the second starts the template
                print(seen, first.dict(k=2)["k"], second.dict(k=3)["k"], launch._templates.template is not None)
                pids = [*inner_pid, first.pid, second.pid, launch._templates.template.pid]
        print(*pids)
        """,
    )
    result, pids = out.splitlines()
    assert result == "[1] 2 3 True"  # the __del__'s manager was launched directly
    for pid in map(int, pids.split()):  # the managers, and the template (it sees its parent gone)
        assert wait_until(lambda pid=pid: gone(pid), DEATH, f"process {pid} of the program to exit")


def test_a_del_run_by_a_collection_inside_the_object_table_cannot_send_a_reference_but_never_hangs(
    m: reflectmgr.Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = m.new(EventBus)
    table = m.client.table  # this process's objects the manager holds (byref)
    seen: list[Any] = []
    garbage = [_Garbage(lambda: seen.append(_outcome(lambda: bus.apply(reflectmgr.byref(len), "abc"))))]
    next_oid = table._next_oid

    def collecting() -> int:
        if garbage:
            garbage.clear()
            gc.collect()  # what an allocation inside the table's update may trigger
        return next_oid()

    monkeypatch.setattr(table, "_next_oid", collecting)
    t, out = in_thread(lambda: bus.apply(reflectmgr.byref(str.upper), "abc"))
    t.join(PROMPT)
    assert not t.is_alive(), "a __del__ sending a reference from inside the object table deadlocked"
    assert out == ["ABC"]  # the call outside goes on
    assert len(seen) == 1 and seen[0].startswith("ReentrantCallError: no reference can be sent")  # refused
    assert bus.apply(reflectmgr.byref(len), "abc") == 3  # and the same call made afterwards works


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except reflectmgr.ReentrantCallError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_del_calling_the_manager_while_a_forked_child_adopts_gets_an_error_not_a_hang(
    m: reflectmgr.Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = m.dict(k=1)
    inherited = m.dict(who="parent")
    parent = os.getpid()
    seen: list[str] = []
    live = m.client.cache.live

    def collecting_in_the_child() -> Any:
        if os.getpid() != parent:
            gc.collect()  # what an allocation during the child's adoption may trigger
        return live()

    def call_back() -> None:
        try:
            seen.append(repr(d["k"]))
        except reflectmgr.ReentrantCallError as exc:
            seen.append(type(exc).__name__)

    monkeypatch.setattr(m.client.cache, "live", collecting_in_the_child)
    r, w = os.pipe()
    gc.disable()  # the garbage must reach the child uncollected
    try:
        _Garbage(call_back)
        pid = os.fork()
        if pid == 0:  # the child adopted in its fork hook; report, never return into pytest
            code = 1
            try:
                os.write(w, repr((seen, d["k"], dict(inherited))).encode())
                code = 0
            finally:
                os._exit(code)
    finally:
        gc.enable()
    os.close(w)
    try:
        ready = select.select([r], [], [], CHILD)[0]
        report = os.read(r, 4096).decode() if ready else None
    finally:
        os.close(r)
        if report is None:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert report is not None, "the forked child deadlocked adopting its proxies"
    assert report == repr((["ReentrantCallError"], 1, {"who": "parent"}))
    assert os.waitstatus_to_exitcode(status) == 0
    gc.collect()  # the parent's copy of the garbage: its __del__ calls as any other code would
    assert seen == ["1"]


# -- 5. unbounded waits ---------------------------------------------------------------------------
@pytest.fixture
def stoppable() -> Any:
    """A manager that the test may SIGSTOP; resumed (if still there) and reaped at the end."""
    m = reflectmgr.Manager(timeout=1.0, shutdown_timeout=1.0)
    m.start()
    yield m
    if m.pid is not None and psutil.pid_exists(m.pid):
        try:
            os.kill(m.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    m.shutdown()


def _stop(pid: int) -> None:
    """SIGSTOP ``pid`` and return once it is stopped (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED, PROMPT, "the manager to stop")


@pytest.mark.slow
def test_a_stopped_manager_times_calls_out_and_shutdown_is_bounded(stoppable: reflectmgr.Manager) -> None:
    m = stoppable
    d = m.dict(a=1)
    assert m.pid is not None
    pid = m.pid
    _stop(pid)
    started = time.monotonic()
    with pytest.raises(reflectmgr.ManagerTimeoutError, match="did not answer") as info:
        d["a"]
    assert isinstance(info.value, TimeoutError) and time.monotonic() - started < DEATH
    errors: list[BaseException] = []

    def thread_call() -> None:
        try:
            d["a"]
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=thread_call)
    t.start()
    t.join(DEATH)
    assert not t.is_alive() and isinstance(errors[0], reflectmgr.ManagerTimeoutError)
    started = time.monotonic()
    m.shutdown()  # SHUTDOWN times out, SIGTERM stays pending on a stopped process, SIGKILL ends it
    assert time.monotonic() - started < DEATH
    assert gone(pid)


def test_shutdown_without_a_call_timeout_is_bounded_too() -> None:
    m = reflectmgr.Manager(shutdown_timeout=1.0)  # calls may wait for ever; shutdown may not
    m.start()
    assert m.pid is not None
    pid = m.pid
    m.dict(a=1)
    _stop(pid)
    started = time.monotonic()
    m.shutdown()
    assert time.monotonic() - started < DEATH
    assert gone(pid)


def test_a_shutdown_interrupted_by_ctrl_c_is_finished_by_the_next() -> None:
    # The finalizer behind shutdown() was spent once called, even when Ctrl-C interrupted it:
    # the next shutdown() did nothing, and the manager ran on until the program ended.
    m = reflectmgr.Manager(shutdown_timeout=1.0)
    m.start()
    assert m.pid is not None
    pid, client = m.pid, m.client
    m.dict(a=1)
    _stop(pid)  # so that shutdown waits for its answer, and Ctrl-C lands in the middle of it
    try:
        interrupter = _interrupt_when(lambda: client.stopping)
        with pytest.raises(KeyboardInterrupt):
            m.shutdown()
        interrupter.join()
        m.shutdown()
        assert wait_until(lambda: gone(pid), DEATH, "the manager to be stopped by the second shutdown")
    finally:
        if not gone(pid):
            psutil.Process(pid).kill()


def test_shutdown_of_a_stopped_manager_never_called_waits_its_timeout_not_the_connect_timeout() -> None:
    # No channel was open yet: shutdown's SHUTDOWN call opens one, and its handshake waited the
    # 10 s connect timeout instead of the 0.5 s given (12 s in all, seen).
    m = reflectmgr.Manager(shutdown_timeout=0.5)
    m.start()
    assert m.pid is not None
    pid = m.pid
    _stop(pid)
    with pytest.raises(reflectmgr.ManagerTimeoutError, match=r"did not answer the handshake within 0\.5 s"):
        m.client.call_within(0.5, Op.SHUTDOWN, 0, b"")  # what shutdown() sends first
    m.shutdown()
    assert gone(pid)


def test_handshake_with_a_stopped_manager_says_it_did_not_answer(
    stoppable: reflectmgr.Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stoppable.pid is not None and stoppable.address is not None
    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 1.0)
    _stop(stoppable.pid)
    with pytest.raises(reflectmgr.ManagerTimeoutError, match=r"did not answer the handshake within 1.0 s"):
        reflectmgr.connect(stoppable.address, stoppable.authkey, transport="pipe")  # a new session


# -- 6. fork and locks --------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(socket, "send_fds"), reason="needs fork and shm")
def test_fork_while_another_thread_is_inside_a_shared_memory_fence() -> None:
    from reflectmgr._transport import shm

    with reflectmgr.Manager(transport="shm") as m:
        m.root  # noqa: B018 - connected; the proxy is dropped, so fork pins nothing
        gc.collect()
        holding, release = threading.Event(), threading.Event()

        def inside_a_fence() -> None:
            with shm._fence_lock:  # what a publish in another thread holds for a moment
                holding.set()
                release.wait(PROMPT)

        t = threading.Thread(target=inside_a_fence)
        t.start()
        assert holding.wait(PROMPT)
        threading.Timer(0.2, release.set).start()  # the other thread leaves its fence a bit later
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = 0 if m.client.call(Op.PING, 0) is None else 2  # the child's first shm send
            finally:
                os._exit(code)
        t.join(PROMPT)
        statuses: list[int] = []
        waiter = threading.Thread(target=lambda: statuses.append(os.waitpid(pid, 0)[1]))
        waiter.start()
        waiter.join(CHILD)
        if waiter.is_alive():
            os.kill(pid, signal.SIGKILL)  # reaped by the waiter
            waiter.join(PROMPT)
            pytest.fail("the forked child hung on its first shared-memory send")
        assert os.waitstatus_to_exitcode(statuses[0]) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_leaving_an_in_process_manager_leaves_the_parents_listener() -> None:
    with reflectmgr.Manager(in_process=True) as m:
        d = m.dict(a=1)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                m.shutdown()  # what leaving the inherited `with` block does in the child
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        other = second_session(m)  # a new connection over the listener: still accepted
        assert other.root is not None and d["a"] == 1
        other.close()


@pytest.mark.interpreters
def test_interpreter_pool_never_shut_down_does_not_hang_exit(tmp_path: Path) -> None:
    script = tmp_path / "pool_left_open.py"
    script.write_text(
        textwrap.dedent(
            """
            import reflectmgr

            def bump(d):
                d["n"] = d.get("n", 0) + 1
                return d["n"]

            if __name__ == "__main__":
                m = reflectmgr.Manager(in_process=True)
                m.start()
                d = m.dict()
                ex = m.executor(2, kind="interpreter")
                print(ex.submit(bump, d).result())
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=CHILD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_closing_inherited_sockets_leaves_the_parents_connection_and_listener(
    tmp_path: Path,
) -> None:
    from reflectmgr._transport.sockets import Listener
    from reflectmgr._transport.stream import StreamTransport

    a, b = socket.socketpair()
    mine, peer = StreamTransport(a), StreamTransport(b)
    listener = Listener("pipe", None)
    assert isinstance(listener.address, str)
    pid = os.fork()
    if pid == 0:  # what a Pool worker of the manager, or __del__ in any forked child, may do
        code = 1
        try:
            mine.close()
            listener.wake()
            listener.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    try:
        peer.send(0, b"still there")
        assert mine.recv(64) == (0, b"still there")  # the parent's connection was not shut down
        assert os.path.exists(listener.address)  # nor its listener unlinked
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(listener.address)  # and it still accepts
        listener.accept().close()
        client.close()
    finally:
        mine.close()
        peer.close()
        listener.close()


def test_a_pool_in_the_manager_terminated_leaves_the_manager_serving(m: reflectmgr.Manager) -> None:
    d = m.dict(a=1)
    for _ in range(3):
        pool = m.Pool(2)
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]
        pool.terminate()  # SIGTERM to workers forked from the manager, holding copies of its sockets
        pool.join()
        assert d["a"] == 1  # this connection goes on
        other = second_session(m)  # and the listener accepts new ones
        assert other.dict(b=2)["b"] == 2
        other.close()
