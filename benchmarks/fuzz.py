"""Throw malformed frames at a manager over every transport, before and after authentication.

    python3 benchmarks/fuzz.py                   # 100 000 frames (a few minutes)
    python3 benchmarks/fuzz.py --frames 10000    # what CI runs (tests/faults/test_fuzz.py)
    python3 benchmarks/fuzz.py --seed 1234       # replay a run: the seed is printed first

The frames come from a seeded generator (``random.Random(seed)``), shared out over six phases:
{pipe, shm, tcp} x {before, after authentication}. Kinds of frame:

    random        random bytes, sent raw
    truncated     1 to 8 bytes of a header, then the connection ends
    huge          a header announcing more than the limit, up to 2**64 - 1 (the "negative" ones)
    corrupt       a valid header around a pickle that is cut, bit-flipped, or random
    bomb          (before authentication) a pickle that would create a file if it were loaded
    shape         (after) valid pickles of unexpected shapes: wrong kinds, ops, arity, ids never
                  issued, malformed releases, releases of ids never sent (the legitimate client's)
    split         a valid frame sent in two writes, cut at the next byte boundary in turn (so a
                  run cuts every frame of the kind at every boundary); it must be answered right

Throughout, a legitimate client (another session) does a round trip every 100 ms and the
manager's RSS is sampled. The run fails (exit code 1, with the seed) if the manager dies, a
round trip waits over 1 s, the manager grows more than ``MEMORY_BOUND`` over its baseline, the
bomb's file appears, a valid frame is answered wrongly, a request is neither answered nor
dropped within ``STUCK``, or, at the end, the legitimate client's state is not intact or the
manager holds objects or sessions the fuzzer left behind. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

import reflectmgr
from reflectmgr._transport.auth import CHALLENGE, client_handshake
from reflectmgr._transport.shm import upgrade_client
from reflectmgr._transport.sockets import connect as raw_connect
from reflectmgr._transport.sockets import with_transport
from reflectmgr._wire import codec
from reflectmgr._wire.framing import HEADER_SIZE, pack_header
from reflectmgr._wire.opcodes import Msg, Op

MAX_FRAME = 1 << 20  # the managers' configured limit for this run
MEMORY_BOUND = 64 << 20  # allowed RSS growth of the manager over its baseline
LATENCY_BOUND = 1.0  # the legitimate client's round trip must never wait longer
STUCK = 10.0  # a request must be answered or its connection dropped within this
TRANSPORTS = ("pipe", "shm", "tcp")
PHASES = [(t, auth) for t in TRANSPORTS for auth in (False, True)]
PRE_KINDS = ("random", "truncated", "huge", "corrupt", "bomb", "split")
POST_KINDS = ("random", "truncated", "huge", "corrupt", "shape", "shape", "shape", "split")
# Ops a fuzzing peer sends: every one but SHUTDOWN (an authenticated peer may stop the manager).
OPS = [op for op in Op if op is not Op.SHUTDOWN]
NOT_OPS = [n for n in range(-5, 64) if n not in set(Op)]


class FuzzError(Exception):
    pass


class _Bomb:
    """Unpickling it creates ``path``: the file must never appear."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


# -- frames -------------------------------------------------------------------------------------
class Frames:
    def __init__(self, rng: random.Random, bomb: bytes) -> None:
        self.rng = rng
        self.bomb = bomb
        self.cut = 0  # the next split point, advancing through every byte boundary

    def raw(self, kind: str) -> bytes:
        """Bytes that are not a well-formed frame, or a frame the peer must refuse."""
        rng = self.rng
        if kind == "random":
            return rng.randbytes(rng.randrange(1, 600))
        if kind == "truncated":
            return pack_header(rng.randrange(1, 300), rng.randrange(256))[: rng.randrange(1, HEADER_SIZE)]
        if kind == "huge":
            length = rng.choice([MAX_FRAME + 1, 1 << 31, 1 << 40, (1 << 63) + rng.randrange(1 << 20), (1 << 64) - 1])
            return pack_header(length, rng.randrange(256)) + rng.randbytes(rng.randrange(64))
        if kind == "corrupt":
            return self._frame(rng.randrange(8), self._corrupt_pickle())
        if kind == "bomb":
            return self._frame(0, self.bomb)
        raise ValueError(kind)

    def _frame(self, flags: int, payload: bytes) -> bytes:
        return pack_header(len(payload), flags) + payload

    def _corrupt_pickle(self) -> bytes:
        rng = self.rng
        good = pickle.dumps((Msg.REQUEST, (), int(rng.choice(OPS)), rng.randrange(100), ("x", 1)), 5)
        how = rng.randrange(3)
        if how == 0:
            return good[: rng.randrange(1, len(good) - 1)]
        if how == 1:
            data = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data)
        return b"\x80\x05" + rng.randbytes(rng.randrange(1, 200))

    def shape(self, victim: int) -> tuple[int, bytes]:
        """A valid pickle of something that is not a well-formed request, or a request that
        names what does not exist; ``victim`` is an id this peer was never sent."""
        rng = self.rng
        never = rng.choice([victim, 10**9 + rng.randrange(1000), -rng.randrange(1, 1000), 2**70])
        releases: Any = rng.choice([(), ((never, 1),), ((victim, 5), (never, 1)), ((never, 0),)])
        op = rng.choice([int(rng.choice(OPS)), rng.choice(NOT_OPS), "GETATTR", None])
        oid = rng.choice([never, 0, rng.randrange(1 << 20), "x", None, 1.5])
        args = rng.choice([(), ("name",), ("name", 1, 2, 3), ((), {}), (("a",), {"k": 1}), (5,), (None, None)])
        if op == Op.NEW or op == Op.CREATE:
            args = rng.choice([(dict, (), {}), ("no-such-typeid", (), {}), (len, (), {})])
        msg: Any = (Msg.REQUEST, releases, op, oid, args)
        odd = rng.randrange(10)
        if odd == 0:
            msg = msg[: rng.randrange(5)]
        elif odd == 1:
            msg = (*msg, "extra")
        elif odd == 2:
            msg = (rng.choice([Msg.OK, Msg.ERR, Msg.REF, 9]), *msg[1:])
        elif odd == 3:
            msg = rng.choice([None, 42, "request", [0, (), 1, 0, ()], {"op": 1}])
        elif odd == 4:
            msg = (Msg.REQUEST, rng.choice(["abc", ((1, 2, 3),), ((1.5, "x"),), (None,)]), Op.PING, 0, ())
        elif odd == 5:
            msg = (Msg.REQUEST, releases, op, oid, rng.choice(["args", None, [1, 2]]))
        return 0, pickle.dumps(msg, 5)

    def split(self, frame: bytes) -> tuple[bytes, bytes]:
        """``frame`` cut at the next boundary (1 .. len - 1, in turn)."""
        self.cut = self.cut % (len(frame) - 1) + 1
        return frame[: self.cut], frame[self.cut :]


# -- the peer --------------------------------------------------------------------------------------
class Peer:
    """A raw connection to the manager, authenticated (and said HELLO) or not."""

    def __init__(self, address: Any, transport: str, authkey: bytes, authenticate: bool) -> None:
        self.transport = transport
        self.t = raw_connect(with_transport(address, transport) if transport != "tcp" else address, STUCK)
        self.t.set_timeout(STUCK)
        if not authenticate:
            return
        client_handshake(self.t, authkey)
        if transport == "shm":
            self.t = upgrade_client(self.t)
            self.t.set_timeout(STUCK)
        self.t.send(0, pickle.dumps((Msg.REQUEST, (), Op.HELLO, 0, (os.urandom(16), os.getpid())), 5))
        self.t.recv()
        self.t.authenticated(MAX_FRAME)

    def send_raw(self, data: bytes) -> None:
        self.t._sendall(data)

    def reply(self) -> Any:
        """The next reply, decoded where it is plain (a reference's reply is only counted)."""
        flags, payload = self.t.recv()
        if flags & ~0x04:
            return ("flags", flags)
        if flags:
            payload, _ = codec.split_releases(payload)
        return pickle.loads(payload)

    def end(self) -> None:
        """Tell the manager nothing more comes, and wait until it drops us (sockets), so that one
        broken frame at a time is in flight. Shared memory is left to notice on its own."""
        if self.transport != "shm":
            sock = self.t.sock
            try:
                sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + STUCK
                while sock.recv(65536):
                    if time.monotonic() > deadline:
                        raise FuzzError("the manager kept a connection open after garbage")
            except OSError:
                pass
        self.t.dispose()


# -- the legitimate client -------------------------------------------------------------------------
class Legit(threading.Thread):
    """Another session doing a round trip every 100 ms; also samples the manager's RSS."""

    def __init__(self, m: reflectmgr.Manager) -> None:
        super().__init__(name="legit", daemon=True)
        self.m = m
        self.d = m.dict(n=0)
        self.proc = psutil.Process(m.pid)
        self.baseline_rss = self.proc.memory_info().rss
        self.peak_rss = self.baseline_rss
        self.worst = 0.0
        self.rounds = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(0.1):  # the cadence the issue asks for, not synchronisation
                start = time.perf_counter()
                self.d["n"] = self.rounds + 1
                if self.d["n"] != self.rounds + 1:
                    raise FuzzError("the legitimate client read back a wrong value")
                self.worst = max(self.worst, time.perf_counter() - start)
                self.rounds += 1
                self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)
        except BaseException as exc:
            self.error = exc


# -- a phase ----------------------------------------------------------------------------------------
def run_phase(
    m: reflectmgr.Manager, transport: str, auth: bool, n: int, frames: Frames, counts: dict[str, int]
) -> None:
    victim = m.root._rm_oid  # an id the fuzzing peers were never sent
    peer: Peer | None = None
    kinds = POST_KINDS if auth else PRE_KINDS
    for _ in range(n):
        kind = frames.rng.choice(kinds)
        counts[kind] = counts.get(kind, 0) + 1
        if peer is None:
            peer = Peer(m.address, transport, m.authkey, auth)
        if not auth:
            _pre_auth(peer, kind, frames, m.authkey)
            peer.end()
            peer = None
        elif kind == "shape":
            flags, payload = frames.shape(victim)
            try:
                peer.t.send(flags, payload)
                peer.reply()  # an error answer: the connection goes on
            except TimeoutError as exc:
                what = pickle.loads(payload)
                raise FuzzError(f"{what!r} was neither answered nor dropped within {STUCK} s") from exc
            except (EOFError, OSError):  # dropped: a message that is not a request
                peer.t.dispose()
                peer = None
        elif kind == "split":
            first, rest = frames.split(_frame_of((int(Msg.REQUEST), (), int(Op.STATS), 0, ())))
            peer.send_raw(first)
            peer.send_raw(rest)
            answer = peer.reply()
            if type(answer) is not tuple or answer[0] != Msg.OK or not isinstance(answer[2], reflectmgr.Stats):
                raise FuzzError(f"a frame sent in two pieces was answered {answer!r}")
        else:
            peer.send_raw(frames.raw(kind))
            peer.end()
            peer = None
    if peer is not None:
        peer.t.dispose()


def _frame_of(msg: Any) -> bytes:
    payload = pickle.dumps(msg, 5)
    return pack_header(len(payload), 0) + payload


def _pre_auth(peer: Peer, kind: str, frames: Frames, authkey: bytes) -> None:
    _, challenge = peer.t.recv(512)
    if not bytes(challenge).startswith(CHALLENGE):
        raise FuzzError(f"the manager's first frame is not a challenge: {bytes(challenge)[:20]!r}")
    if kind != "split":
        peer.send_raw(frames.raw(kind))
        return
    # The right answer, in two pieces: the manager must reassemble it and welcome us.
    import hmac

    first, rest = frames.split(frames._frame(0, hmac.new(authkey, bytes(challenge), "sha256").digest()))
    peer.send_raw(first)
    peer.send_raw(rest)
    _, verdict = peer.t.recv(512)
    if bytes(verdict) != b"#RMWELCOME#":
        raise FuzzError(f"a right answer sent in two pieces was refused: {bytes(verdict)!r}")


def fuzz(frames_total: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    marker = Path(tempfile.mkdtemp(prefix="reflectmgr-fuzz-")) / "unpickled"
    frames = Frames(rng, pickle.dumps(_Bomb(str(marker))))
    counts: dict[str, int] = {}
    report: dict[str, Any] = {"seed": seed, "frames": frames_total, "phases": {}}
    per_phase = -(-frames_total // len(PHASES))  # rounded up: at least the frames asked for
    try:
        for transport in TRANSPORTS:
            if transport == "shm" and not hasattr(socket, "send_fds"):
                continue
            report[transport] = _fuzz_manager(transport, per_phase, frames, counts, report["phases"])
        if marker.exists():
            raise FuzzError("a pickle sent before authentication was loaded")
    finally:
        if marker.exists():
            marker.unlink()
        marker.parent.rmdir()
    report["kinds"] = counts
    return report


def _fuzz_manager(
    transport: str, per_phase: int, frames: Frames, counts: dict[str, int], phases: dict[str, Any]
) -> dict[str, Any]:
    """Both phases of one transport against a manager of its own (the shm one with its
    dispatcher serving from the first client, so that both of the manager's serving paths are
    fuzzed: a thread per connection on the others)."""
    address = ("127.0.0.1", 0) if transport == "tcp" else None
    os.environ["REFLECTMGR_DISPATCHER"] = "always" if transport == "shm" else "auto"
    with reflectmgr.Manager(address, transport=transport, max_frame=MAX_FRAME) as m:
        legit = Legit(m)
        legit.start()
        objects = m.stats().objects
        try:
            for auth in (False, True):
                started = time.perf_counter()
                run_phase(m, transport, auth, per_phase, frames, counts)
                phases[f"{transport} {'after' if auth else 'before'} auth"] = {
                    "frames": per_phase,
                    "seconds": round(time.perf_counter() - started, 2),
                }
                if legit.error is not None:
                    break
        finally:
            legit.stop.set()
            legit.join(STUCK)
        if legit.error is not None:
            raise FuzzError(f"the legitimate client failed: {legit.error!r}") from legit.error
        _settled(m, legit, objects)
        if legit.worst > LATENCY_BOUND:
            raise FuzzError(f"the legitimate client waited {legit.worst:.2f} s for a round trip")
        if legit.peak_rss - legit.baseline_rss > MEMORY_BOUND:
            raise FuzzError(f"the manager grew by {(legit.peak_rss - legit.baseline_rss) >> 20} MiB")
        return {
            "legit_round_trips": legit.rounds,
            "legit_worst_ms": round(legit.worst * 1000, 1),
            "manager_rss_growth_mib": round((legit.peak_rss - legit.baseline_rss) / (1 << 20), 1),
        }


def _settled(m: reflectmgr.Manager, legit: Legit, objects: int) -> None:
    """The fuzzing sessions are gone, with everything they made; the legitimate state is intact."""
    deadline = time.monotonic() + STUCK * 3
    while True:
        stats = m.stats()
        if stats.clients == 1 and stats.objects == objects:
            break
        if time.monotonic() > deadline:
            raise FuzzError(f"after the fuzz the manager has {stats.clients} clients and {stats.objects} objects")
        time.sleep(0.05)  # polling the manager's own count; the condition decides
    if legit.d["n"] != legit.rounds or m.root != {}:
        raise FuzzError("the legitimate client's state changed under the fuzz")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"fuzz: {args.frames} frames, seed {seed}", flush=True)
    started = time.perf_counter()
    try:
        report = fuzz(args.frames, seed)
    except FuzzError as exc:
        print(f"FAILED (replay with --seed {seed}): {exc}", flush=True)
        return 1
    report["seconds"] = round(time.perf_counter() - started, 1)
    for name, phase in report["phases"].items():
        print(f"  {name:18} {phase['frames']:7} frames  {phase['seconds']:7.1f} s")
    for transport in TRANSPORTS:
        r = report.get(transport)
        if r is None:
            continue
        print(
            f"  {transport} manager: legitimate client {r['legit_round_trips']} round trips, worst "
            f"{r['legit_worst_ms']} ms; manager RSS growth {r['manager_rss_growth_mib']} MiB"
        )
    print(f"  kinds: {report['kinds']}")
    sent = sum(phase["frames"] for phase in report["phases"].values())
    print(f"ok: {sent} frames in {report['seconds']} s, seed {seed}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
