"""The template: one interpreter per owner, with reflectmgr imported, that forks managers and
executor workers.

    owner (launch.py)                          template (python -c TEMPLATE_BOOT fd sys.path...)
      Template(): Popen, wait ("ready",)  <---  imports process.py and what serve() needs, once
      ("fork", n, entry) + stdout, stderr, -->  os.fork(): the child dup2s stdout/stderr and runs
        the entry's fds                         process.boot(report fd) as a launched manager does
                                                (entry "manager"), or "module:function"(fds) (an
                                                executor's worker: _pools/forked.py), the module
                                                imported in the template first, once
      ("forked", n, pid)                  <---  (pid None: the fork failed)
      ("signal", n, sig) -------------------->  os.kill, only while child n is not reaped
      ("exited", n, code)                 <---  SIGCHLD: waitpid, then reported

Children are known by the number of their request, never by pid: a pid is reused once reaped.
      close() or the owner's exit: EOF  ----->  the template exits (its managers watch the owner)

launch.py starts the first manager of a process directly (a fresh interpreter: a program with one
manager gets no second process), and the template at the second start: from then on a start costs
a fork and the handshake instead of an interpreter's start and reflectmgr's import.

The socket is SOCK_SEQPACKET: one message per send, file descriptors beside. The manager's
arguments do not pass through the template; the owner sends them on the report socket it hands
over, as it does to a launched manager. A template serves only the environment it was started
with, as far as imports can see it (``PYTHON*``, ``REFLECTMGR_*`` and ``LD_*`` variables: read
when an interpreter starts or a module is imported); the rest of the environment, the working
directory, ``sys.path`` and ``sys.argv`` travel with each start and are set in the child.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

from .._fdwait import readable
from ..errors import BrokenManagerError

# Read when an interpreter starts or a module is imported: a template started under other values
# would give its children what the environment no longer says.
IMPORT_TIME_VARIABLES = ("PYTHON", "REFLECTMGR_", "LD_")
TEMPLATE_BOOT = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.path[:] = sys.argv[2:]; "
    "from reflectmgr._manager.template import serve_template; serve_template(int(sys.argv[1]))"
)
MARKER = "reflectmgr._manager.template import serve_template"  # in its command line, for ps and tests
# Every message is a small pickle: a request, a reply or an exit.
MESSAGE_SIZE = 4096
# The most file descriptors a request carries (a worker's: its pipes, the resource tracker's, the
# ones its Process object pickles: the executor's queues).
MAX_FDS = 32


def environment_key() -> tuple[tuple[str, str], ...]:
    """What a template's children must share with the owner's environment of now."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(IMPORT_TIME_VARIABLES)))


class Template:
    """The owner's side. Thread-safe; a forked child of the owner must not use it (see
    launch.py, which forgets it at fork). Raises OSError or BrokenManagerError when the template
    cannot be started or does not answer; it is then ``dead``."""

    def __init__(self, command_prefix: list[str], timeout: float) -> None:
        self.key = environment_key()
        self._cond = threading.Condition()
        self._reading = False
        self._replies: dict[int, int | None] = {}  # request number -> pid (None: not forked)
        # Request number -> exit code, as Popen.returncode, while its ForkedChild lives (a pool
        # that replaces its workers for days must not keep one entry per worker it ever had).
        self._exits: dict[int, int] = {}
        self._known: set[int] = set()  # children forked whose ForkedChild lives
        self._running: set[int] = set()  # children forked and not reported exited
        self._next = 0
        self.dead = False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            command = [*command_prefix, "-c", TEMPLATE_BOOT, str(theirs.fileno())]
            command += [entry for entry in sys.path if isinstance(entry, str)]
            self._popen = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        self.pid = self._popen.pid
        if not self._wait_for(lambda: -1 in self._replies, timeout):
            self.close()
            raise BrokenManagerError(f"the template process did not start within {timeout} s")

    def fork(self, report: socket.socket, timeout: float) -> ForkedChild:
        """A manager forked from the template, which will run ``process.boot`` on ``report``.
        Raises OSError if the template is gone, could not fork, or does not answer in time."""
        return self._fork("manager", [report.fileno()], timeout)

    def fork_entry(self, entry: str, fds: list[int], timeout: float) -> ForkedChild:
        """A child forked from the template that runs ``entry`` ("module:function") with ``fds``
        and exits with what it returns (an executor's worker: _pools/forked.py). The template
        imports the module before it forks, once: every later child has it. Raises OSError as
        :meth:`fork` (also when the module does not import there)."""
        if len(fds) + 2 > MAX_FDS:
            raise OSError(f"{len(fds)} file descriptors are more than a request carries")
        return self._fork(entry, fds, timeout)

    def _fork(self, entry: str, fds: list[int], timeout: float) -> ForkedChild:
        with self._cond:
            if self.dead:
                raise OSError("the template process is gone")
            number = self._next
            self._next += 1
            streams = _standard_streams()
            try:
                socket.send_fds(self._sock, [pickle.dumps(("fork", number, entry))], [*streams, *fds])
            finally:
                for fd in streams:
                    os.close(fd)
        if not self._wait_for(lambda: number in self._replies, timeout):
            raise OSError(f"the template process did not fork within {timeout} s")
        with self._cond:
            pid = self._replies.pop(number)
        if pid is None:
            raise OSError("the template process could not fork")
        return ForkedChild(self, number, pid)

    def signal(self, number: int, signum: int) -> bool:
        """Send ``signum`` to child ``number``, never to a process that reused its pid: the
        template, its parent, sends it only while the child is not reaped. False if the template
        is gone (the caller signals it itself)."""
        with self._cond:
            if number in self._exits:
                return True
            if not self.dead:
                try:
                    self._sock.send(pickle.dumps(("signal", number, signum)))
                    return True
                except OSError:
                    self._lost()
            return False

    def exitcode(self, number: int) -> int | None:
        """Child ``number``'s exit code once the template reported it, else None (it runs, or the
        template is gone: see ``dead``)."""
        self._wait_for(lambda: number in self._exits, 0)
        with self._cond:
            return self._exits.get(number)

    def wait(self, number: int, timeout: float | None) -> bool:
        """Until child ``number``'s exit is reported (True), ``timeout`` seconds (None: no limit)
        or the template's loss."""
        return self._wait_for(lambda: number in self._exits, timeout)

    def idle(self) -> bool:
        """Whether every child it forked has exited, as far as it reported yet."""
        self._wait_for(lambda: False, 0)
        with self._cond:
            return not self._running

    def forget_child(self, number: int) -> None:
        """Its ForkedChild is gone: nobody will ask for child ``number``'s exit code."""
        with self._cond:
            self._known.discard(number)
            self._exits.pop(number, None)

    def close(self) -> None:
        """Let the template go (its managers go on), and reap it."""
        with self._cond:
            self.dead = True
            self._sock.close()
        try:
            self._popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()

    def forget(self) -> None:
        """In a forked child of the owner: drop the inherited socket, so that the template still
        sees its owner leave; the template and its children are the parent's."""
        self.dead = True
        self._sock.close()
        self._popen.returncode = 0  # not ours to wait for (no "still running" warning)

    def _wait_for(self, done: Any, timeout: float | None) -> bool:
        """Read messages until ``done()`` (called with the lock held), the timeout, or the template's
        loss. One thread reads at a time; the others wait for what it records."""
        deadline = None if timeout is None else time.monotonic() + timeout
        read = False  # at least once, even with a timeout of 0
        with self._cond:
            while not done():
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self.dead or (remaining == 0 and (read or self._reading)):
                    return False
                if self._reading:
                    self._cond.wait(remaining)
                    continue
                read = True
                self._reading = True
                self._cond.release()
                try:
                    messages, lost = _receive(self._sock, remaining)
                finally:
                    self._cond.acquire()
                    self._reading = False
                    self._cond.notify_all()
                for message in messages:
                    if message[0] == "ready":
                        self._replies[-1] = 0
                    elif message[0] == "forked":
                        self._replies[message[1]] = message[2]
                        if message[2] is not None:
                            self._known.add(message[1])
                            self._running.add(message[1])
                    elif message[0] == "exited":
                        self._running.discard(message[1])
                        if message[1] in self._known:
                            self._exits[message[1]] = message[2]
                if lost:
                    self._lost()
            return True

    def _lost(self) -> None:
        self.dead = True
        self._cond.notify_all()


def _receive(sock: socket.socket, timeout: float | None) -> tuple[list[tuple[Any, ...]], bool]:
    """What arrives within ``timeout`` (at least one message, unless none comes), and whether the
    template is gone."""
    messages: list[tuple[Any, ...]] = []
    wait = timeout
    while True:
        try:
            if not readable(sock.fileno(), wait):
                return messages, False
            data = sock.recv(MESSAGE_SIZE)
        except (OSError, ValueError):  # ValueError: closed meanwhile (close() from another thread)
            return messages, True
        if not data:
            return messages, True
        messages.append(pickle.loads(data))
        wait = 0


def _standard_streams() -> list[int]:
    """This process's stdout and stderr as they are now (a redirection since the template started
    counts), duplicated for sending; /dev/null for one that is closed."""
    fds = []
    for fd in (1, 2):
        try:
            fds.append(os.dup(fd))
        except OSError:
            fds.append(os.open(os.devnull, os.O_WRONLY))
    return fds


class StartedProcess:
    """A manager's process as ``Manager`` sees it: only the process that started it may wait for
    it or signal it (a forked child of that process inherits the object, not the process)."""

    def __init__(self, pid: int) -> None:
        self._parent = os.getpid()
        self.pid = pid

    def started_here(self) -> bool:
        """Whether this process started it (not a forked child of the one that did)."""
        return os.getpid() == self._parent

    def _check_parent(self) -> None:
        if not self.started_here():
            raise BrokenManagerError(f"only the process that started the manager (pid {self._parent}) can wait for it")


class ForkedChild(StartedProcess):
    """A manager or a worker forked by the template, with the interface of
    launch.ManagerProcess. Should the template be killed, a pidfd (Linux 5.3+) still tells the
    child's exit and signals it without a pid's reuse to fear; its exit code is then unknown
    (``exitcode`` raises BrokenManagerError once it is gone)."""

    def __init__(self, template: Template, number: int, pid: int) -> None:
        super().__init__(pid)
        self._template = template
        self._number = number
        weakref.finalize(self, template.forget_child, number)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux 5.3+, or gone already (then its exit is reported)
            pass
        else:
            weakref.finalize(self, os.close, self._pidfd)

    @property
    def exitcode(self) -> int | None:
        self._check_parent()
        code = self._template.exitcode(self._number)
        if code is None and self._template.dead and not self._running(0):
            raise BrokenManagerError(f"the template process is gone: process {self.pid}'s exit code is unknown")
        return code

    def is_alive(self) -> bool:
        self._check_parent()
        if self._template.exitcode(self._number) is not None:
            return False
        return not self._template.dead or self._running(0)

    def join(self, timeout: float | None = None) -> None:
        self._check_parent()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._template.wait(self._number, timeout) and self._template.dead:
            self._running(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def send_signal(self, signum: int) -> None:
        self._check_parent()
        if self._template.signal(self._number, signum):
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                os.kill(self.pid, signum)  # no pidfd here: a reused pid is the risk left
        except ProcessLookupError:
            pass

    def _running(self, timeout: float | None) -> bool:
        """Without its template: whether it still runs after waiting up to ``timeout`` for its end."""
        if self._pidfd is not None:
            return not readable(self._pidfd, timeout)
        import psutil

        try:
            psutil.Process(self.pid).wait(timeout)
        except psutil.TimeoutExpired:
            return True
        except psutil.Error:
            pass
        return False


# The template's side -----------------------------------------------------------------------------


def serve_template(fd: int) -> None:
    """The template process: fork a manager or another entry per request until the owner closes
    the socket."""
    import selectors

    from . import process  # what every manager runs, imported once for all of them

    process.preload()
    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the waking
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children: dict[int, int] = {}  # request number -> pid, until reaped
    sock.send(pickle.dumps(("ready",)))
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    _drain(wake_r)  # a SIGCHLD: reaped below
                    continue
                try:
                    data, fds, _, _ = socket.recv_fds(sock, MESSAGE_SIZE, MAX_FDS)
                except BlockingIOError:
                    continue
                if not data:
                    return  # the owner is gone, or let it go
                request = pickle.loads(data)
                if request[0] == "fork":
                    pid: int | None = None
                    run = _entry(request[2])
                    try:
                        if run is not None:
                            pid = os.fork()
                    except OSError:
                        pass  # EAGAIN, ENOMEM: the owner launches this one instead
                    if pid == 0:
                        assert run is not None
                        _become_child(run, fds, sock, [wake_r, wake_w], selector)
                    for received in fds:
                        os.close(received)
                    if pid is not None:
                        children[request[1]] = pid
                    sock.send(pickle.dumps(("forked", request[1], pid)))
                elif request[0] == "signal" and request[1] in children:
                    os.kill(children[request[1]], request[2])
            _reap(sock, children)
    except OSError:
        return  # the socket broke: the owner is gone


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _reap(sock: socket.socket, children: dict[int, int]) -> None:
    for number, pid in list(children.items()):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            del children[number]
            sock.send(pickle.dumps(("exited", number, os.waitstatus_to_exitcode(status))))


def _entry(entry: str) -> Any:
    """What a forked child runs with its fds: the manager's boot, or "module:function" imported
    here (before the fork: every later child has it); None if it does not import."""
    if entry == "manager":
        from .process import boot

        return lambda fds: boot(*fds)  # the report socket
    import importlib

    module, _, name = entry.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        import traceback

        traceback.print_exc()  # the owner is told "not forked", and starts it its own way
        return None


def _become_child(run: Any, fds: list[int], sock: socket.socket, wake: list[int], selector: Any) -> None:
    """In the forked child: shed the template, take the owner's stdout and stderr, and run the
    entry with the rest of the fds; it returns the exit code (None: 0)."""
    code = 0
    try:
        selector.close()
        sock.close()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in wake:
            os.close(fd)
        stdout, stderr, *rest = fds
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        code = run(rest) or 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
