"""What this process knows about managers: its clients, by address, and the tables it serves.

    clients         address -> Client      one session per manager and process (get_client)
    local_tables    address -> ObjectTable  inside a manager process: a proxy of this very manager,
                                            unpickled here, is the object itself (no self-connect)
    tls             address -> SSLContext   TCP managers this process reaches over TLS (connect(...,
                                            ssl_context=...)): every connection to them uses it
    A client may be registered under several addresses (a manager's TCP address and the local
    socket this process reaches it by: see KeySource).
    generation      bumped in every forked child; a client of another generation was inherited

Everything here is guarded by ``lock``, which the fork hooks hold across ``fork``. It is
reentrant: a collection inside one of its sections may run a dropped Manager's shutdown, which
closes its client (and unregisters it) on the same thread.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import TYPE_CHECKING, Any, Protocol

from .._transport.sockets import Address

if TYPE_CHECKING:
    from .client import Client

clients: dict[Any, Client] = {}
local_tables: dict[Any, Any] = {}
tls: dict[Any, Any] = {}
lock = threading.RLock()
# A list so that modules holding a reference see the child's bump (see forking.py).
generation = [0]


class KeySource(Protocol):
    """Where a proxy's receiver finds the authkey of its manager, when the process did not inherit
    it: pickled with the proxy instead of the key (reflectmgr.ray resolves it from the cluster).
    ``client(routes)`` returns this process's client for the manager at ``routes``, connecting
    (and registering it) on first use."""

    def client(self, routes: tuple[Address, ...]) -> Client: ...


def key(address: Address) -> Any:
    """The dictionary key of an address (TCP addresses arrive as tuples or lists)."""
    return tuple(address) if isinstance(address, (tuple, list)) else address


def default_authkey() -> bytes:
    """The authkey every child process inherits from its parent.

    Children come from two libraries: the stdlib's ``multiprocessing`` and ``multiprocess`` (our
    process contexts; pathos and its users). Each keeps its own per-process key, so this makes
    the process's two keys one: in a child of ``multiprocess``, the key it inherited there; in
    any other process, ``multiprocessing``'s. Children of either library then inherit the same
    key, and the proxies they receive connect without configuration."""
    std = multiprocessing.current_process()
    try:
        import multiprocess
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        return bytes(std.authkey)
    other = multiprocess.current_process()
    if multiprocessing.parent_process() is None and multiprocess.parent_process() is not None:
        std.authkey = other.authkey
    elif bytes(other.authkey) != bytes(std.authkey):
        other.authkey = std.authkey
    return bytes(std.authkey)


def lookup(address: Address) -> Client | None:
    """This process's open client for ``address``, if it has one (marked as just used, so that
    an idle client is not closed under the caller: see Client.reap_if_idle)."""
    with lock:
        client = clients.get(key(address))
        if client is not None:
            client.touched = True
    return client if client is not None and not client.closed else None
