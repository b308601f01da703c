"""The release flusher: releases of dead proxies ride on the next message to the manager; when
no message comes, this thread sends them on their own after RELEASE_INTERVAL.

    weakref callbacks --append--> cache.dead   (no lock, no I/O: see _proxy/cache.py)
    next call        --drains---> (REQUEST, releases, ...)
    or this thread   --every RELEASE_INTERVAL, if something is pending--> RELEASE on the anchor
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# Short enough that an idle client frees the manager's objects promptly, long enough to batch.
RELEASE_INTERVAL = 0.2


class ReleaseFlusher:
    """Calls ``send()`` every RELEASE_INTERVAL while ``pending()``, else ``idle()``; stops when
    ``send`` raises (the manager is gone or closed: nothing is left to release), when ``idle()``
    says the client closed itself, or on :meth:`stop`."""

    def __init__(self, pending: Callable[[], bool], send: Callable[[], None], idle: Callable[[], bool] = bool) -> None:
        self._pending = pending
        self._send = send
        self._idle = idle  # asked every interval; True: the client closed itself, so stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reflectmgr-release")
        # A daemon where allowed; isolated subinterpreters forbid daemon threads: there stop()
        # joins it, and it stops by itself when its interpreter shuts down (threading runs these
        # hooks before it joins its threads), or an interpreter never closed would hang exit.
        try:
            self._thread.daemon = True
            self._thread.start()
        except RuntimeError:
            self._thread = threading.Thread(target=self._loop, name="reflectmgr-release")
            self._thread.start()
            threading._register_atexit(self._stop.set)  # type: ignore[attr-defined]

    def _loop(self) -> None:
        while not self._stop.wait(RELEASE_INTERVAL):
            if self._pending():
                try:
                    self._send()
                except Exception:
                    return
            elif self._idle():
                return

    def stop(self) -> None:
        """Stop the thread; joins it when it is not a daemon (and not the caller)."""
        self._stop.set()
        thread = self._thread
        if not thread.daemon and thread is not threading.current_thread():
            thread.join()
