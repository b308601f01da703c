"""The calling half of a channel: what a proxy's operation becomes on the wire.

    proxy op --> Client.call(op, oid, *args) --> CallingChannel.call(op, oid, args)
                   atoms only, no releases: dumps_plain (C) or pickle.dumps, send (the common small call)
                   else: encode with the peer as encoding context (proxies going home, byref
                         objects counted for the peer), size checked, releases pickled in front
                 wait(): OK -> value; REF -> this side's proxy (cache); ERR -> the exception
                         (also a RemoteError, errors.as_remote) with the remote traceback as
                         __cause__ where it has frames of the object's code; a REQUEST from
                         the peer (a callback) is served in between, on this same thread

Anything that fails before the send (pickling, the size limit) undoes what encoding did: the
releases taken go back to the queue and the byref objects counted for the peer are uncounted, so
the channel stays as it was.
"""

from __future__ import annotations

import pickle
from typing import Any

from .._owner.channel import Channel, UndecodableError
from .._wire.codec import (
    OOB_MIN,
    PROTOCOL,
    SCALARS,
    dumps_plain,
    encode_request,
    swap_encoding,
    with_releases,
)
from .._wire.exceptions import rebuild
from .._wire.opcodes import Msg
from ..errors import ReflectmgrError, RemoteError, RemoteTraceback, as_remote

_REQUEST, _OK, _ERR, _REF = int(Msg.REQUEST), int(Msg.OK), int(Msg.ERR), int(Msg.REF)


def _atoms(x: Any) -> bool:
    """True for atoms, and short tuples of atoms or dicts of them by str keys (a method call's
    arguments and keyword arguments), except buffers large enough to go out of band."""
    t = type(x)
    if t in SCALARS:
        return True
    if t is bytes:
        return len(x) < OOB_MIN
    if t is tuple and len(x) <= 4:
        for item in x:
            if type(item) not in SCALARS and (type(item) is not bytes or len(item) >= OOB_MIN):
                return False
        return True
    if t is dict and len(x) <= 4:
        for key, item in x.items():
            if type(key) is not str or (
                type(item) not in SCALARS and (type(item) is not bytes or len(item) >= OOB_MIN)
            ):
                return False
        return True
    return False


class CallingChannel(Channel):
    """A channel that also sends requests of its own (a client's; a manager's, for callbacks)."""

    def call(self, op: int, oid: int, args: tuple[Any, ...]) -> Any:
        """Send operation ``op`` on object ``oid`` with ``args`` (the op's record, see
        _wire/opcodes.py) and return its result; raises what the peer raised, or a transport error.
        ``args`` is one tuple, passed through from the caller's ``*args`` without repacking."""
        peer = self.peer
        releases = peer.take_releases()
        if not releases:
            # Nothing here can reference an object (the common small call): no encoding context.
            payload = dumps_plain((_REQUEST, (), int(op), oid, args), OOB_MIN)  # None: not plain
            if payload is None:
                for x in args:
                    if type(x) not in SCALARS and not _atoms(x):
                        break
                else:
                    payload = pickle.dumps((_REQUEST, (), int(op), oid, args), PROTOCOL)
            if payload is not None:
                self.busy = True
                self.transport.send(0, payload)
                return self.wait()
        buffers: list[Any] = []
        exported: list[int] = []  # byref() objects counted for the peer while pickling
        try:
            flags, payload = self._encode_request(int(op), oid, args, buffers, exported)
        except BaseException:
            if releases:
                peer.return_releases(releases)
            if exported:
                peer.table.release(peer.account, [(x, 1) for x in exported])
            raise
        if releases:
            # Outside the pickle: applied by the peer even if the rest fails to unpickle there.
            flags, payload = with_releases(flags, payload, releases)
        self.busy = True
        self.transport.send(flags, payload, buffers)
        return self.wait()

    def _encode_request(
        self, op: int, oid: int, args: tuple[Any, ...], buffers: list[Any], exported: list[int]
    ) -> tuple[int, bytes]:
        prev = swap_encoding(self.peer.home)
        try:
            # op as a plain int: an IntEnum member would push the message off pickle's fast path
            flags, payload = encode_request((_REQUEST, (), op, oid, args), args, buffers, exported)
        finally:
            swap_encoding(prev)
        if buffers or len(payload) > OOB_MIN:
            self._check_size(payload, buffers)
        return flags, payload

    def wait(self) -> Any:
        """Receive until our reply arrives, serving the peer's requests in between."""
        while True:
            try:
                msg = self._receive()
            except UndecodableError as exc:
                self.busy = False  # the frame was read whole: the channel is still in step
                raise ReflectmgrError(f"could not unpickle the reply: {exc.error!r}") from exc.error
            kind = msg[0]
            if msg[1]:
                self.peer.apply_releases(msg[1])
            if kind == _OK:
                self.busy = False
                return msg[2]
            if kind == _REF:
                self.busy = False
                return self.peer.load_ref(msg[2])
            if kind == _ERR:
                self.busy = False
                # catchable as its own type and as RemoteError (errors.as_remote)
                error = rebuild(msg[2], remote=True) if type(msg[2]) is tuple else as_remote(msg[2])
                if msg[3] is not None or not isinstance(error, RemoteError):
                    # the manager's traceback (None: only the request's way to a built-in
                    # operation, _wire/tracebacks.py); a cause in any case for what is not a
                    # RemoteError, which is how the client tells the object's answer from a failure
                    error.__cause__ = RemoteTraceback(msg[3])
                try:
                    raise error
                finally:
                    del error  # no cycle through this frame: the error must not wait for the GC
            self._serve(msg)
