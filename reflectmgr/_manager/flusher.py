"""The release flusher: releases of dead proxies ride on the next message to the manager; when
no message comes, this thread sends them on their own after RELEASE_INTERVAL.

    weakref callbacks --append--> cache.dead, ring the cache's bell if armed (see _proxy/cache.py)
    next call        --drains---> (REQUEST, releases, ...)
    or this thread   --rung, then RELEASE_INTERVAL later, if still pending--> RELEASE on the anchor

With nothing to release the thread sleeps on the bell with no bound: an idle client makes no
wake-up (but where the client asks for a look at its idleness: see ``look``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._proxy.cache import Bell

# Short enough that an idle client frees the manager's objects promptly, long enough to batch.
RELEASE_INTERVAL = 0.2


class ReleaseFlusher:
    """Sends ``send()`` RELEASE_INTERVAL after ``pending()`` became true (a call may carry them
    first); stops when ``send`` raises (the manager is gone or closed: nothing is left to
    release), when ``look()`` says the client closed itself, or on :meth:`stop`. ``look()`` is
    asked after every wake-up: True (closed: stop), or how long the thread may sleep before it
    asks again (None: until the bell rings)."""

    def __init__(
        self,
        pending: Callable[[], bool],
        send: Callable[[], None],
        bell: Bell,
        look: Callable[[], bool | float | None] = lambda: None,
    ) -> None:
        self._pending = pending
        self._send = send
        self._bell = bell
        self._look = look
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
            threading._register_atexit(self.stop)  # type: ignore[attr-defined]

    def _loop(self) -> None:
        bell, pending, stop = self._bell, self._pending, self._stop
        while not stop.is_set():
            look = self._look()
            if look is True:
                return
            bell.arm()  # then look at the queue: a death after this rings (see Bell)
            if not pending() and not stop.is_set():
                bell.wait(look or None)
                continue
            bell.armed = False
            if stop.wait(RELEASE_INTERVAL):
                return
            if pending():
                try:
                    self._send()
                except Exception:
                    return

    def stop(self) -> None:
        """Stop the thread; joins it when it is not a daemon (and not the caller)."""
        self._stop.set()
        self._bell.poke()
        thread = self._thread
        if not thread.daemon and thread is not threading.current_thread():
            thread.join()
