"""The command line: ``python -m reflectmgr serve | stats | bench``.

    REFLECTMGR_AUTHKEY=... python -m reflectmgr serve --address 127.0.0.1:5000
    REFLECTMGR_AUTHKEY=... python -m reflectmgr stats 127.0.0.1:5000 --watch
    python -m reflectmgr bench --quick

The authkey comes from an environment variable (``--authkey-env``, default REFLECTMGR_AUTHKEY) or
a file (``--authkey-file``), never from the command line, where other users of the machine can
read it in the process list.

Exit codes: 0 done (``serve`` and ``stats --watch``: stopped by SIGTERM or SIGINT); 1 the
command failed (nothing listens there, a wrong authkey, TLS refused, the benchmark failed); 2 a
usage error (argparse's, and a missing authkey).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

AUTHKEY_ENV = "REFLECTMGR_AUTHKEY"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A command line that cannot work (exit code 2)."""


def parse_address(text: str) -> Any:
    """``HOST:PORT`` (``[v6]:PORT``) is TCP; ``shm:<path>`` and any other text are unix paths."""
    if text.startswith("shm:") or "/" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{text!r} is neither HOST:PORT nor a unix socket path")
    return (host.strip("[]") or "127.0.0.1", int(port))


def format_address(address: Any) -> str:
    if isinstance(address, (tuple, list)):
        host = f"[{address[0]}]" if ":" in str(address[0]) else address[0]
        return f"{host}:{address[1]}"
    return str(address)


def read_authkey(args: argparse.Namespace) -> bytes:
    if args.authkey_file is not None:
        try:
            key = Path(args.authkey_file).read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the authkey file: {exc}") from exc
    else:
        key = os.environb.get(args.authkey_env.encode(), b"").strip()
    if not key:
        raise UsageError(
            f"no authkey: set the environment variable {args.authkey_env} or pass --authkey-file "
            "(never on the command line, where other users can read it)"
        )
    return key


# -- serve ------------------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    import reflectmgr
    from reflectmgr import tls

    authkey = read_authkey(args)
    address = parse_address(args.address) if args.address else None
    context = None
    if args.tls_cert:
        context = tls.server_context(
            args.tls_cert, args.tls_key, cafile=args.tls_ca, require_client_cert=args.tls_require_client_cert
        )
    allowed = [_import(name) for name in args.allow]
    options: dict[str, Any] = {}
    if args.restricted:
        options = {"serializer": "restricted", "allowed": allowed, "allow_callbacks": args.allow_callbacks}
    elif allowed or args.allow_callbacks:
        raise UsageError("--allow and --allow-callbacks are for --restricted")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # The manager runs in this very process: the command is the manager, and its signals stop it.
    manager = reflectmgr.Manager(
        address, authkey, transport=args.transport, in_process=True, ssl_context=context, **options
    )
    try:
        manager.start()
    except OSError as exc:
        print(f"reflectmgr: cannot listen at {args.address}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        mode = ", ".join(m for m, on in (("TLS", context is not None), ("restricted", args.restricted)) if on)
        where = format_address(manager.address)
        print(f"reflectmgr manager serving at {where}, pid {os.getpid()}" + (f" ({mode})" if mode else ""), flush=True)
        stop.wait()
        logging.getLogger("reflectmgr.cli").info("stopping")
    finally:
        manager.shutdown()
    return EXIT_OK


def _import(name: str) -> Any:
    import importlib

    module, _, attr = name.partition(":")
    if not attr:
        raise UsageError(f"--allow takes module:name, not {name!r}")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"--allow {name}: {exc}") from exc
    return obj


# -- stats ------------------------------------------------------------------------------------------
def stats(args: argparse.Namespace) -> int:
    import reflectmgr
    from reflectmgr import tls

    authkey = read_authkey(args)
    address = parse_address(args.address)
    context = tls.client_context(args.tls_ca, certfile=args.tls_cert, keyfile=args.tls_key) if args.tls_ca else None
    if args.watch:
        _interrupted_by(signal.SIGINT, signal.SIGTERM)
    try:
        conn = reflectmgr.connect(address, authkey, ssl_context=context, timeout=args.timeout)
        with conn:
            before, then = conn.stats(), time.monotonic()
            shown = 0
            while True:
                if args.watch or args.count > 1:
                    time.sleep(args.interval)  # the refresh period the user asked for
                now_stats, now = conn.stats(), time.monotonic()
                rate = max(0, now_stats.calls - before.calls - 1) / (now - then) if now > then else 0.0
                _show(now_stats, rate, args, address)
                shown += 1
                before, then = now_stats, now
                if not args.watch and shown >= args.count:
                    return EXIT_OK
    except reflectmgr.ReflectmgrError as exc:
        print(f"reflectmgr: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def _interrupted_by(*signals: int) -> None:
    """These signals raise KeyboardInterrupt here, whatever this process inherited: a background
    job of a non-interactive shell starts with SIGINT ignored, and ``--watch`` stops only this way."""

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    for sig in signals:
        signal.signal(sig, interrupt)


def _show(s: Any, rate: float, args: argparse.Namespace, address: Any) -> None:
    record = {
        "address": format_address(address),
        "pid": s.pid,
        "clients": s.clients,
        "connections": s.connections,
        "objects": s.objects,
        "rss_bytes": s.rss,
        "calls": s.calls,
        "calls_per_s": round(rate, 1),
    }
    if args.json:
        print(json.dumps(record), flush=True)
        return
    if args.watch and sys.stdout.isatty():
        print("\x1b[2J\x1b[H", end="")  # a live view: clear the screen, top left
    print(
        f"{record['address']}  pid {s.pid}  clients {s.clients}  connections {s.connections}  "
        f"objects {s.objects}  rss {s.rss / 2**20:.1f} MiB  calls/s {rate:,.0f}",
        flush=True,
    )


# -- bench ------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> int:
    run = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    if not run.is_file():
        print(
            "reflectmgr: the benchmark suite ships with the source tree (benchmarks/run.py), not with "
            "the installed package: run this from a clone (pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return EXIT_FAILED
    extra = [a for a in args.extra if a != "--"]
    cmd = [sys.executable, str(run), *(["--quick"] if args.quick else []), *extra]
    return EXIT_OK if subprocess.call(cmd, cwd=run.parent.parent) == 0 else EXIT_FAILED


# -- the parser -------------------------------------------------------------------------------------
def _authkey_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("authkey (never on the command line)")
    g.add_argument(
        "--authkey-env", default=AUTHKEY_ENV, metavar="VAR", help=f"environment variable (default {AUTHKEY_ENV})"
    )
    g.add_argument("--authkey-file", metavar="PATH", help="a file holding the authkey (readable by its user only)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m reflectmgr", description="reflectmgr: shared objects across processes"
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="{serve,stats,bench}")

    p = sub.add_parser("serve", help="run a standalone manager until SIGTERM or SIGINT")
    p.add_argument("--address", help="HOST:PORT for TCP, or a unix socket path (default: a private unix socket)")
    p.add_argument(
        "--transport", choices=("shm", "pipe", "tcp"), default=None, help="default: tcp for HOST:PORT, else shm"
    )
    t = p.add_argument_group("TLS (TCP only)")
    t.add_argument(
        "--tls-cert", metavar="PEM", help="the manager's certificate chain (and key, if --tls-key is not given)"
    )
    t.add_argument("--tls-key", metavar="PEM")
    t.add_argument("--tls-ca", metavar="PEM", help="the CA of client certificates")
    t.add_argument("--tls-require-client-cert", action="store_true", help="mutual TLS (needs --tls-ca)")
    r = p.add_argument_group("restricted mode")
    r.add_argument("--restricted", action="store_true", help="unpickle and build only allowed types")
    r.add_argument("--allow", action="append", default=[], metavar="MODULE:NAME", help="a type or function to allow")
    r.add_argument("--allow-callbacks", action="store_true", help="accept byref objects (calls back into clients)")
    _authkey_options(p)
    p.set_defaults(run=serve)

    p = sub.add_parser("stats", help="clients, connections, objects, memory and calls/s of a running manager")
    p.add_argument("address", help="HOST:PORT, or the unix path (shm:/...) the manager printed")
    p.add_argument("--json", action="store_true", help="one JSON object per reading")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between readings (default 1)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="readings to take without --watch (default 1)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="how long to wait for an answer")
    t = p.add_argument_group("TLS")
    t.add_argument("--tls-ca", metavar="PEM", help="trust manager certificates from this CA (turns TLS on)")
    t.add_argument("--tls-cert", metavar="PEM", help="a client certificate, for mutual TLS")
    t.add_argument("--tls-key", metavar="PEM")
    _authkey_options(p)
    p.set_defaults(run=stats)

    p = sub.add_parser("bench", help="run the benchmark suite (from a source checkout)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more options for benchmarks/run.py, after --")
    p.set_defaults(run=bench)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"reflectmgr: {exc}", file=sys.stderr)
        return EXIT_USAGE
