"""TLS contexts for TCP managers and connections.

    with reflectmgr.Manager(("10.0.0.5", 5000), authkey=key,
                            ssl_context=reflectmgr.tls.server_context("cert.pem", "key.pem")) as m:
        ...
    # on another host
    conn = reflectmgr.connect(("10.0.0.5", 5000), key, ssl_context=reflectmgr.tls.client_context("ca.pem"))

The contexts these functions make are ordinary :class:`ssl.SSLContext` objects that can also be
pickled (as the files and options they were made from), because a manager runs in a process of
its own, where its context has to be made again. ``Manager(ssl_context=...)`` also takes any
``ssl.SSLContext`` when the manager runs in this process (``in_process=True``) or is forked, or a
function that returns one (it is called in the manager process). Client certificates (mutual
TLS): ``server_context(..., cafile=clients_ca, require_client_cert=True)`` and
``client_context(ca, certfile=..., keyfile=...)``.

The authkey challenge still runs, inside TLS: TLS proves who the manager is and encrypts the
traffic; the authkey (and a client certificate, with mutual TLS) decides who may use it.
"""

from __future__ import annotations

import ssl
from typing import Any

__all__ = ["TLSContext", "client_context", "server_context"]


class TLSContext(ssl.SSLContext):
    """An :class:`ssl.SSLContext` that pickles as the call that made it."""

    _recipe: tuple[Any, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        return self._recipe


def server_context(
    certfile: str,
    keyfile: str | None = None,
    *,
    cafile: str | None = None,
    require_client_cert: bool = False,
    password: str | None = None,
) -> TLSContext:
    """A manager's context: its certificate chain and key; with ``require_client_cert`` only
    clients with a certificate signed by ``cafile`` may connect (mutual TLS)."""
    if require_client_cert and cafile is None:
        raise ValueError("require_client_cert needs cafile: the CA that signs the clients' certificates")
    ctx = TLSContext(ssl.PROTOCOL_TLS_SERVER)
    ctx._recipe = (_server, (certfile, keyfile, cafile, require_client_cert, password))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile, password)
    if cafile is not None:
        ctx.load_verify_locations(cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    cafile: str | None = None,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    check_hostname: bool = True,
    password: str | None = None,
) -> TLSContext:
    """A client's context: trust the manager certificates that ``cafile`` signs (the system's
    CAs if None) and check the host name; ``certfile``/``keyfile`` for mutual TLS."""
    ctx = TLSContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx._recipe = (_client, (cafile, certfile, keyfile, check_hostname, password))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    if cafile is not None:
        ctx.load_verify_locations(cafile)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile, password)
    return ctx


def _server(*args: Any) -> TLSContext:
    return server_context(args[0], args[1], cafile=args[2], require_client_cert=args[3], password=args[4])


def _client(*args: Any) -> TLSContext:
    return client_context(args[0], certfile=args[1], keyfile=args[2], check_hostname=args[3], password=args[4])


def made_here(context: Any) -> ssl.SSLContext | None:
    """The context a manager process uses: ``context`` itself, or what the function returns."""
    if context is None or isinstance(context, ssl.SSLContext):
        return context
    made = context()
    if not isinstance(made, ssl.SSLContext):
        raise TypeError(f"ssl_context returned {type(made).__name__}, not an ssl.SSLContext")
    return made


def travels(context: Any, start_method: str) -> bool:
    """Can ``context`` reach a manager process started with ``start_method``?"""
    return start_method == "fork" or not isinstance(context, ssl.SSLContext) or isinstance(context, TLSContext)
