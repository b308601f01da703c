"""The benchmarks run (in a smoke mode: a few calls each), so they cannot rot. No timing is
asserted: numbers are read by people, in a full run (benchmarks/README.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import untraced_env

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SMOKE_TIMEOUT = 240.0

# The benchmark scripts do not depend on the Python version, and each smoke run occupies every
# core for up to a minute: they run once per CI, under Python 3.11 (the default python3 there),
# within CI's time budget (README). The subinterpreter benchmark, which needs 3.13, runs there.
once_per_ci = pytest.mark.skipif(
    sys.version_info >= (3, 12),
    reason="benchmark smoke runs once per CI, under Python 3.11: the scripts are the same on every version",
)


def _run(*args: str) -> str:
    # Without coverage's subprocess patch: every process of a benchmark traced made these tests
    # about a third slower (77 s against 57 s here), for lines the rest of the suite covers.
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        cwd=BENCH.parent,
        env=untraced_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_benchmark_suite_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    text = _run(
        str(BENCH / "run.py"), "--smoke", "--only", "stdlib", "reflectmgr_shm", "reflectmgr_pipe", "--json", str(out)
    )
    assert "reflectmgr shm" in text and "reflectmgr pipe" in text and "physical limits" in text
    # the field scenarios run in the same command, against the same anchor
    scenarios = ["workers: d[k]", "(b) 8 clients: calls/s", "(c) cores busy: Queue put+get", "(d) CPU/call"]
    if hasattr(os, "sched_setaffinity"):  # (e) confines the server and its client to one CPU
        scenarios += ["(e) one core: d[k]", "(e)'s floor", "pipe ping-pong, one core"]
    for scenario in scenarios:
        assert scenario in text, scenario
    assert out.read_text().startswith("{")


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_executor_benchmark_runs() -> None:
    out = _run(str(BENCH / "executor.py"), "--quick")
    assert "task overhead" in out and out.count("reflectmgr spawn") == 4  # first and later, quiet and busy
    assert out.count("us/task, ratio") == 4  # map and submit, quiet and with their loaded twin
    assert "quiet, submit" in out and "every core busy, map" in out


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_placement_benchmark_runs_free_and_placed() -> None:
    text = _run(str(BENCH / "placement.py"), "--smoke", "--clients", "1", "2")
    if len(os.sched_getaffinity(0)) < 2:
        assert text.startswith("skipped")
        return
    assert "1 client :" in text and "2 clients:" in text and text.count("; placed ") == 2
    assert "free   reflectmgr" in text and "placed reflectmgr" in text  # the bursts after a pause


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_repeated_field_runs_report_the_spread_of_both_systems() -> None:
    text = _run(str(BENCH / "repeat.py"), "--smoke")
    assert "2 runs of 50 rounds" in text
    assert text.count("stdlib Manager") == 2 and text.count("reflectmgr shm") == 2  # both measures
    assert text.count("slow runs") == 4 and text.count("ratio") == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_interpreter_benchmark_runs_or_says_why_not() -> None:
    text = _run(str(BENCH / "interpreters.py"), "--quick")
    assert ("ratio" in text) if sys.version_info >= (3, 13) else ("skipped" in text)


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_startup_benchmark_runs_quiet_and_loaded() -> None:
    text = _run(str(BENCH / "startup.py"), "--smoke")
    assert "quiet:" in text and "every core busy" in text and text.count("script top level") == 2  # a case each
    assert all(text.count(f"{which} start:") == 2 for which in ("first", "second", "later"))


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_version_comparison_runs_quiet_and_loaded() -> None:
    text = _run(str(BENCH / "versions.py"), "--quick", "--load", "1")
    assert "1 busy processes" in text and "Event set+wait" in text


@once_per_ci
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
@pytest.mark.timeout(300)
def test_ray_benchmark_runs() -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    text = _run(str(BENCH / "ray_bench.py"), "--smoke")
    for line in ("quiet, 1 task:", "tasks at once:", "busy loops beside:", "reused workers:", "ratio p50"):
        assert line in text, line


@once_per_ci
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt install valgrind)")
def test_instruction_counts_come_out() -> None:
    # Ours alone, one run (--smoke): every interpreter started under callgrind costs about 12 s of
    # CPU here, and the two run lengths of a per-call figure took 48 s for a check that the tools
    # work (valgrind, the roles found in its log); the stdlib's side is four lines of SyncManager.
    # The subtraction is three lines. The full table: python3 benchmarks/instructions.py
    text = _run(str(BENCH / "instructions.py"), "--calls", "50", "--systems", "reflectmgr", "--smoke")
    rows = {}
    for line in text.splitlines():
        if line.startswith(("stdlib ", "reflectmgr ")) and "/" not in line:  # the table, not the ratio
            name, *cells = line.split()
            rows[name] = [int(cell.replace(",", "")) for cell in cells]
    assert set(rows) == {"reflectmgr"}, text
    for client, manager, total in rows.values():
        assert client > 0 and manager > 0, text
        assert abs(total - client - manager) <= 1, text  # each cell rounded on its own
