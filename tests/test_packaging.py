"""Issue 13: what a release would ship. The sdist and the wheel build; the wheel carries py.typed
and the version from its one place; installed into a fresh virtual environment, it runs the
quickstart, importing the installed package, not this checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import reflectmgr

from .helpers import untraced_env

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT = 240.0


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Untraced: the build and pip run none of this checkout's lines, nor does the installed copy.
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=untraced_env()
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_installs_in_a_fresh_environment_and_runs_the_quickstart(tmp_path: Path) -> None:
    # Built from a copy: building writes build/ and egg-info next to the sources, which this
    # checkout's editable install uses while other tests run.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".coverage*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.so"
        ),
    )
    dist = tmp_path / "dist"
    built = _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, src, cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("reflectmgr-*.whl")
    (sdist,) = dist.glob("reflectmgr-*.tar.gz")
    # A platform wheel: it carries the compiled modules (_native.c, _plain.c) where a C compiler is.
    assert re.match(rf"reflectmgr-{re.escape(reflectmgr.__version__)}-cp3\d+-.+\.whl", wheel.name), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    if sys.platform == "linux" and shutil.which("cc"):
        assert any(re.fullmatch(r"reflectmgr/_transport/_native\..+\.so", n) for n in names), names
        assert any(re.fullmatch(r"reflectmgr/_wire/_plain\..+\.so", n) for n in names), names
    assert "reflectmgr/_wire/_plain.pyi" in names
    assert "reflectmgr/py.typed" in names and "reflectmgr/cli.py" in names and "reflectmgr_pytest.py" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    with tarfile.open(sdist) as tf:
        assert any(n.endswith("reflectmgr/py.typed") for n in tf.getnames())
        assert any(n.endswith("reflectmgr/_transport/_native.c") for n in tf.getnames()), "the sdist builds it"
        assert any(n.endswith("reflectmgr/_wire/_plain.c") for n in tf.getnames()), "the sdist builds it"

    venv = tmp_path / "venv"
    # Without a pip of its own (ensurepip takes 6-8 s): this environment's pip installs into it.
    made = _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel, cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    where = _run(python, "-c", "import reflectmgr; print(reflectmgr.__file__, reflectmgr.__version__)", cwd=tmp_path)
    assert str(venv) in where.stdout and reflectmgr.__version__ in where.stdout, where.stdout + where.stderr
    # The quickstart, copied out of the checkout so that nothing of it is importable from there.
    quickstart = tmp_path / "quickstart.py"
    quickstart.write_text((ROOT / "examples" / "quickstart.py").read_text())
    ran = _run(python, quickstart, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.strip()
    helped = _run(python, "-m", "reflectmgr", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "serve" in helped.stdout
