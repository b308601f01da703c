"""Starting the manager process: a fresh interpreter that runs reflectmgr's manager and nothing else.

    Manager.start() --subprocess: python -c BOOT fd sys.path...--> process.boot(fd)
          |  socketpair: (authkey, serve's arguments) ----------------> serve(..., report)
          |  <------------------------------------- ("ok", addresses) or ("error", why)

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

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

from ..errors import BrokenManagerError
from .registry import default_authkey

# SIGINT is ignored first: a Ctrl-C meant for the program must not kill the manager (with a
# traceback) while it imports. Then the parent's sys.path, then reflectmgr.
BOOT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.path[:] = sys.argv[2:]; "
    "from reflectmgr._manager.process import boot; boot(int(sys.argv[1]))"
)


def launch(arguments: dict[str, Any]) -> tuple[ManagerProcess, Connection]:
    """Start ``process.serve(report, **arguments)`` in a new interpreter; returns its process and
    the end of the connection on which it reports (see :func:`process.boot`)."""
    if not sys.executable:
        raise BrokenManagerError("this Python has no sys.executable to start the manager process with")
    payload = cloudpickle.dumps((default_authkey(), sys.argv, arguments))
    ours, theirs = socket.socketpair()
    try:
        command = [
            sys.executable,
            *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]  # as multiprocessing's spawn
            "-c",
            BOOT,
            str(theirs.fileno()),
            *(entry for entry in sys.path if isinstance(entry, str)),
        ]
        popen = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    connection = Connection(ours.detach())
    process = ManagerProcess(popen)
    try:
        connection.send_bytes(payload)
    except OSError:
        pass  # it died already: the caller reads EOF and reports the exit code
    return process, connection


class ManagerProcess:
    """The manager's process, with the part of ``multiprocess.Process``'s interface that
    ``Manager`` uses. Only the process that started it may wait for it."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self._parent = os.getpid()
        self.pid = popen.pid

    def _check_parent(self) -> None:
        if os.getpid() != self._parent:
            raise BrokenManagerError(f"only the process that started the manager (pid {self._parent}) can wait for it")

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
