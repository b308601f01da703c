"""The only place where protocol numbers live.

A message is a tuple whose first item is a :class:`Msg` kind and whose second item is a tuple of
piggybacked releases ``((oid, count), ...)`` (a negative count acquires a borrowed reference);
the rest depends on the kind:

    (Msg.REQUEST, releases, op, oid, args)         operation ``op`` on object ``oid``; ``args`` is a
                                                   tuple, the record named in the table below
    (Msg.OK,      releases, value)                 the result (values and references, see codec)
    (Msg.REF,     releases, (oid, desc or tid))    the result is one object of the owner's, by reference
    (Msg.ERR,     releases, exception, traceback)  the exception (a built-in one as (name, args):
                                                   _wire/exceptions.py), and the remote traceback

Each operation's arguments are a named record: the comment after it here, and the parameters of
its handler in ``_owner/dispatch.py`` (``@handler(Op.SETATTR) def _setattr(ctx, oid, name, value)``),
which is called with ``*args``. Adding an operation is a line here and a handler there.
"""

from __future__ import annotations

from enum import IntEnum


class Msg(IntEnum):
    REQUEST = 0
    OK = 1
    ERR = 2
    REF = 3  # the result is one reference: (Msg.REF, releases, (oid, desc_or_tid)), plain pickle


class Op(IntEnum):
    # object protocol                 args (the handler's parameters after ctx, oid) -> result
    GETATTR = 1  # (name)
    SETATTR = 2  # (name, value)
    DELATTR = 3  # (name)
    CALL = 4  # (args, kwargs)
    CALLMETHOD = 5  # (name, args, kwargs)
    DUNDER = 6  # (index into DUNDERS, args)
    ITER = 7  # (reverse) -> iterator ref, or None for an object that is its own iterator
    NEXT_BATCH = 8  # (size) -> (exhausted, items)
    VALUE = 9  # () -> a deep copy, by value
    DIR = 10  # () -> sorted names
    COPY = 11  # () -> copy.copy(object): a fresh copy travels by value, shared objects in it by reference
    # owner services
    NEW = 20  # (factory, args, kwargs) -> always a reference
    ROOT = 21  # () -> the root dict
    STATS = 22  # () -> Stats
    RELEASE = 23  # () -> None: nothing but the piggybacked releases
    PIN = 24  # (oids) -> pin token (references held for a pickle or a fork in flight)
    CLAIM = 25  # (token) -> the reference
    ADOPT = 26  # (fork pin token or None, oids inherited through fork) -> oids still alive
    HELLO = 27  # (session token, pid) -> manager pid; the first message of a connection
    SHUTDOWN = 28  # ([owner secret]) -> stop serving
    PING = 29  # () -> None
    CREATE = 30  # (typeid, args, kwargs) -> (reference, exposed names) from the server's registry
    CALLMETHOD_REF = 31  # (name, args, kwargs): CALLMETHOD whose result always goes by reference
    DEBUG_INFO = 32  # () -> [(oid, references held, str(object)[:75])], by oid


# Frame flags.
FLAG_REFS = 0x01  # the payload holds persistent ids: decode it with the reference-aware unpickler
FLAG_OOB = 0x02  # out-of-band buffers follow the payload (see FramedStream.send_buffers)
FLAG_RELEASES = 0x04  # the payload starts with the releases, pickled apart (see codec.with_releases)
