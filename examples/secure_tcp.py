"""A manager for peers you do not trust with code: TCP with mutual TLS, and restricted mode.

Run:  python examples/secure_tcp.py      (needs trustme for its demo certificates: pip install trustme)

The manager's certificate and each client's are made here by a throwaway CA (trustme); use your
own CA's files in production. The other program connects with its certificate, works with the
shared objects, and is refused when it tries to run code in the manager. See docs/security.md.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from typing import Any

import reflectmgr
from reflectmgr import tls

AUTHKEY = b"example secret"  # in production: from a file only its user can read, or the environment


def other_program(address: Any, folder: str) -> None:
    """Another process (another host, in real life): its own certificate, the CA it trusts."""
    context = tls.client_context(f"{folder}/ca.pem", certfile=f"{folder}/client.pem")
    conn = reflectmgr.connect(address, AUTHKEY, ssl_context=context)
    orders = conn.root["orders"]
    orders.append({"item": "bolt", "qty": 40})  # plain data: allowed
    try:
        conn.new(os.system, "echo this never runs")
    except reflectmgr.RestrictedError as exc:
        print("refused:", str(exc).split(":")[0])
    conn.close()


def main() -> None:
    try:
        import trustme
    except ImportError:
        raise SystemExit("this demo makes its certificates with trustme: pip install trustme") from None
    with tempfile.TemporaryDirectory() as folder:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(f"{folder}/ca.pem")
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(f"{folder}/manager.pem")
        ca.issue_cert("client-1").private_key_and_cert_chain_pem.write_to_path(f"{folder}/client.pem")
        server = tls.server_context(f"{folder}/manager.pem", cafile=f"{folder}/ca.pem", require_client_cert=True)
        with reflectmgr.Manager(("127.0.0.1", 0), AUTHKEY, ssl_context=server, serializer="restricted") as m:
            print("listening with mutual TLS on", m.address)
            m.root["orders"] = orders = m.list()
            child = multiprocessing.get_context("spawn").Process(target=other_program, args=(m.address, folder))
            child.start()
            child.join(60)
            assert child.exitcode == 0
            print("orders:", list(orders))
            assert list(orders) == [{"item": "bolt", "qty": 40}]
            try:  # a client without TLS is told so at once
                reflectmgr.connect(m.address, AUTHKEY)
            except reflectmgr.AuthenticationError as exc:
                print("plain client refused:", exc)


if __name__ == "__main__":
    main()
