"""How a side waits for its peer: spin while it pays, then sleep in the kernel until woken.

    wait:  data there? --no--> may spin? (learned window, the peer is running, a core is free)
                                  |yes: spin (no syscalls, no sched_yield) --data--> done
                                  v no / window over
                               sleep: futex on the shared word (Linux), or poll the socket doorbell
    wake:  publish, fence, "is the reader asleep?" --no--> nothing (no syscall)
                                                   --yes--> FUTEX_WAKE / one byte on the socket

Spinning saves the sleeper's kernel wake-up (most of a round trip on a quiet machine) but holds a
core. It pays only when the peer is on a core now and will answer within microseconds, and only
when no other runnable task waits for the core we would hold: on a machine with more runnable
tasks than cores, a spinner delays the very peer it waits for. So :class:`SpinPolicy` spins only
while its learned window is open (it halves with every spin that caught nothing, down to
nothing, and comes back when data arrives within its reach), never while the peer waits on our
CPU (queued behind us), and then either for the window when the kernel's count of runnable
tasks (``/proc/loadavg``) is at most the cores we may use, or, with every core taken, for a few
microseconds when the caller knows the peer is running right now (awake, not asleep in the
kernel: it will answer before a sleep and a wake-up would even complete).

The futex is the Linux system call on a 32-bit word of the shared mapping (the low half of a
ring position): the sleeper passes the value it saw, so a publish between its last look and the
call returns at once; the waker calls FUTEX_WAKE only when the sleeper's flag says it sleeps. It
is called from C (``_native.c``, built with the package where a C compiler was; ~0.3 us a call
here) or else through ctypes (~1.4 us: argument conversion and libffi around the same syscall);
``REFLECTMGR_NATIVE=0`` forces ctypes.
Other platforms, or ``REFLECTMGR_WAKE=socket``, use the socket as doorbell (one byte per wake-up).
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

# -- the futex ---------------------------------------------------------------------------------
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not PRIVATE): the word lives in a mapping two processes share
_SYSCALL_NUMBERS = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "ppc64le": 221}


try:
    import ctypes
except ImportError:  # a build without ctypes (or an interpreter that cannot load it): the doorbell
    ctypes = None  # type: ignore[assignment]

try:  # the same calls in C (_native.c), built with the package where a C compiler was
    from . import _native
except ImportError:
    _native = None  # type: ignore[assignment]


def _wanted() -> bool:
    return sys.platform == "linux" and os.environ.get("REFLECTMGR_WAKE", "futex") == "futex"


def _load_futex() -> Any:
    """The libc syscall function through ctypes, or None where the futex cannot be had."""
    if not _wanted() or ctypes is None:
        return None
    number = _SYSCALL_NUMBERS.get(platform.machine().lower())
    if number is None:
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall  # ctypes releases the GIL around the call
    except (OSError, AttributeError):
        return None
    # No argtypes: converting five declared arguments doubles the cost of a call (0.8 us against
    # 0.4 us here). Every argument is passed as what the C side takes without conversion: the
    # addresses as c_void_p made once (word()), small ints as C ints (the expected value is
    # masked to 32 bits, which is what the kernel compares), None as NULL.
    syscall.restype = ctypes.c_long
    probe = ctypes.c_uint32(0)
    if syscall(number, ctypes.c_void_p(ctypes.addressof(probe)), _FUTEX_WAKE, 1, None) < 0:  # seccomp, old kernel
        return None
    global _NUMBER, _timespec

    class Timespec(ctypes.Structure):
        _fields_: ClassVar[list[tuple[str, Any]]] = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    _NUMBER, _timespec = number, Timespec
    return syscall


def _native_works() -> bool:
    """The C module is there, wanted (REFLECTMGR_NATIVE=0 turns it off) and allowed to make the call."""
    if _native is None or not hasattr(_native, "wake") or not _wanted() or ctypes is None:
        return False
    if os.environ.get("REFLECTMGR_NATIVE", "1") == "0":
        return False
    probe = ctypes.c_uint32(0)
    return bool(_native.wake(ctypes.addressof(probe)) >= 0)  # seccomp, old kernel: -errno


_NUMBER = 0
_timespec: Any = None
NATIVE = _native_works()
_syscall = _load_futex()  # also where the C module is: the fallback stays tested
NATIVE_MODULE = _native if NATIVE else None  # for shm.py: the ring's common case in C
FUTEX = NATIVE or _syscall is not None


_timeouts: dict[float, Any] = {}  # seconds -> a timespec passed by reference (it keeps it alive)


def word(address: int) -> Any:
    """What futex_wait and futex_wake take for the u32 at ``address`` (made once per word)."""
    if NATIVE or ctypes is None:
        return address
    return ctypes.c_void_p(address)


def _ctypes_futex_wait(address: Any, expected: int, seconds: float) -> None:
    ts = _timeouts.get(seconds)
    if ts is None:
        ts = ctypes.byref(_timespec(int(seconds), int((seconds % 1) * 1e9)))
        if len(_timeouts) < 8:  # the usual bounds (SAFETY_MS...), kept for reuse
            _timeouts[seconds] = ts
    _syscall(_NUMBER, address, _FUTEX_WAIT, expected & 0xFFFFFFFF, ts)


def _ctypes_futex_wake(address: Any) -> None:
    _syscall(_NUMBER, address, _FUTEX_WAKE, 0x7FFFFFFF, None)


# futex_wait(address, expected, seconds): sleep while the u32 at ``address`` (a :func:`word`)
# holds ``expected``, at most ``seconds``; returns early when woken, when the word differs, or on
# a signal. The caller looks again either way.
futex_wait: Callable[[Any, int, float], object] = _native.wait if NATIVE else _ctypes_futex_wait
_futex_wake: Callable[[Any], object] = _native.wake if NATIVE else _ctypes_futex_wake


def futex_wake(address: Any) -> None:
    _futex_wake(address)
    load.stale()  # the task we woke wants a core now: the next look at the load must see it


def low_word_offset() -> int:
    """Byte offset of the low 32 bits inside a native u64 (where a futex on a position points)."""
    return 0 if sys.byteorder == "little" else 4


def _load_getcpu() -> Any:
    if ctypes is None:
        return None
    try:
        fn = ctypes.CDLL(None).sched_getcpu  # glibc and musl: the vDSO, ~0.1 us
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = []
    return fn


def _no_cpu() -> int:
    return -1


# current_cpu(): the CPU this thread runs on now, or -1 where that cannot be known.
current_cpu: Callable[[], int] = _native.cpu if NATIVE and hasattr(_native, "cpu") else (_load_getcpu() or _no_cpu)


# -- is a core free? ---------------------------------------------------------------------------
def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


CORES = _usable_cores()


def gil_enabled() -> bool:
    """Whether this interpreter has a GIL now (a free-threaded build may turn it on at run time)."""
    return bool(getattr(sys, "_is_gil_enabled", lambda: True)())


# The kernel's count of runnable tasks is read at most this often (a read costs ~2 us).
SAMPLE_NS = 200_000


class _Load:
    """The number of runnable tasks on the machine, from /proc/loadavg ("0.5 0.4 0.3 3/345 99")."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/loadavg", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._fd = None
        self._at = 0
        self._running = 0
        os.register_at_fork(after_in_child=self._reopen)

    def _reopen(self) -> None:
        # The descriptor is inherited and still valid (pread has no shared offset): keep it.
        self._at = 0

    def stale(self) -> None:
        """Forget the last sample: something (a wake-up we made) changed the count."""
        self._at = 0

    def cores_free(self) -> bool:
        """True if every runnable task on the machine can have a core (counting the caller)."""
        if self._fd is None or CORES < 2:
            return CORES >= 2
        now = time.perf_counter_ns()
        if now - self._at > SAMPLE_NS:
            self._at = now
            try:
                self._running = int(os.pread(self._fd, 128, 0).split()[3].split(b"/")[0])
            except (OSError, ValueError, IndexError):
                self._running = 0
        return self._running <= CORES


load = _Load()

# -- when to spin ------------------------------------------------------------------------------
# The longest spin: a few calls' worth of work on the other side (a small call takes ~5-10 us of
# CPU per side here, a kernel wake-up ~20 us). Longer wastes a core when the peer is slow.
SPIN_NS = 100_000
MIN_SPIN_NS = 5_000  # a window halved below this is no window: the reader has backed off
# With no core free, a spin while the peer runs (optimistic spinning) lasts at most this: a small
# call's service time on the other side.
SHORT_SPIN_NS = 20_000
# Data this soon after a missed spin gave way to a sleep: the peer was queued behind the spin.
BLOCKED_NS = 30_000
MAX_STRIKES = 64  # a closed window reopens after at most this many short sleeps in a row

# One spinner per interpreter: threads spinning at once in Python fight over the GIL, and in a
# manager serving many clients a spinner would starve the thread that has work to do (the C
# module's spin releases the GIL, but each spinner still holds a core).
_spinner = threading.Lock()


def _new_spinner_after_fork() -> None:
    # A thread of the parent may have held it at fork: the child's only thread must not find it taken.
    global _spinner
    _spinner = threading.Lock()


os.register_at_fork(after_in_child=_new_spinner_after_fork)


class SpinPolicy:
    """When one connection's reader spins. Its window halves with every spin that caught nothing,
    down to nothing (it has backed off), and comes back whole when data arrives within a window's
    reach of a wait's start: a spin that catches it, or a sleeper that learns (from the writer's
    stamp) how soon the data came. Backing off takes several misses, coming back one short wait:
    quick to spin again once both sides run, slow to give up on a peer that does.

    One pattern backs off for longer: a spin that caught nothing, then data within BLOCKED_NS of
    the sleep that followed. That is the peer waiting for our CPU (the kernel put it there when we
    woke it, after it last said where it waits, and a spinner is not preempted at once): it ran as
    soon as we slept. Reopening the window then would spin it away on every call, so the window
    closes, and reopens only after ``strikes`` short sleeps in a row; each such pattern doubles
    that count (up to MAX_STRIKES), and a spin that catches data sets it back to one."""

    __slots__ = ("_short", "_spun", "allowed", "max_ns", "strikes", "window")

    def __init__(self, enabled: bool) -> None:
        self.allowed: Callable[[], bool] | None = None  # another condition of its owner's
        self.max_ns = SPIN_NS if enabled and CORES > 1 else 0
        self.window = self.max_ns
        self.strikes = 1  # short sleeps in a row that reopen a closed window
        self._short = 0  # short sleeps in a row so far
        self._spun = 0  # how long this wait spun and caught nothing, in ns

    def begin(self, peer_running: bool = False, peer_here: bool = False) -> int:
        """How long this wait may spin, in ns (0: not at all). Never when the peer waits on this
        CPU (``peer_here``: it would be queued behind our spin; sleeping hands it the CPU, and a
        wake-up on the same CPU is cheap). With a core free, its window. With none free, at most
        SHORT_SPIN_NS and only if the caller knows the peer is running now (it answers within
        microseconds, and sleeping would cost two context switches). Nonzero means the caller
        holds the interpreter's spinner and must call :meth:`end`."""
        self._spun = 0
        window = self.window
        if not window or peer_here or (self.allowed is not None and not self.allowed()):
            return 0
        if not load.cores_free():
            if not peer_running:
                return 0
            window = min(window, SHORT_SPIN_NS)
        if not _spinner.acquire(False):
            return 0
        self._spun = window
        return window

    def end(self, caught: bool) -> None:
        _spinner.release()
        if caught:
            self.window = self.max_ns
            self.strikes = 1
            self._spun = 0
            return
        window = self.window >> 1
        self.window = window if window >= MIN_SPIN_NS else 0

    def slept(self, arrived_ns: int) -> None:
        """A wait that slept; the data arrived ``arrived_ns`` after the sleep began."""
        spun, self._spun = self._spun, 0
        if spun and arrived_ns < BLOCKED_NS:  # the peer ran as soon as we slept: it waited for our CPU
            self.window = 0
            self.strikes = min(self.strikes * 2, MAX_STRIKES)
            self._short = 0
            return
        if spun + arrived_ns >= self.max_ns:  # from the wait's start, beyond a window's reach
            self._short = 0
            return
        self._short += 1
        if self._short >= self.strikes:
            self._short = 0
            self.window = self.max_ns
