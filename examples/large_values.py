"""Large values through shared memory: a blob store in the manager, filled and read by workers.

The default transport moves every call through shared-memory rings. Large ``bytes``,
``bytearray`` and ``memoryview`` values (and NumPy arrays) skip the pickle: they are copied once
into the ring and once into the object the other side receives.

Run:  python examples/large_values.py
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import reflectmgr

BLOB = 8 * 1024 * 1024  # 8 MiB per blob


def produce(store: Any, name: str) -> str:
    """Make a blob in this worker and put it into the shared store; return its digest."""
    blob = hashlib.sha256(name.encode()).digest() * (BLOB // 32)
    store[name] = blob
    return hashlib.sha256(blob).hexdigest()[:12]


def consume(store: Any, name: str) -> str:
    """Read a blob back from the shared store in this worker; return its digest."""
    blob = store[name]
    assert type(blob) is bytes and len(blob) == BLOB
    return hashlib.sha256(blob).hexdigest()[:12]


def main() -> None:
    with reflectmgr.Manager() as m:
        store = m.dict()
        names = [f"blob-{i}" for i in range(8)]
        with m.executor(max_workers=2) as ex:
            start = time.perf_counter()
            made = list(ex.map(produce, [store] * len(names), names))
            read = list(ex.map(consume, [store] * len(names), names))
            seconds = time.perf_counter() - start
        assert made == read, "every blob reads back exactly as it was written"
        moved = 2 * len(names) * BLOB / (1 << 20)
        print(f"transport {m.transport}: {len(names)} blobs of {BLOB >> 20} MiB written and read back by 2 workers")
        print(f"{moved:.0f} MiB moved in {seconds:.2f} s; digests match: {made[:2]} ...")
        view = memoryview(bytearray(b"header" + bytes(10)))  # views travel too, as views
        store["view"] = view
        print("a memoryview stored and read back:", bytes(store["view"][:6]))


if __name__ == "__main__":
    main()
