"""Issue 12: malformed frames over every transport, before and after authentication, while a
legitimate client goes on (benchmarks/fuzz.py; CI runs 10 000 frames, the full run 100 000)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"
FRAMES = 10_000
# CI replays one seed, so that a run fails for a change, never for the draw. Other seeds are for
# `python3 benchmarks/fuzz.py` runs by hand. Seed 579931532 (100 000 frames) found the ~5 s stall
# that reflectmgr/_wire/memo_guard.py now prevents (worst round trip 3-20 ms since); it also
# prints "SystemError: deallocated bytearray object has exported buffers" from the pipe and tcp
# managers: CPython's PyByteArray_FromStringAndSize, on a failed allocation (a bit flip makes a
# BYTEARRAY8 announce 8.6e18 bytes), frees the new object with its export count not yet set.
# The unpickler then raises MemoryError, which the sender gets as its answer; nothing is lost.
SEED = 1


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ten_thousand_malformed_frames_leave_the_manager_serving(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--frames", str(FRAMES), "--seed", str(SEED), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=360,
        cwd=tmp_path,
    )
    # On failure the output names the seed that replays it: benchmarks/fuzz.py --seed N.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The managers inherit the script's stderr: a traceback, a thread's unhandled error or a
    # warning logged while it served garbage would show there.
    assert proc.stderr == "", proc.stderr
    report = json.loads(out.read_text())
    assert sum(phase["frames"] for phase in report["phases"].values()) >= FRAMES
    transports = ["pipe", "tcp"] + (["shm"] if "shm after auth" in report["phases"] else [])
    for transport in transports:
        for auth in ("before", "after"):
            assert report["phases"][f"{transport} {auth} auth"]["frames"] > 0
        figures = report[transport]
        assert figures["legit_round_trips"] > 0 and figures["legit_worst_ms"] <= 1000.0, figures
        assert figures["manager_rss_growth_mib"] <= 64, figures
    kinds = report["kinds"]
    for kind in ("random", "truncated", "huge", "corrupt", "bomb", "shape", "split"):
        assert kinds.get(kind, 0) > 0, kind
