"""Every program in examples/ runs to completion, as a user would run it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
RUN_TIMEOUT = 50.0  # below pytest-timeout, so a hang reports as this test's failure


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path: Path) -> None:
    if path.stem.startswith("ray_") and importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed (pip install -e '.[ray]')")
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=path.parent
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "an example prints what it did"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_there_are_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {
        "quickstart",
        "remote_tcp",
        "process_pool",
        "interpreter_pool",
        "large_values",
        "secure_tcp",
        "ray_shared_state",
    }
