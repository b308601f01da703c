"""Physical baselines: what the machine allows, measured in the same run as the systems.

socketpair ping-pong   one byte there and back between two processes (a kernel wake-up each way)
pipe ping-pong         the same over two pipes
  ..., one core        the same with both processes on one CPU: two wake-ups and two switches,
                       nothing overlapping (the kernel's share of a call in field scenario (e))
shm ping-pong          two processes flipping a byte in shared memory, spinning (no kernel)
64 MiB copy            one in-process copy of 64 MiB (the ceiling for moving a large value)
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import time
from multiprocessing import shared_memory
from typing import Any

ROUNDS = 2000
# The CPU of the one-core figures (field.py's scenario (e) uses the same one)
ONE_CORE = sorted(os.sched_getaffinity(0))[-1:] if hasattr(os, "sched_getaffinity") else []


def _echo_socket(sock: socket.socket) -> None:
    while True:
        data = sock.recv(16)
        if not data or data == b"q":
            return
        sock.sendall(data)


def socketpair_pingpong(rounds: int = ROUNDS) -> float:
    a, b = socket.socketpair()
    p = multiprocessing.get_context("fork").Process(target=_echo_socket, args=(b,))
    p.start()
    b.close()
    for _ in range(100):
        a.sendall(b"x")
        a.recv(16)
    start = time.perf_counter()
    for _ in range(rounds):
        a.sendall(b"x")
        a.recv(16)
    elapsed = (time.perf_counter() - start) / rounds
    a.sendall(b"q")
    p.join()
    a.close()
    return elapsed


def _echo_pipe(r: int, w: int, cpu: int | None = None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while True:
        data = os.read(r, 16)
        if not data or data == b"q":
            return
        os.write(w, data)


def pipe_pingpong(rounds: int = ROUNDS, cpu: int | None = None) -> float:
    """A one-byte round trip over two pipes; with ``cpu``, both processes confined to it."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    p = multiprocessing.get_context("fork").Process(target=_echo_pipe, args=(r1, w2, cpu))
    p.start()
    mask = os.sched_getaffinity(0) if cpu is not None else None
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        for _ in range(100):
            os.write(w1, b"x")
            os.read(r2, 16)
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(w1, b"x")
            os.read(r2, 16)
        elapsed = (time.perf_counter() - start) / rounds
    finally:
        if mask is not None:
            os.sched_setaffinity(0, mask)
        os.write(w1, b"q")
        p.join()
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    return elapsed


def _shm_echo(name: str, rounds: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    buf = shm.buf
    for i in range(rounds):
        want = (2 * i + 1) & 0xFF
        while buf[0] != want:
            pass
        buf[0] = (want + 1) & 0xFF
    del buf
    shm.close()


def shm_pingpong(rounds: int = ROUNDS * 10) -> float:
    shm = shared_memory.SharedMemory(create=True, size=64)
    buf = shm.buf
    buf[0] = 0
    p = multiprocessing.get_context("fork").Process(target=_shm_echo, args=(shm.name, rounds))
    p.start()
    start = time.perf_counter()
    for i in range(rounds):
        buf[0] = (2 * i + 1) & 0xFF
        want = (2 * i + 2) & 0xFF
        while buf[0] != want:
            pass
    elapsed = (time.perf_counter() - start) / rounds
    p.join()
    del buf
    shm.close()
    shm.unlink()
    return elapsed


def copy_64mib() -> float:
    src = bytearray(64 << 20)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        bytes(src)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(rounds: int = ROUNDS) -> dict[str, Any]:
    return {
        "socketpair ping-pong": socketpair_pingpong(rounds),
        "pipe ping-pong": pipe_pingpong(rounds),
        **({"pipe ping-pong, one core": pipe_pingpong(rounds, ONE_CORE[0])} if ONE_CORE else {}),
        "shm ping-pong": shm_pingpong(rounds * 10),
        "64 MiB copy": copy_64mib(),
    }
