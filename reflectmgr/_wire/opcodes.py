"""The only place where protocol numbers live.

A message is a tuple whose first item is a :class:`Msg` kind and whose second item is a tuple of
piggybacked releases ``((oid, count), ...)`` (a negative count acquires a borrowed reference);
the rest depends on the kind:

    (Msg.REQUEST, releases, op, oid, a, b, c)      a request for operation ``op`` on object ``oid``
    (Msg.OK,      releases, value)                 the result (values and references, see codec)
    (Msg.REF,     releases, (oid, desc or tid))    the result is one object of the owner's, by reference
    (Msg.ERR,     releases, exception, traceback)  the exception, and the remote traceback as text
"""

from __future__ import annotations

from enum import IntEnum


class Msg(IntEnum):
    REQUEST = 0
    OK = 1
    ERR = 2
    REF = 3  # the result is one reference: (Msg.REF, releases, (oid, desc_or_tid)), plain pickle


class Op(IntEnum):
    # object protocol
    GETATTR = 1  # a=name
    SETATTR = 2  # a=name, b=value
    DELATTR = 3  # a=name
    CALL = 4  # a=args, b=kwargs
    CALLMETHOD = 5  # a=name, b=args, c=kwargs
    DUNDER = 6  # a=index into DUNDERS, b=args
    ITER = 7  # a=first batch size -> (iterator ref or None, items, iterates_itself)
    NEXT_BATCH = 8  # a=batch size -> (items, exhausted)
    VALUE = 9  # -> a deep copy, by value
    DIR = 10  # -> sorted names
    # owner services
    NEW = 20  # a=callable, b=args, c=kwargs -> always a reference
    ROOT = 21  # -> the root dict
    STATS = 22  # -> Stats
    RELEASE = 23  # nothing but the piggybacked releases
    PIN = 24  # a=oids -> pin token (references held for a pickle or a fork in flight)
    CLAIM = 25  # a=token -> the reference
    ADOPT = 26  # a=fork pin token, b=oids inherited through fork -> oids still alive
    HELLO = 27  # a=session token, b=pid -> manager pid
    SHUTDOWN = 28  # stop serving
    PING = 29  # -> None
    CREATE = 30  # a=typeid, b=args, c=kwargs -> (reference, exposed names) from the server's registry
    CALLMETHOD_REF = 31  # CALLMETHOD whose result always goes by reference (method_to_typeid)


# Frame flags.
FLAG_REFS = 0x01  # the payload holds persistent ids: decode it with the reference-aware unpickler
FLAG_OOB = 0x02  # out-of-band buffers follow the payload (see FramedStream.send_buffers)
FLAG_RELEASES = 0x04  # the payload starts with the releases, pickled apart (see codec.with_releases)
