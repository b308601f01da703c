"""An executor's workers forked from the template (_manager/template.py), not spawned.

A worker starts as multiprocessing's spawn starts one, and sees what a spawned one sees: the same
preparation data (``sys.path``, ``sys.argv``, the working directory, the authkey, the main script
run again as ``__mp_main__``), the same pickled ``Process``, the owner's resource tracker, and the
owner's environment of now. Only the interpreter's start and the imports (reflectmgr, cloudpickle,
psutil, ``concurrent.futures``) are not paid again: the template has them, and forks.

    owner: WorkerPopen._launch --("fork", n, "worker") + stdout, stderr, child_r, child_w,
                                 the tracker's fd, the fds the Process pickled--> template
           then writes to the pipe: the environment (length-prefixed), the preparation data and
           the Process, as spawn does
    child: run_worker: environment, resource tracker, spawn._main(child_r, ...) as spawn_main;
           then what an interpreter's exit runs (threads joined, atexit), and the exit code

The owner's sentinel is the pipe whose write end only the child holds (spawn's own way), its exit
code comes from the template (which reaps it), and signals go through the template (never to a
reused pid). Where there is no template (it cannot start: not Linux; or it is gone), the worker
is spawned.
"""

from __future__ import annotations

import concurrent.futures.process  # noqa: F401 - what every worker runs (see worker below)
import io
import os
import pickle
import signal
import struct
from multiprocessing import context, popen_spawn_posix, reduction, spawn, util
from typing import Any

from ..errors import BrokenManagerError
from . import worker  # noqa: F401 - imported in the template with this module, once for every worker

# The file descriptors a worker received, in order: what an _InheritedFd names by its index.
_inherited: list[int] = []
_LENGTH = struct.Struct("<Q")


class _InheritedFd:
    """A file descriptor of the owner's, pickled by the Process (a queue's pipe), as the worker
    received it: by its place among the descriptors sent with the request."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return _inherited[self.index]


class _NotForkedError(Exception):
    """No worker was forked (the template is gone or could not fork): spawn it instead."""


class WorkerPopen(popen_spawn_posix.Popen):
    """multiprocessing's spawn Popen, started by the template: pid, sentinel, poll, wait,
    terminate, kill and close as ProcessPoolExecutor uses them."""

    DupFd = _InheritedFd  # type: ignore[assignment]
    _fds: list[int]  # popen_spawn_posix.Popen's: what the child is given

    def __init__(self, process_obj: Any, template: Any, timeout: float) -> None:
        self._template = template
        self._timeout = timeout
        self._child: Any = None
        super().__init__(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj: Any) -> None:
        from multiprocessing import resource_tracker

        tracker_fd = resource_tracker.getfd()
        environ = pickle.dumps(dict(os.environ))
        data = io.BytesIO()
        data.write(_LENGTH.pack(len(environ)))
        data.write(environ)
        context.set_spawning_popen(self)
        try:
            reduction.dump(spawn.get_preparation_data(process_obj._name), data)
            reduction.dump(process_obj, data)
        finally:
            context.set_spawning_popen(None)
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            try:
                fds = [child_r, child_w, tracker_fd, *self._fds]
                self._child = self._template.fork_entry(f"{__name__}:run_worker", fds, self._timeout)
            except OSError as exc:
                os.close(parent_r)
                os.close(parent_w)
                raise _NotForkedError from exc
            self.pid = self._child.pid
            self.sentinel = parent_r
            self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))  # type: ignore[attr-defined]
            with open(parent_w, "wb", closefd=False) as f:
                f.write(data.getbuffer())
        finally:
            os.close(child_r)
            os.close(child_w)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            child = self._child
            if not child.started_here():
                return None  # a forked child of the owner: not its worker (as waitpid would say)
            if flag != os.WNOHANG:
                child.join()
            try:
                self.returncode = child.exitcode
            except BrokenManagerError:
                self.returncode = 255  # its template was killed, and with it its exit status
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.returncode is None and self._child.started_here():
            self._child.send_signal(sig)


class WorkerProcess(context.SpawnProcess):
    """A spawn Process, forked from the template where there is one."""

    @staticmethod
    def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocessing's name
        from .._manager.launch import _lost, template_for_workers

        template = template_for_workers(_TEMPLATE_TIMEOUT)
        if template is not None:
            try:
                return WorkerPopen(process_obj, template, _TEMPLATE_TIMEOUT)
            except _NotForkedError:
                _lost(template)
        return popen_spawn_posix.Popen(process_obj)


class WorkerContext(context.SpawnContext):
    """The spawn context, whose processes are forked from the template (see above). Its start
    method is "spawn": what spawn allows and refuses, it allows and refuses."""

    Process = WorkerProcess


# How long the template may take to start, or to answer a fork.
_TEMPLATE_TIMEOUT = 30.0


def run_worker(fds: list[int]) -> int:
    """In the forked child (template.py): become the worker, as spawn_main would; its exit code."""
    import atexit
    import tempfile
    import threading
    from multiprocessing import resource_tracker

    child_r, _child_w, tracker_fd, *inherited = fds  # _child_w: held till exit (the sentinel)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the template ignores Ctrl-C
    environ = pickle.loads(_read(child_r, _LENGTH.unpack(_read(child_r, _LENGTH.size))[0]))
    os.environ.clear()
    os.environ.update(environ)
    tempfile.tempdir = None
    _inherited[:] = inherited
    resource_tracker._resource_tracker._fd = tracker_fd  # type: ignore[attr-defined]  # as spawn_main
    code = spawn._main(child_r, os.dup(child_r))
    # What the interpreter's exit would run in a spawned worker: its threads joined (an executor
    # of the task's own), then the atexit functions.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    return int(code)


def _read(fd: int, size: int) -> bytes:
    parts = []
    while size:
        part = os.read(fd, size)
        if not part:
            raise EOFError("the owner closed the pipe before the worker's data")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)
