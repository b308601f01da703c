"""A channel: one transport, spoken by the same loop on both sides.

    caller thread                       transport                        serving thread
    call(op) --encode--> REQUEST ---------------------------------> serve_forever()
        wait() <------------------ REQUEST (callback) <---------- handler calls a byref proxy
        _serve() ---------------> OK/ERR ----------------------->     (nested wait)
        wait() <------------------ OK/ERR <---------------------- reply(result)

A caller waiting for its reply also serves requests that arrive on the same connection: that is
how the manager calls back into a client (``reflectmgr.byref``) while the client waits.
One thread uses a channel at a time (the client checks channels out of a pool; the manager
runs one thread per channel), so send and receive need no lock here.
"""

from __future__ import annotations

import pickle
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from .._transport.base import Transport
from .._wire.codec import (
    OOB_MIN,
    PROTOCOL,
    SCALARS,
    codec_context,
    decode,
    encode,
    encode_request,
    swap_encoding,
)
from .._wire.opcodes import FLAG_OOB, Msg
from ..errors import ProtocolError, ReflectmgrError, RemoteError, RemoteTraceback
from .dispatch import HANDLERS, Context
from .export import LOCAL_BASE, Describer, Ref, Value, plan

_getrefcount = sys.getrefcount
_loads = pickle.loads
_REQUEST, _OK, _ERR, _REF = int(Msg.REQUEST), int(Msg.OK), int(Msg.ERR), int(Msg.REF)
_tls = threading.local()


def serving() -> Channel | None:
    """The channel whose request this thread is handling (a callback goes back through it)."""
    return getattr(_tls, "channel", None)


# Unpickling errors that mean "this pickle names something we lack", not "this is garbage":
# the sender gets them back as an error reply and the connection keeps serving.
_USER_DECODE_ERRORS = (ImportError, AttributeError, ReflectmgrError, TypeError)


class Peer(Context, Protocol):
    """What a channel needs from its side: the object table, references, releases."""

    @property
    def describer(self) -> Describer: ...

    # What proxies to the peer's objects have as ``_rm_peer``: such a proxy in a message to that
    # peer travels as "your own object" (see Proxy.__reduce_ex__).
    @property
    def home(self) -> Any: ...

    def resolve(self, oid: int) -> Any: ...

    def load_ref(self, pid: Any) -> Any: ...

    def take_releases(self) -> tuple[tuple[int, int], ...]: ...

    def apply_releases(self, releases: tuple[tuple[int, int], ...]) -> None: ...

    def return_releases(self, releases: tuple[tuple[int, int], ...]) -> None: ...


def _atoms(x: Any) -> bool:
    """True for atoms and short tuples of atoms, except buffers large enough to go out of band."""
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
    return False


class Channel:
    def __init__(self, transport: Transport, peer: Peer) -> None:
        self.transport = transport
        self.peer = peer
        self.sent_types: set[int] = set()
        # True from sending a request until its whole reply is read: a channel left busy by an
        # interruption is out of step with its peer and must not be reused.
        self.busy = False

    # -- caller side -------------------------------------------------------------------------
    def call(self, op: int, oid: int, a: Any = None, b: Any = None, c: Any = None) -> Any:
        peer = self.peer
        releases = peer.take_releases()
        if not releases and _atoms(a) and _atoms(b) and type(c) in SCALARS:
            # Nothing here can reference an object (the common small call): no encoding context.
            self.busy = True
            self.transport.send(0, pickle.dumps((_REQUEST, (), int(op), oid, a, b, c), PROTOCOL))
            return self.wait()
        prev = swap_encoding(peer.home)
        buffers: list[Any] = []
        try:
            # int(op): an IntEnum member would push the message off pickle's fast path
            flags, payload = encode_request((_REQUEST, releases, int(op), oid, a, b, c), a, b, c, buffers)
        except BaseException:
            if releases:
                peer.return_releases(releases)
            raise
        finally:
            swap_encoding(prev)
        self.busy = True
        self.transport.send(flags, payload, buffers)
        return self.wait()

    def wait(self) -> Any:
        """Receive until our reply arrives, serving the peer's requests in between."""
        while True:
            try:
                msg = self._receive()
            except _UndecodableError as exc:
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
                error: BaseException = msg[2]
                error.__cause__ = RemoteTraceback(msg[3])
                raise error
            self._serve(msg)

    def _receive(self) -> Any:
        flags, payload = self.transport.recv()
        # swap_decoding, inline (this runs for every message)
        prev = getattr(codec_context, "table", None)
        codec_context.table = self.peer
        try:
            msg = self._decode(flags, payload)
        finally:
            codec_context.table = prev
        if type(msg) is not tuple or len(msg) < 3 or msg[0] not in (_REQUEST, _OK, _ERR, _REF):
            raise ProtocolError("malformed message from the peer")
        return msg

    def _decode(self, flags: int, payload: bytes | bytearray) -> Any:
        """Unpickle a frame just read, with its out-of-band buffers. Raises _UndecodableError
        when the content names something this side cannot load (the frame was whole: the channel
        is still in step) and ProtocolError when it is garbage."""
        buffers = self.transport.recv_buffers() if flags & FLAG_OOB else None
        try:
            return _loads(payload) if not flags else decode(flags, payload, self.peer.load_ref, buffers)
        except _USER_DECODE_ERRORS as exc:
            raise _UndecodableError(exc) from exc
        except Exception as exc:
            raise ProtocolError(f"malformed message from the peer: {exc!r}") from exc

    # -- serving side ------------------------------------------------------------------------
    def serve_forever(self, stopping: Callable[[], bool]) -> None:
        """Answer requests until ``stopping()``; for a thread that serves only this channel.

        The per-message context (this channel as the one being served, the peer's table for
        decoding) is installed once for the thread: this loop is the manager's hot path.
        Raises EOFError/OSError when the peer is gone.
        """
        _tls.channel = self
        codec_context.table = peer = self.peer
        recv = self.transport.recv
        while not stopping():
            msg = self._request(*recv())
            if msg is None:
                continue
            _, releases, op, oid, a, b, c = msg
            if releases:
                peer.apply_releases(releases)
            self._dispatch(op, oid, a, b, c)

    def _request(self, flags: int, payload: bytes | bytearray) -> tuple[Any, ...] | None:
        """The request in a frame just read; None if its content names something this side
        cannot load (the peer then gets the error as its reply)."""
        try:
            msg = self._decode(flags, payload)
        except _UndecodableError as exc:
            self._send_error(exc.error)
            return None
        if type(msg) is not tuple or len(msg) != 7 or msg[0] != _REQUEST:
            raise ProtocolError("malformed request")
        return msg

    def _serve(self, msg: tuple[Any, ...]) -> None:
        _, releases, op, oid, a, b, c = msg
        if releases:
            self.peer.apply_releases(releases)
        prev = getattr(_tls, "channel", None)
        _tls.channel = self
        try:
            self._dispatch(op, oid, a, b, c)
        finally:
            _tls.channel = prev

    def _dispatch(self, op: Any, oid: Any, a: Any, b: Any, c: Any) -> None:
        handle = HANDLERS.get(op) if type(op) is int else None
        if handle is None:
            self._send_error(ProtocolError(f"unknown operation {op!r}"))
            return
        try:
            result = handle(self.peer, oid, a, b, c)
            shared = _getrefcount(result) > LOCAL_BASE  # before anything else takes a reference
        except BaseException as exc:
            self._send_error(exc)
            return
        self.reply(result, shared)

    def reply(self, result: Any, shared: bool) -> None:
        if type(result) in SCALARS or (type(result) is bytes and len(result) < OOB_MIN):  # the common case
            self.transport.send(0, pickle.dumps((_OK, self.peer.take_releases(), result), PROTOCOL))
            return
        prev = swap_encoding(self.peer.home)
        buffers: list[Any] = []
        try:
            flags, payload, exported, new_types = self._encode_result(result, shared, buffers)
        except BaseException as exc:
            self._send_error(exc)
            return
        finally:
            swap_encoding(prev)
        if exported:
            self.peer.table.add(self.peer.holder, exported)  # counted before the peer can release
        self.sent_types |= new_types
        self.transport.send(flags, payload, buffers)

    def _encode_result(self, result: Any, shared: bool, buffers: list[Any]) -> tuple[int, bytes, list[Any], set[int]]:
        refs = plan(result, shared)
        if refs is None:
            value = result.target if type(result) is Value else result
            return (*encode((_OK, (), value), oob=buffers), [], set())
        if len(refs) == 1 and id(result) in refs:  # one object by reference: no pickler subclass needed
            target = refs[id(result)]
            desc = self.peer.describer.describe(type(target))
            tid = desc[0]
            pid = (id(target), tid if tid in self.sent_types else desc)
            payload = pickle.dumps((_REF, self.peer.take_releases(), pid), PROTOCOL)
            return 0, payload, [target], {tid}
        try:
            return self._encode_refs(result, refs, buffers)
        except pickle.PicklingError:
            buffers.clear()
            return self._encode_result(Ref(result), False, buffers)  # unpicklable inside: all by reference

    def _encode_refs(
        self, result: Any, refs: dict[int, Any], buffers: list[Any]
    ) -> tuple[int, bytes, list[Any], set[int]]:
        """Pickle ``result`` with the objects in ``refs`` replaced by references.

        Each reference carries its type description the first time this connection sends that type,
        then only the type's id.
        """
        exported: list[Any] = []
        new_types: set[int] = set()
        sent_types = self.sent_types
        describe = self.peer.describer.describe

        def persistent_id(obj: Any) -> Any:
            target = refs.get(id(obj))
            if target is None:
                return None
            desc = describe(type(target))
            tid = desc[0]
            exported.append(target)
            if tid in sent_types or tid in new_types:
                return (id(target), tid)
            new_types.add(tid)
            return (id(target), desc)

        flags, payload = encode((_OK, self.peer.take_releases(), result), persistent_id, buffers)
        return flags, payload, exported, new_types

    def _send_error(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        tb = f'\n"""\n{tb}"""'
        prev = swap_encoding(self.peer.home)
        try:
            flags, payload = encode((_ERR, (), exc, tb))
            pickle.loads(payload)  # an exception that pickles but does not load would break the reader
        except Exception:
            err = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)
            flags, payload = encode((_ERR, (), err, tb))
        finally:
            swap_encoding(prev)
        self.transport.send(flags, payload)


class _UndecodableError(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error
