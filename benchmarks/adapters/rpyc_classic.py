"""RPyC (classic mode): transparent netrefs over a socket, a thread per connection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import rpyc  # type: ignore[import-untyped]
from workloads import BIG, client_ops, standard_ops

NAME = "RPyC"

SERVER = """
import sys
from rpyc.utils.server import ThreadedServer
from rpyc.core.service import SlaveService
server = ThreadedServer(SlaveService, hostname="127.0.0.1", port=0,
                        protocol_config={"allow_all_attrs": True, "allow_pickle": True})
server._listen()  # listening before the port is told (start() would listen only then: a race)
print(server.port, flush=True)
server.start()
"""


def setup(quick: bool) -> Any:
    env_path = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": env_path}
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    conn = rpyc.classic.connect("127.0.0.1", port)
    b = conn.modules.builtins
    d = b.dict(k=0)
    q = conn.modules.queue.Queue()
    conn.modules.workloads.SHARED = d  # where client processes find them (a module of the server)
    conn.modules.workloads.SHARED_QUEUE = q
    return {
        "proc": proc,
        "port": port,
        "conn": conn,
        "d": d,
        "lst": b.list(),
        "ns": conn.modules.types.SimpleNamespace(x=1),
        "obj": conn.modules.workloads.Counter(),
        "nested": conn.eval("{'a': {}}"),
        "big": conn.eval(f"list(range({BIG}))"),
        "sync": (conn.modules.threading.Lock(), q, conn.modules.threading.Event()),
    }


operations = standard_ops


def server_pid(s: Any) -> int:
    return int(s["proc"].pid)


def teardown(s: Any) -> None:
    s["conn"].close()
    s["proc"].kill()
    s["proc"].wait()


def client_info(s: Any) -> Any:
    return s["port"]


def client(port: Any) -> Any:
    conn = rpyc.classic.connect("127.0.0.1", port)
    shared = conn.modules.workloads
    return client_ops(shared.SHARED, shared.SHARED_QUEUE), conn.close
