"""Starting the manager process: a fresh interpreter that runs reflectmgr's manager and nothing else.

    Manager.start() --subprocess: python -c BOOT fd sys.path...--> process.boot(fd)
          |  socketpair: (authkey, argv, place, serve's arguments) --> serve(..., report)
          |  <------------------------------------- ("ok", addresses) or ("error", why)

That is a process's first start. From its second on, the manager is forked from a template
(template.py): an interpreter started the same way, with the manager's code imported, that forks
one on request; the forked child then takes the same socketpair and the same path through
``process.boot``. A start then costs a fork and the handshake (about 10 ms) instead of an
interpreter's start and reflectmgr's import (about 200 ms).

What multiprocess's spawn would do, without its cost and its one trap:
- the child never runs the parent's main script. Spawn re-runs it as ``__mp_main__`` so that what
  it defines can be found by name; the manager needs nothing from it (what ``__main__`` defines
  reaches it by value, through cloudpickle). So a script without an ``if __name__ ==
  "__main__":`` guard starts a manager at its top level (under spawn, the manager ran that top
  level again, started a manager of its own, and died), a script read from stdin or run with
  ``-c`` needs nothing hidden, and what the script imports (NumPy, a model) is not imported again
  in the manager;
- the child imports neither multiprocess nor dill, and no resource tracker is started for it.

It gets the parent's ``sys.path`` (so modules the parent imports by name import there), its
``sys.argv``, interpreter flags, environment and working directory, and its default authkey (the
one the children of a multiprocessing child inherit). The arguments are cloudpickled: an
``ssl_context`` given as a function defined in ``__main__`` travels by value. A frozen program
(PyInstaller and the like) has no interpreter to run ``-c`` with: there the manager is spawned by
multiprocess, which knows how (``freeze_support``).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from ..errors import BrokenManagerError
from .registry import default_authkey
from .template import ForkedChild, StartedProcess, Template, environment_key

# SIGINT is ignored first: a Ctrl-C meant for the program must not kill the manager (with a
# traceback) while it imports. Then the parent's sys.path, then reflectmgr.
BOOT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.path[:] = sys.argv[2:]; "
    "from reflectmgr._manager.process import boot; boot(int(sys.argv[1]))"
)


def launch(arguments: dict[str, Any], timeout: float) -> tuple[ManagerProcess | ForkedChild, Connection]:
    """Start ``process.serve(report, **arguments)`` in a new interpreter, or fork it from this
    process's template (see template.py); returns its process and the end of the connection on
    which it reports (see :func:`process.boot`). ``timeout``: for the template's start and answer."""
    if not sys.executable:
        raise BrokenManagerError("this Python has no sys.executable to start the manager process with")
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "."  # removed: the manager stays in the template's (a launched one inherits the void)
    path = [entry for entry in sys.path if isinstance(entry, str)]
    payload = cloudpickle.dumps((default_authkey(), sys.argv, (path, cwd, dict(os.environ)), arguments))
    process: ManagerProcess | ForkedChild | None = None
    template = _template(timeout)
    if template is not None:
        ours, theirs = socket.socketpair()
        try:
            process = template.fork(theirs, timeout)
        except OSError:
            ours.close()  # a child forked all the same reads EOF and exits
            _lost(template)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
    if process is None:
        ours, theirs = socket.socketpair()
        try:
            command = [*_interpreter(), "-c", BOOT, str(theirs.fileno()), *path]
            process = ManagerProcess(subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
    connection = Connection(ours.detach())
    try:
        connection.send_bytes(payload)
    except OSError:
        pass  # it died already: the caller reads EOF and reports the exit code
    return process, connection


def _interpreter() -> list[str]:
    """This Python with this process's interpreter flags (-X, -W, -O...), as multiprocessing's spawn."""
    return [sys.executable, *subprocess._args_from_interpreter_flags()]  # type: ignore[attr-defined]


class _Templates:
    """This process's template: none before its second manager; one that could not start is not
    tried again. A template replaced while managers it forked run is retired: it goes on
    reporting their exits and signalling them until they are all gone."""

    def __init__(self) -> None:
        # Reentrant only to tell a re-entry: starting a template allocates, and a collection there
        # may run a finalizer that starts a manager on this thread (see _template()).
        self.lock = threading.RLock()
        self.starts = 0
        self.template: Template | None = None
        self.retired: list[Template] = []
        self.failed = False


_templates = _Templates()


def _template(timeout: float) -> Template | None:
    """The template to fork this start's manager from, or None: launch one directly. The first
    start of a process launches (a program with one manager gets no second process); the second
    starts the template. A new one replaces it when it died, or when the environment differs from
    the one it started with where imports see it (template.environment_key).

    None too for a start from a finalizer (a ``__del__`` run by a collection) while this thread
    holds the lock: the template may be half made, and waiting for the lock would wait for ever."""
    state = _templates
    if state.lock._is_owned():  # type: ignore[attr-defined]
        return None
    with state.lock:
        state.starts += 1
        if state.starts < 2:
            return None
        return _current(timeout)


def template_for_workers(timeout: float) -> Template | None:
    """The template to fork an executor's worker from (started now if there is none: a worker
    forked from it costs less than one spawned, from the first), or None: spawn it (as
    :func:`_template` when re-entered)."""
    if _templates.lock._is_owned():  # type: ignore[attr-defined]
        return None
    with _templates.lock:
        return _current(timeout)


def _current(timeout: float) -> Template | None:
    """The template of now, replaced or started as needed; None if one could not start (lock held)."""
    state = _templates
    if state.failed:
        return None
    for idle in [t for t in state.retired if t.dead or t.idle()]:
        state.retired.remove(idle)
        idle.close()
    old = state.template
    if old is not None and (old.dead or old.key != environment_key()):
        state.template = None
        if old.dead:
            old.close()
        else:
            state.retired.append(old)
    if state.template is None:
        try:
            state.template = Template(_interpreter(), timeout)
        except (OSError, BrokenManagerError):
            state.failed = True
    return state.template


def _lost(template: Template) -> None:
    """It died or stopped answering: launch this start's manager (spawn this worker), and replace
    it at the next."""
    with _templates.lock:
        if _templates.template is template:
            _templates.template = None
    template.close()


def close_template() -> None:
    """Let this process's templates go and wait for their exit (the managers they forked go on);
    the next start starts a new one. For a test suite that must see every process's end (coverage
    data)."""
    with _templates.lock:
        templates = [*_templates.retired, *([_templates.template] if _templates.template else [])]
        _templates.template, _templates.retired = None, []
    for template in templates:
        template.close()


def _forget_after_fork() -> None:
    """In a forked child: the parent's templates are not this process's (see Template.forget)."""
    global _templates
    for template in [*_templates.retired, *([_templates.template] if _templates.template else [])]:
        template.forget()
    _templates = _Templates()


def _let_go_at_exit() -> None:
    # Closing the sockets is enough: a template exits when it reads EOF (nobody waits for it).
    for template in [*_templates.retired, *([_templates.template] if _templates.template else [])]:
        template.forget()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_let_go_at_exit)


class ManagerProcess(StartedProcess):
    """The manager's process, with the part of ``multiprocess.Process``'s interface that
    ``Manager`` uses."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        super().__init__(popen.pid)
        self._popen = popen

    @property
    def exitcode(self) -> int | None:
        """None while it runs; its exit status, or minus the signal that ended it."""
        self._check_parent()
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self._check_parent()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()
