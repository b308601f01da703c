"""Every public exception of reflectmgr.

Vocabulary (after trio): *Closed* means you closed it; *Broken* means the other side died or the
link broke. Every error pickles, so it can cross a process boundary itself.
"""

from __future__ import annotations

import multiprocessing
import pickle


class ReflectmgrError(Exception):
    """Root of every error raised by reflectmgr itself (not by your objects)."""


class ManagerClosedError(ReflectmgrError):
    """The manager (or this client's connection to it) was shut down on purpose."""


class BrokenManagerError(ReflectmgrError):
    """The manager died or the link to it broke; the OS error, if any, is the ``__cause__``."""


class ManagerTimeoutError(ReflectmgrError, TimeoutError):
    """The manager did not answer within the timeout (``Manager(timeout=...)``, ``connect(timeout=...)``).

    The connection that waited is dropped (a late answer must not reach the next call); the call
    itself may still run in the manager.
    """


class AuthenticationError(ReflectmgrError, multiprocessing.AuthenticationError):
    """The HMAC challenge failed: the two sides do not share the same authkey."""


class ProtocolError(ReflectmgrError):
    """A peer sent bytes that are not a valid reflectmgr frame or message."""


class ReflectmgrPicklingError(ReflectmgrError, pickle.PicklingError):
    """A message could not be pickled; the text names the offending type and where it sat."""


class ReleasedError(ReflectmgrError):
    """The remote object behind a proxy no longer exists (it was released or its owner went away)."""


class RemoteError(ReflectmgrError):
    """A remote exception that could not be pickled: its type name, message and traceback as text."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(type_name, message, traceback_text)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class RemoteTraceback(Exception):  # noqa: N818 - named like concurrent.futures' _RemoteTraceback
    """Carries the traceback of the side that raised; attached as ``__cause__`` (like concurrent.futures)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


__all__ = [
    "AuthenticationError",
    "BrokenManagerError",
    "ManagerClosedError",
    "ManagerTimeoutError",
    "ProtocolError",
    "ReflectmgrError",
    "ReflectmgrPicklingError",
    "ReleasedError",
    "RemoteError",
    "RemoteTraceback",
]
