"""Pyro5: explicit @expose, method calls only (no operators, no nested proxies)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import Pyro5.api  # type: ignore[import-untyped]

NAME = "Pyro5"
CLIENT_OPS = ("d[k]", "d[k] = v")  # no queue: one exposed object

SERVER = """
import Pyro5.api

@Pyro5.api.expose
class Store:
    def __init__(self):
        self.d = {"k": 0}
        self.lst = []
        self.n = 0
        self._x = 1

    def setitem(self, k, v):
        self.d[k] = v

    def getitem(self, k):
        return self.d[k]

    def append(self, x):
        self.lst.append(x)

    def length(self):
        return len(self.d)

    def incr(self, k=1):
        self.n += k
        return self.n

    @property
    def x(self):
        return self._x

daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
uri = daemon.register(Store(), "store")
print(uri, flush=True)
daemon.requestLoop()
"""


def setup(quick: bool) -> Any:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    store = Pyro5.api.Proxy(uri)
    store._pyroBind()
    return {"proc": proc, "store": store, "uri": uri}


def operations(s: Any) -> dict[str, Any]:
    store = s["store"]
    # The same operations, spelled as Pyro5 can express them: one exposed method each.
    return {
        "d[k] = v": lambda: store.setitem("k", 1),
        "d[k]": lambda: store.getitem("k"),
        "lst.append(x)": lambda: store.append(1),
        "len(d)": lambda: store.length(),
        "method(k=1)": lambda: store.incr(k=1),
        "ns.x": lambda: store.x,
    }


def server_pid(s: Any) -> int:
    return int(s["proc"].pid)


def teardown(s: Any) -> None:
    s["store"]._pyroRelease()
    s["proc"].kill()
    s["proc"].wait()


def client_info(s: Any) -> Any:
    return s["uri"]


def client(uri: Any) -> Any:
    store = Pyro5.api.Proxy(uri)
    ops = {"d[k]": lambda: store.getitem("k"), "d[k] = v": lambda: store.setitem("k", 1)}
    return ops, store._pyroRelease
