"""Issue 13: the pytest-xdist plugin (reflectmgr_pytest.py), run on a sample project with
``pytest -n 4``: the once-only helper runs once, the counter is exact, the dict and the lock are
the same in every worker, and nothing is left running. Without the option the plugin does nothing."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SAMPLE_CONFTEST = """
import os
import pytest
from reflectmgr_pytest import shared

def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        return  # a worker: the controller reports
    objects = shared(session.config).objects
    with open("report.txt", "w") as out:
        out.write(f"{objects['counter'].value} {len(objects['dict'])}")
"""

SAMPLE_TESTS = """
import os
import pytest

def build_database(path):
    with open(path, "a") as f:  # appends one line per run: the test counts them
        f.write(f"built by {os.getpid()}\\n")
    return {"url": "sqlite:///shared.db", "builder": os.getpid()}

@pytest.mark.parametrize("i", range(40))
def test_work(i, run_once, shared_counter, shared_dict, shared_lock):
    db = run_once("database", build_database, os.path.abspath("builds.txt"))
    assert db["url"] == "sqlite:///shared.db"
    shared_dict[i] = os.getpid()
    with shared_lock("port"):
        shared_counter.increment()

def test_a_failing_setup_fails_everywhere_the_same(run_once):
    def broken():
        raise ValueError("no database server")
    with pytest.raises(ValueError, match="no database server"):
        run_once("broken", broken)
"""


def test_four_workers_share_one_session(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SAMPLE_CONFTEST)
    pytester.makepyfile(test_sample=SAMPLE_TESTS)
    result = pytester.runpytest_subprocess("-n", "4", "--reflectmgr-shared", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=41)
    builds = (pytester.path / "builds.txt").read_text().splitlines()
    assert len(builds) == 1, builds  # run once, across four workers
    counter, keys = (pytester.path / "report.txt").read_text().split()
    assert (int(counter), int(keys)) == (40, 40)  # exact: every increment counted once


def test_the_ini_option_enables_it_and_without_it_the_fixtures_say_how(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_counter(shared_counter):\n    assert shared_counter.increment() == 1\n")
    off = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*--reflectmgr-shared*"])
    pytester.makeini("[pytest]\nreflectmgr_shared = true\n")
    on = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # no xdist: one process is both
    on.assert_outcomes(passed=1)
