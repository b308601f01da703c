"""A channel: one transport, and the serving half of the loop both sides speak.

    caller thread (_proxy/calls.py)     transport                        serving thread
    call(op) --encode--> REQUEST ---------------------------------> serve_forever()
        wait() <------------------ REQUEST (callback) <---------- handler calls a byref proxy
        _serve() ---------------> OK/ERR ----------------------->     (nested wait)
        wait() <------------------ OK/ERR <---------------------- reply(result)

This module is the owner's half: decode a request, dispatch it, apply the value-or-reference
rule to the result, reply. The calling half (encode a request, wait for its reply while serving
the peer's requests in between) is the proxy layer's (``CallingChannel``); a server that must
call back into its clients is given that class (see Server's ``channel_class``).
One thread uses a channel at a time (the client checks channels out of a pool; the manager
runs one thread per channel), so send and receive need no lock here.
"""

from __future__ import annotations

import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .._transport.base import Transport
from .._wire.codec import (
    OOB_MIN,
    PROTOCOL,
    SCALARS,
    codec_context,
    decode,
    dumps_plain,
    encode,
    loads_plain,
    plain,
    split_releases,
    swap_encoding,
)
from .._wire.exceptions import compact, without_init
from .._wire.memo_guard import check as check_memo
from .._wire.opcodes import FLAG_OOB, FLAG_REFS, FLAG_RELEASES, Msg
from .._wire.tracebacks import capture, render
from ..errors import ProtocolError, ReflectmgrError, RemoteError
from .dispatch import HANDLERS, NO_CALL, Handler, HandlerContext
from .export import LOCAL_BASE, Describer, Ref, Value, plan
from .inline import WouldBlock
from .restricted import Restriction

_getrefcount = sys.getrefcount
_loads = pickle.loads
_REQUEST, _OK, _ERR, _REF = int(Msg.REQUEST), int(Msg.OK), int(Msg.ERR), int(Msg.REF)
_KINDS = (_REQUEST, _OK, _ERR, _REF)  # a tuple: a malformed kind may be unhashable
_tls = threading.local()


def _guarded_loads(payload: Any) -> Any:
    check_memo(payload)
    return _loads(payload)


def serving() -> Channel | None:
    """The channel whose request this thread is handling (a callback goes back through it)."""
    return getattr(_tls, "channel", None)


# Unpickling errors that mean "this is not a pickle": the peer is out of step or hostile, and the
# connection is dropped. Any other error comes from the content (a __setstate__ or __reduce__ that
# raises, a class this side lacks): the frame was read whole, so the sender gets the error as its
# reply and the connection keeps serving.
_GARBAGE_ERRORS = (pickle.UnpicklingError, EOFError)


class ChannelSide(HandlerContext, Protocol):
    """What a channel needs from its side: the object table, references, releases."""

    @property
    def describer(self) -> Describer: ...

    # What proxies to the peer's objects have as ``_rm_link``: such a proxy in a message to that
    # peer travels as "your own object" (see Proxy.__reduce_ex__).
    @property
    def home(self) -> Any: ...

    def resolve(self, oid: int) -> Any: ...

    def load_ref(self, pid: Any) -> Any: ...

    def take_releases(self) -> tuple[tuple[int, int], ...]: ...

    def apply_releases(self, releases: tuple[tuple[int, int], ...]) -> None: ...

    def return_releases(self, releases: tuple[tuple[int, int], ...]) -> None: ...


class Channel:
    """Serves the peer's requests on one transport (and decodes whatever arrives on it)."""

    # A restricted manager's allow-lists (restricted.py), set on its channels; None: trusted peers.
    restriction: Restriction | None = None
    # Set on a manager's channels: what arrives is checked against the C unpickler's memo
    # allocation (memo_guard.py). A client trusts its manager, as it trusts its callbacks.
    guarded = False

    def __init__(self, transport: Transport, peer: ChannelSide) -> None:
        self.transport = transport
        self.peer = peer
        self.sent_types: set[int] = set()
        # True from sending a request until its whole reply is read: a channel left busy by an
        # interruption is out of step with its peer and must not be reused.
        self.busy = False
        self.served = 0  # requests answered (stats: calls/s)

    def _receive(self) -> Any:
        flags, payload = self.transport.recv()
        # The common small message: plain values only, read by the C reader (None: not plain),
        # which needs no decoding context (a plain pickle names no object and no class).
        msg = loads_plain(payload) if not flags and self.restriction is None else None
        if msg is None:
            # swap_decoding, inline (this runs for every message that is not plain)
            prev = getattr(codec_context, "table", None)
            codec_context.table = self.peer
            try:
                msg = self._decode(flags, payload)
            finally:
                codec_context.table = prev
        if type(msg) is not tuple or len(msg) < 3 or msg[0] not in _KINDS:
            raise ProtocolError("malformed message from the peer")
        return msg

    def _decode(self, flags: int, payload: bytes | bytearray, held: list[tuple[int, int]] | None = None) -> Any:
        """Unpickle a frame just read, with its out-of-band buffers. Raises UndecodableError
        when the content names something this side cannot load (the frame was whole: the channel
        is still in step) and ProtocolError when it is garbage. Releases pickled apart are
        applied whatever happens to the rest, or added to ``held`` for the caller to apply."""
        buffers = self.transport.recv_buffers() if flags & FLAG_OOB else None
        releases: tuple[tuple[int, int], ...] = ()
        try:
            if self.restriction is not None:
                return self._decode_restricted(self.restriction, flags, payload, buffers, held)
            if not flags:  # the callers tried loads_plain first
                if self.guarded:
                    check_memo(payload)
                return _loads(payload)
            if flags & FLAG_RELEASES:
                rest, releases = split_releases(payload, _guarded_loads if self.guarded else _loads)
                if self.guarded:
                    check_memo(rest)
                return decode(flags, rest, self.peer.load_ref, buffers)
            if self.guarded:
                check_memo(payload)
            return decode(flags, payload, self.peer.load_ref, buffers)
        except _GARBAGE_ERRORS as exc:
            raise ProtocolError(f"malformed message from the peer: {exc!r}") from exc
        except Exception as exc:
            raise UndecodableError(exc) from exc
        except BaseException as exc:  # SystemExit, KeyboardInterrupt raised by the content
            if isinstance(exc, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
                # Where signals land: the user's Ctrl-C, which happened to arrive while this
                # thread unpickled. It stays a KeyboardInterrupt (the caller drops the channel).
                raise
            error = ReflectmgrError(f"unpickling the message raised {exc!r}; it was not run")
            raise UndecodableError(error) from exc
        finally:
            if releases:  # whatever happened to the rest of the message
                if held is None:
                    self.peer.apply_releases(releases)
                else:
                    held.extend(releases)

    # -- serving side ------------------------------------------------------------------------
    def serve_forever(self, stopping: Callable[[], bool]) -> None:
        """Answer requests until ``stopping()``; for a thread that serves only this channel.
        Raises EOFError/OSError when the peer is gone."""
        self.serve_while(lambda: not stopping(), _never)

    def serve_while(self, more: Callable[[], bool], done: Callable[[tuple[Any, ...]], bool]) -> None:
        """Answer requests while ``more()`` (which may wait for the next one), until ``done`` says
        so after one; for the thread that holds this channel now (see dispatcher.py).

        The per-message context (this channel as the one being served, the peer's table for
        decoding) is installed once for the loop: this is the manager's hot path."""
        prev, prev_table = getattr(_tls, "channel", None), getattr(codec_context, "table", None)
        _tls.channel = self
        codec_context.table = peer = self.peer
        recv = self.transport.recv
        try:
            while more():
                msg = self._request(*recv())
                if msg is None:
                    continue
                _, releases, op, oid, args = msg
                if releases:
                    peer.apply_releases(releases)
                self._dispatch(op, oid, args)
                stop = done(msg)
                # Served: nothing of the request may outlive it here while the next one is awaited
                # (a caller's argument, a byref proxy, would live until this connection's next
                # request, though released everywhere else).
                msg = args = None
                if stop:
                    return
        finally:
            _tls.channel = prev
            codec_context.table = prev_table

    def _decode_restricted(
        self,
        restriction: Restriction,
        flags: int,
        payload: bytes | bytearray,
        buffers: Any,
        held: list[tuple[int, int]] | None,
    ) -> Any:
        """:meth:`_decode` through the restricted unpickler, releases included."""
        load = self.peer.load_ref if flags & FLAG_REFS else None
        if flags & FLAG_RELEASES:
            rest, releases = split_releases(payload, restriction.loads)
            if held is None:
                self.peer.apply_releases(releases)
            else:
                held.extend(releases)
            return restriction.loads(rest, load, buffers)
        return restriction.loads(payload, load, buffers)

    def _request(
        self, flags: int, payload: bytes | bytearray, held: list[tuple[int, int]] | None = None
    ) -> tuple[Any, ...] | None:
        """The request in a frame just read; None if its content names something this side
        cannot load (the peer then gets the error as its reply)."""
        msg = loads_plain(payload) if not flags and self.restriction is None else None  # as _receive
        if msg is None:
            try:
                msg = self._decode(flags, payload, held)
            except UndecodableError as exc:
                self._send_error(exc.error)
                return None
        if type(msg) is not tuple or len(msg) != 5 or msg[0] != _REQUEST or type(msg[4]) is not tuple:
            raise ProtocolError("malformed request")  # (REQUEST, releases, op, oid, args): _wire/opcodes.py
        return msg

    def _serve(self, msg: tuple[Any, ...]) -> None:
        """Serve one request that arrived while this thread waits for its own reply."""
        _check_request(msg)
        _, releases, op, oid, args = msg
        if releases:
            self.peer.apply_releases(releases)
        prev = getattr(_tls, "channel", None)
        _tls.channel = self
        try:
            self._dispatch(op, oid, args)
        finally:
            _tls.channel = prev

    def _dispatch(self, op: Any, oid: Any, args: tuple[Any, ...], handle: Handler | None = None) -> bool:
        """Run the request and send the reply. With ``handle`` (a trial of the dispatcher's, see
        inline.py) returns False, having done nothing, if the call would block."""
        if handle is None:
            handle = HANDLERS.get(op) if type(op) is int else None
            if handle is None:
                self._send_error(ProtocolError(f"unknown operation {op!r}"))
                return True
        self.served += 1
        try:
            if self.restriction is not None:
                self.restriction.check(op, args)
            result = handle(self.peer, oid, *args)
            shared = _getrefcount(result) > LOCAL_BASE  # before anything else takes a reference
        except WouldBlock:
            return False
        except BaseException as exc:
            self._send_error(exc)
            return True
        self.reply(result, shared)
        return True

    # -- serving one request at a time (the dispatcher and the connection's thread take turns) --
    def take_request(self, flags: int, payload: bytes | bytearray) -> tuple[tuple[tuple[int, int], ...], Any]:
        """The releases and the call ``(op, oid, args)`` in a frame just read, nothing applied
        yet (:meth:`run` does that); the call is None if the content could not be loaded (the
        peer has the error as its reply; the releases still count)."""
        prev = getattr(codec_context, "table", None)
        codec_context.table = self.peer
        held: list[tuple[int, int]] = []
        try:
            msg = self._request(flags, payload, held)
        finally:
            codec_context.table = prev
        if msg is None:
            return tuple(held), None
        return (tuple(held) + msg[1] if held else msg[1]), msg[2:]

    def run(
        self,
        releases: tuple[tuple[int, int], ...],
        op: Any,
        oid: Any,
        args: tuple[Any, ...],
        handle: Handler | None = None,
    ) -> bool:
        """Apply a request's releases (which may run ``__del__``, calling back through this
        channel), then serve it (see :meth:`_dispatch`); from any thread, one at a time."""
        prev, prev_table = getattr(_tls, "channel", None), getattr(codec_context, "table", None)
        _tls.channel = self
        codec_context.table = self.peer
        try:
            if releases:
                self.peer.apply_releases(releases)
            if op is NO_CALL:  # the releases were all there was (the call failed to load)
                return True
            return self._dispatch(op, oid, args, handle)
        finally:
            _tls.channel = prev
            codec_context.table = prev_table

    def reply(self, result: Any, shared: bool) -> None:
        if type(result) in SCALARS or (type(result) is bytes and len(result) < OOB_MIN):  # the common case
            msg = (_OK, self.peer.take_releases(), result)
            self.transport.send(0, dumps_plain(msg, OOB_MIN) or pickle.dumps(msg, PROTOCOL))
            return
        prev = swap_encoding(self.peer.home)
        buffers: list[Any] = []
        exported: list[int] = []  # counted for the peer while encoding, before it can release them
        try:
            flags, payload, new_types = self._encode_result(result, shared, buffers, exported)
            if buffers or len(payload) > OOB_MIN:
                self._check_size(payload, buffers)
        except BaseException as exc:
            self._unexport(exported)
            self._send_error(exc)
            return
        finally:
            swap_encoding(prev)
        self.sent_types |= new_types
        self.transport.send(flags, payload, buffers)

    def _check_size(self, payload: bytes, buffers: list[Any]) -> None:
        """Refuse, before sending a byte, what the peer would refuse by dropping the connection."""
        limit = self.transport.max_frame
        sizes = [len(payload)] + [buf.raw().nbytes for buf in buffers]
        if max(sizes) > limit:
            raise ReflectmgrError(
                f"a message part of {max(sizes)} bytes exceeds this connection's limit of {limit} bytes; "
                "start the manager with a larger max_frame (Manager(max_frame=...)) or send it in pieces"
            )

    def _unexport(self, exported: list[int]) -> None:
        if exported:
            self.peer.table.release(self.peer.account, [(oid, 1) for oid in exported])
            exported.clear()

    def _encode_result(
        self, result: Any, shared: bool, buffers: list[Any], exported: list[int]
    ) -> tuple[int, bytes, set[int]]:
        refs = plan(result, shared)
        peer = self.peer
        if refs is None:
            if type(result) is Value:  # asked for by value (reflectmgr.value): no reference instead
                return (*self._encode_with_releases(result.target, None, buffers), set())
            try:
                return (*self._encode_with_releases(result, None, buffers), set())
            except pickle.PicklingError:
                buffers.clear()
                return self._encode_result(Ref(result), False, buffers, exported)  # unpicklable: by reference
        if len(refs) == 1 and id(result) in refs:  # one object by reference: no pickler subclass needed
            target = refs[id(result)]
            desc = peer.describer.describe(type(target))
            tid = desc[0]
            oid = peer.table.export(peer.account, target)
            exported.append(oid)
            payload = pickle.dumps((_REF, peer.take_releases(), (oid, tid if tid in self.sent_types else desc)), 5)
            return 0, payload, {tid}
        try:
            return self._encode_refs(result, refs, buffers, exported)
        except pickle.PicklingError:
            buffers.clear()
            self._unexport(exported)
            return self._encode_result(Ref(result), False, buffers, exported)  # unpicklable inside: by reference

    def _encode_refs(
        self, result: Any, refs: dict[int, Any], buffers: list[Any], exported: list[int]
    ) -> tuple[int, bytes, set[int]]:
        """Pickle ``result`` with the objects in ``refs`` replaced by references.

        Each reference carries its type description the first time this connection sends that type,
        then only the type's id.
        """
        new_types: set[int] = set()
        sent_types = self.sent_types
        peer = self.peer
        describe, export, account = peer.describer.describe, peer.table.export, peer.account

        def persistent_id(obj: Any) -> Any:
            target = refs.get(id(obj))
            if target is None:
                return None
            desc = describe(type(target))
            tid = desc[0]
            oid = export(account, target)
            exported.append(oid)
            if tid in sent_types or tid in new_types:
                return (oid, tid)
            new_types.add(tid)
            return (oid, desc)

        return (*self._encode_with_releases(result, persistent_id, buffers), new_types)

    def _encode_with_releases(self, result: Any, persistent_id: Any, buffers: list[Any]) -> tuple[int, bytes]:
        """An OK reply with the releases due to the peer: every reply carries them, or a peer whose
        calls all return containers would never hear that we dropped its objects."""
        peer = self.peer
        releases = peer.take_releases()
        try:
            return encode((_OK, releases, result), persistent_id, buffers)
        except BaseException:
            if releases:
                peer.return_releases(releases)
            raise

    def _send_error(self, exc: BaseException) -> None:
        tb = capture(exc)  # formatted by the reader, if ever read; None: nothing to tell (_wire/tracebacks.py)
        releases = self.peer.take_releases()  # an error is a reply too: they ride on it
        named = compact(exc)
        if named is not None:  # KeyError, StopIteration...: by name and plain arguments, which load anywhere
            msg = (_ERR, releases, named, tb)
            self.transport.send(0, dumps_plain(msg, OOB_MIN) or pickle.dumps(msg, PROTOCOL))
            return
        prev = swap_encoding(self.peer.home)
        try:
            if type(exc).__module__ == "builtins" and plain(exc.args) and plain(exc.__dict__):
                flags, payload = 0, pickle.dumps((_ERR, releases, exc, tb), PROTOCOL)  # with attributes
            else:
                flags, payload = _loadable((_ERR, releases, exc, tb), exc)
        except Exception:
            text = f'\n"""\n{render(tb)}"""' if tb is not None else ""
            err = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text)
            flags, payload = encode((_ERR, releases, err, text))
        finally:
            swap_encoding(prev)
        self.transport.send(flags, payload)


def _loadable(msg: tuple[Any, ...], exc: BaseException) -> tuple[int, bytes]:
    """The error reply ``msg`` encoded, checked to load (one that pickles but does not load would
    break the reader): as it is, else with ``exc`` built again without its ``__init__``
    (``_wire/exceptions.py``); raises if neither loads."""
    try:
        flags, payload = encode(msg)
        pickle.loads(payload)
    except Exception:
        stand_in = without_init(exc)
        if stand_in is None:
            raise
        flags, payload = encode((*msg[:2], stand_in, *msg[3:]))
        pickle.loads(payload)
    return flags, payload


def _never(msg: tuple[Any, ...]) -> bool:
    return False


def _check_request(msg: Any) -> tuple[Any, ...]:
    """A request is (REQUEST, releases, op, oid, args) with args a tuple (see _wire/opcodes.py)."""
    if type(msg) is not tuple or len(msg) != 5 or msg[0] != _REQUEST or type(msg[4]) is not tuple:
        raise ProtocolError("malformed request")
    return msg


class UndecodableError(Exception):
    """A frame read whole whose content failed to unpickle (the channel is still in step)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error
