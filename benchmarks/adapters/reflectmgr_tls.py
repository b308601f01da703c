"""reflectmgr over TCP with TLS (certificates made for the run with trustme), to set against
``reflectmgr_tcp``: what encryption costs a small operation. The objects are made through a
TLS connection (the owner itself would use the manager's private unix socket)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import trustme  # the bench and test extras have it; without it the runner skips this adapter
from workloads import client_ops, standard_ops

import reflectmgr
from adapters import _reflectmgr_common as common
from reflectmgr import tls

NAME = "reflectmgr tls"


def setup(quick: bool) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="reflectmgr-bench-tls-"))
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    m = reflectmgr.Manager(("127.0.0.1", 0), ssl_context=tls.server_context(str(folder / "server.pem")))
    m.start()
    context = tls.client_context(str(folder / "ca.pem"))
    conn = reflectmgr.connect(m.address, m.authkey, ssl_context=context)
    return {"m": m, "conn": conn, "folder": folder, "context": context, **common.shared_objects(conn)}


operations = standard_ops


server_pid = common.server_pid


def teardown(s: Any) -> None:
    s["conn"].close()
    s["m"].shutdown()
    shutil.rmtree(s["folder"], ignore_errors=True)


def client_info(s: Any) -> Any:
    return s["m"].address, s["m"].authkey, s["context"]  # a reflectmgr.tls context pickles


def client(info: Any) -> Any:
    address, authkey, context = info
    conn = reflectmgr.connect(address, authkey, ssl_context=context)
    return client_ops(conn.root["d"], conn.root["q"]), conn.close
