"""What this process knows about managers: its clients, by address, and the tables it serves.

    clients         address -> Client      one session per manager and process (get_client)
    local_tables    address -> ObjectTable  inside a manager process: a proxy of this very manager,
                                            unpickled here, is the object itself (no self-connect)
    generation      bumped in every forked child; a client of another generation was inherited

Everything here is guarded by ``lock``, which the fork hooks hold across ``fork``.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import TYPE_CHECKING, Any

from .._transport.sockets import Address

if TYPE_CHECKING:
    from .client import Client

clients: dict[Any, Client] = {}
local_tables: dict[Any, Any] = {}
lock = threading.Lock()
# A list so that modules holding a reference see the child's bump (see forking.py).
generation = [0]


def key(address: Address) -> Any:
    """The dictionary key of an address (TCP addresses arrive as tuples or lists)."""
    return tuple(address) if isinstance(address, (tuple, list)) else address


def default_authkey() -> bytes:
    """The authkey every ``multiprocessing`` child inherits from its parent."""
    return bytes(multiprocessing.current_process().authkey)


def lookup(address: Address) -> Client | None:
    """This process's open client for ``address``, if it has one."""
    with lock:
        client = clients.get(key(address))
    return client if client is not None and not client.closed else None
