"""The manager's side of ``byref``: proxies to a client's objects, called back through its channel."""

from __future__ import annotations

import pickle
from typing import Any

from .._owner.channel import serving
from .._owner.server import Session
from .._proxy.calls import CallingChannel
from .._proxy.link import Link
from .._proxy.proxy import Proxy
from ..errors import ReflectmgrError


class CallbackLink(Link):
    def __init__(self, session: Session) -> None:
        super().__init__(session.name)
        self.session = session
        self.gone = False

    def call(self, op: int, oid: int, *args: Any) -> Any:
        if self.gone:
            raise ReflectmgrError(f"the client that passed this byref object ({self.session.name}) has disconnected")
        channel = serving()
        if not isinstance(channel, CallingChannel) or channel.peer is not self.session:
            raise ReflectmgrError(
                f"a byref object of {self.session.name} can be called only while that client waits "
                "for a call to the manager (from within that call)"
            )
        return channel.call(op, oid, args)

    def transfer(self, proxy: Proxy) -> tuple[Any, ...]:
        raise pickle.PicklingError("a byref proxy cannot leave the manager process")

    def disconnect(self) -> None:
        self.gone = True
        self.cache.clear()
