"""``byref(obj)``: pass a local object by reference; the receiver gets a proxy back to us."""

from __future__ import annotations

import pickle
from typing import Any

from .._wire.codec import decoding_table, encoding_peer


class byref:  # noqa: N801 - reads as a function at the call site: m.call(byref(cb))
    """Wrap ``obj`` so that a call to the manager passes it by reference, not by value.

    The manager gets a proxy to ``obj``; calling it (or any of its methods) runs here, in this
    process, *while this process waits for the call that passed it* (the reply loop serves the
    callback). ``obj`` stays alive here while the manager holds the proxy.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        peer: Any = encoding_peer()
        if peer is None or not hasattr(peer, "export"):
            raise pickle.PicklingError("byref() objects can only be passed in a call to a manager")
        return (_load_exported, (peer.export(self.obj),))

    def __repr__(self) -> str:
        return f"byref({self.obj!r})"


def _load_exported(pid: Any) -> Any:
    return decoding_table().load_ref(pid)
