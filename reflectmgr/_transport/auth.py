"""Mutual HMAC challenge, run on a fresh transport before anything is unpickled.

    server                                  client
      |-- CHALLENGE + 32 random bytes -------->|
      |<------------- HMAC-SHA256(key, msg) ---|
      |-- WELCOME or FAILURE (then close) ---->|
      |<-------- CHALLENGE + 32 random bytes --|   (the client checks the server too)
      |--- HMAC-SHA256(key, msg) ------------->|
      |<------------- WELCOME or FAILURE ------|

Every frame here is read with the pre-authentication size limit, as raw bytes.
"""

from __future__ import annotations

import hmac
import os

from .._wire.framing import MAX_PREAUTH
from ..errors import AuthenticationError
from .base import Transport

CHALLENGE = b"#RMCHALLENGE#"
WELCOME = b"#RMWELCOME#"
FAILURE = b"#RMFAILURE#"
NONCE_SIZE = 32
TLS_ANNOUNCE = b"#RMTLS#"  # what a TLS manager sends first, in clear text (see tls.py)


def _digest(authkey: bytes, message: bytes) -> bytes:
    return hmac.new(authkey, message, "sha256").digest()


def _challenge(t: Transport, authkey: bytes) -> None:
    message = CHALLENGE + os.urandom(NONCE_SIZE)
    t.send(0, message)
    _, answer = t.recv(MAX_PREAUTH)
    if not hmac.compare_digest(bytes(answer), _digest(authkey, message)):
        t.send(0, FAILURE)
        raise AuthenticationError("digest received was wrong: the peer does not have this authkey")
    t.send(0, WELCOME)


def _answer(t: Transport, authkey: bytes) -> None:
    _, message = t.recv(MAX_PREAUTH)
    if not bytes(message).startswith(CHALLENGE):
        if bytes(message) == TLS_ANNOUNCE:
            raise AuthenticationError("the manager requires TLS: connect with ssl_context=... (reflectmgr.tls)")
        raise AuthenticationError("the peer did not start with a reflectmgr challenge")
    t.send(0, _digest(authkey, bytes(message)))
    _, verdict = t.recv(MAX_PREAUTH)
    if bytes(verdict) != WELCOME:
        raise AuthenticationError(
            "the manager rejected our authkey: connect with the authkey the manager was started with"
        )


def serve_handshake(t: Transport, authkey: bytes) -> None:
    """Server side. Raises :class:`AuthenticationError`; the caller closes the transport."""
    _challenge(t, authkey)
    _answer(t, authkey)


def client_handshake(t: Transport, authkey: bytes) -> None:
    """Client side. Raises :class:`AuthenticationError` if either direction fails."""
    _answer(t, authkey)
    _challenge(t, authkey)
