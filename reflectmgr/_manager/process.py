"""What runs in the manager process: listen, report the address, serve, watch the parent.
(``serve_in_process`` runs the same server in threads of the calling process instead.)

parent: Manager.start() --launch.py--> boot(fd) --> serve(...)   (or a multiprocess context's Process)
                                     bind listener, send ("ok", address) on the pipe
                                     watchdog thread: parent gone? -> stop, kill children, exit
                                     Server.serve_forever() until SHUTDOWN or watchdog
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from typing import Any

from .._fdwait import readable
from .._owner.restricted import Restriction
from .._owner.server import Server
from .._proxy.calls import CallingChannel
from .._transport.inproc import InprocListener
from .._transport.sockets import DEFAULT_TRANSPORT, Listener
from .._wire.framing import MAX_FRAME
from ..tls import made_here
from . import registry
from .callbacks import CallbackLink
from .stats import collect

# How often the manager checks that its owner process is alive where it cannot wait for its exit
# (no pidfd: not Linux 5.3+); a pipe would wake at once, but forked children of the owner inherit
# its write end.
WATCHDOG_INTERVAL = 0.5
# After the last thread of the manager is asked to stop: grace for its children before SIGKILL.
CHILD_GRACE = 2.0


def boot(fd: int) -> None:
    """The manager process that launch.py started, or the template forked: ``fd`` is its
    connection to the parent, which sends the parent's default authkey, argv, place (sys.path,
    working directory, environment) and :func:`serve`'s arguments, and gets the report."""
    import multiprocessing
    import tempfile
    from multiprocessing.connection import Connection

    report = Connection(fd)
    try:
        authkey, argv, (path, cwd, environ), arguments = pickle.loads(report.recv_bytes())
    except EOFError:
        return  # the parent died before it sent them: nobody to serve

    # As in a spawned child: the parent's argv for code run here (an initializer), and its
    # authkey for what this process starts and the proxies pickled here. The place matters to a
    # manager forked from the template, which started earlier (for a launched one it is the same).
    sys.argv[:] = argv
    sys.path[:] = path
    try:
        os.chdir(cwd)
    except OSError:
        pass  # removed since: a launched child would sit in it still; this one stays where it is
    if environ != os.environ:
        os.environ.clear()
        os.environ.update(environ)
    tempfile.tempdir = None  # TMPDIR as it is now
    multiprocessing.current_process().authkey = authkey
    serve(report=report, **arguments)


def preload() -> None:
    """Import and build what :func:`serve` would on its way (in the template, once for all the
    managers it forks)."""
    import psutil  # noqa: F401

    from .._wire import memo_guard

    if memo_guard.needed():
        memo_guard._table()  # the opcode walk's regular expression: 7 ms at a manager's first request


def serve(
    transport: str,
    address: Any,
    authkey: bytes,
    owner_pid: int,
    report: Any,
    setup: bytes | None = None,
    max_frame: int = MAX_FRAME,
    ssl_context: Any = None,
    restricted: bytes | None = None,
) -> None:
    """The manager process. ``setup``: cloudpickled ``(registry, initializer, initargs)``;
    ``restricted``: cloudpickled ``(allowed, allow_callbacks, owner secret)`` of a restricted manager.
    Reports the addresses it listens on: the one asked for, and with TLS a private unix socket
    too, for the processes of this host (the owner among them) that need no TLS."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the user's program, not for us
    listeners: list[Any] = []
    try:
        typeids, initializer, initargs = pickle.loads(setup) if setup else ({}, None, ())
        if initializer is not None:
            initializer(*initargs)
        context = made_here(ssl_context)
        restriction = Restriction(*pickle.loads(restricted)) if restricted else None
        listeners.append(Listener(transport, address, context))
        if context is not None:
            listeners.append(Listener(DEFAULT_TRANSPORT, None))
    except Exception as exc:
        for listener in listeners:
            listener.close()
        report.send(("error", f"{type(exc).__name__}: {exc}"))
        report.close()
        return
    server = make_server(listeners, authkey, max_frame, restriction)
    server.registry.update(typeids)
    for listener in listeners:
        registry.local_tables[registry.key(listener.address)] = server.table
    threading.Thread(target=_watch, args=(server, owner_pid), name="reflectmgr-watchdog", daemon=True).start()
    report.send(("ok", [listener.address for listener in listeners]))
    report.close()
    try:
        server.serve_forever()
    finally:
        _kill_children()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # connection threads may sit in recv(); nothing of theirs needs finishing


def make_server(
    listeners: list[Any], authkey: bytes, max_frame: int = MAX_FRAME, restriction: Restriction | None = None
) -> Server:
    return Server(
        listeners,
        authkey,
        make_importer=CallbackLink,
        stats=collect,
        max_frame=max_frame,
        channel_class=CallingChannel,  # callbacks: a byref proxy calls back through the serving channel
        restriction=restriction,
    )


def serve_in_process(
    transport: str,
    address: Any,
    authkey: bytes,
    max_frame: int = MAX_FRAME,
    ssl_context: Any = None,
    restricted: bytes | None = None,
) -> tuple[Server, str, threading.Thread]:
    """The owner in this very process (main interpreter): sockets for other processes, pipes for
    this process's interpreters. Returns the server, its in-process address and its thread."""
    inproc = InprocListener()
    try:
        listener = Listener(transport, address, made_here(ssl_context))
    except BaseException:
        inproc.close()
        raise
    restriction = Restriction(*pickle.loads(restricted)) if restricted else None
    server = make_server([listener, inproc], authkey, max_frame, restriction)
    thread = threading.Thread(target=server.serve_forever, name="reflectmgr-owner", daemon=True)
    thread.start()
    return server, inproc.address, thread


def _watch(server: Server, owner_pid: int) -> None:
    import psutil  # here, after the address is reported: 15 ms off every manager's start

    def gone() -> bool:
        try:
            return not owner.is_running() or owner.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    try:
        owner = psutil.Process(owner_pid)
    except psutil.NoSuchProcess:
        server.stop()
        return
    pidfd = _open_pidfd(owner_pid)
    if pidfd is not None:
        # Readable once the owner exits: no wake-up before. Opened after psutil's look, so the
        # look below (which compares start times) also says the pidfd is the owner's, not a
        # process that took its pid meanwhile. The thread is a daemon: it dies with the manager.
        try:
            if not gone():
                readable(pidfd, None)
        finally:
            os.close(pidfd)
        server.stop()
        return
    while not server.wait_stopped(WATCHDOG_INTERVAL):
        if gone():
            server.stop()
            return


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _kill_children() -> None:
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=CHILD_GRACE)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
