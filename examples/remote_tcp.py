"""A manager listening on TCP, and a separate process that attaches with reflectmgr.connect.

Run:  python examples/remote_tcp.py

On two hosts, bind the manager to the address of the private interface the other host reaches
(address=("10.0.0.5", port)), not ("0.0.0.0", port): anyone holding the authkey can run code in
the manager, and after the handshake pickles travel in clear text (see docs/security.md). Keep the
authkey out of the source and off the command line (a file only its user can read, or an
environment variable).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import reflectmgr

AUTHKEY = b"example secret"


def other_program(address: Any) -> None:
    """Another process, perhaps on another host: it knows only the address and the authkey."""
    conn = reflectmgr.connect(address, authkey=AUTHKEY)
    board = conn.root["board"]  # published by name in the manager's root dict
    board["scores"]["bob"] = 7
    board["history"].append(("bob", 7))


def main() -> None:
    with reflectmgr.Manager(address=("127.0.0.1", 0), authkey=AUTHKEY) as m:
        print("listening on", m.address)
        m.root["board"] = {"scores": {"alice": 3}, "history": []}
        child = multiprocessing.get_context("spawn").Process(target=other_program, args=(m.address,))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        board = reflectmgr.value(m.root["board"])
        print("board:", board)
        assert board["scores"] == {"alice": 3, "bob": 7}
        try:
            reflectmgr.connect(m.address, authkey=b"wrong").root  # noqa: B018
        except reflectmgr.AuthenticationError as exc:
            print("wrong authkey refused:", exc)


if __name__ == "__main__":
    main()
