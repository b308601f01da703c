"""Static checks run with the suite, so the one test command covers them: ruff and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import untraced_env

ROOT = Path(__file__).resolve().parents[1]
STATIC_TIMEOUT = 55.0  # mypy on a cold cache takes ~10-20 s here


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STATIC_TIMEOUT,
        env=untraced_env(),
    )


def test_ruff_check() -> None:
    proc = _run("ruff", "check", "reflectmgr", "reflectmgr_pytest.py", "tests", "examples", "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = _run("ruff", "format", "--check", "reflectmgr", "reflectmgr_pytest.py", "tests", "examples", "benchmarks")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_mypy_strict() -> None:
    proc = _run("mypy", "--no-error-summary")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_docs_site_builds_strict(tmp_path: Path) -> None:
    # Broken links, missing anchors and API references that do not resolve fail the build.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        env=untraced_env(NO_MKDOCS_2_WARNING="1"),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "reflectmgr.Manager" in api and "server_context" in api  # the reference was generated


def test_every_test_the_reliability_page_cites_exists() -> None:
    # docs/reliability.md promises only what a test checks: a renamed or deleted test must fail here.
    import re

    cited = 0
    for line in (ROOT / "docs" / "reliability.md").read_text().splitlines():
        current = None
        for match in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)", line):
            current = match.group(1) or current
            assert current is not None, f"a citation without its file: {line}"
            source = (ROOT / current).read_text()
            assert re.search(rf"def {match.group(2)}\b", source), f"{current}::{match.group(2)} does not exist"
            cited += 1
    assert cited >= 20
