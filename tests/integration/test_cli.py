"""Issue 13: ``python -m reflectmgr serve | stats | bench``, each run as a user runs it, in a
subprocess: the printed address, the log of who connects, a clean stop on SIGTERM and SIGINT,
exit codes scripts can rely on, and an authkey that never comes from the command line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import reflectmgr
from reflectmgr.cli import parse_address

from ..helpers import DEATH, PROMPT, gone

pytestmark = [pytest.mark.tcp, pytest.mark.timeout(120)]
KEY = "cli test key"


def _env(key: str | None = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REFLECTMGR_AUTHKEY"}
    if key is not None:
        env["REFLECTMGR_AUTHKEY"] = key
    return env


def _cli(*args: str, key: str | None = KEY, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reflectmgr", *args], capture_output=True, text=True, env=_env(key), timeout=timeout
    )


class Served:
    def __init__(self, proc: subprocess.Popen[str], address: str) -> None:
        self.proc = proc
        self.address = address

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=DEATH)
        return self.proc.returncode, err


# Runs the command that follows with SIGINT ignored, as a shell starts a background job.
_SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


@contextlib.contextmanager
def _running(*args: str, ignore_sigint: bool = False) -> Iterator[subprocess.Popen[str]]:
    """``python -m reflectmgr *args`` in the background; killed and reaped if still running.
    ``ignore_sigint``: it starts with SIGINT ignored (through a shell's ``trap`` and ``exec``)."""
    command = [sys.executable, "-m", "reflectmgr", *args]
    if ignore_sigint:
        command = _SIGINT_IGNORED + command
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEATH)


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT now (its signal dispositions, as the kernel has them)."""
    with open(f"/proc/{pid}/status") as status:
        ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def _serving_line(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The address ``serve`` prints once it listens, and the whole line."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"serving at (\S+),", line)
    assert found, line + (proc.stderr.read() if proc.stderr and proc.poll() is not None else "")
    return found.group(1), line


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with _running("serve", "--address", "127.0.0.1:0") as proc:
        yield Served(proc, _serving_line(proc)[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_prints_its_address_logs_clients_and_stops_cleanly(served: Served, sig: int) -> None:
    conn = reflectmgr.connect(parse_address(served.address), KEY.encode())
    try:
        conn.root["d"] = conn.dict(a=1)
        conn.root["d"]["b"] = 2
        assert conn.root["d"] == {"a": 1, "b": 2}
    finally:
        conn.close()
    pid = served.proc.pid
    code, err = served.stop(sig)
    assert code == 0, err
    assert re.search(rf"client pid {os.getpid()} connected from 127\.0\.0\.1:\d+", err), err
    assert "stopping" in err and "Traceback" not in err
    assert gone(pid)


def test_stats_prints_a_reading_and_json(served: Served) -> None:
    text = _cli("stats", served.address)
    assert text.returncode == 0, text.stderr
    assert re.search(r"clients \d+ +connections \d+ +objects \d+ +rss [\d.]+ MiB +calls/s \d+", text.stdout), (
        text.stdout
    )
    out = _cli("stats", served.address, "--json", "--count", "2", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    readings = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(readings) == 2
    for r in readings:
        assert {"clients", "connections", "objects", "rss_bytes", "calls", "calls_per_s", "pid"} <= set(r)
        assert r["pid"] == served.proc.pid and r["rss_bytes"] > 0
    assert readings[1]["calls"] > readings[0]["calls"]  # each reading is a call


@pytest.mark.parametrize(
    ("sig", "ignored"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT", "SIGINT-ignored-at-start", "SIGTERM"],
)
def test_stats_watch_refreshes_until_interrupted(served: Served, sig: int, ignored: bool) -> None:
    # Ignored at start: as a background job of a script starts (the suite itself may run so, and
    # then every child inherits it); --watch stopped only by SIGKILL there.
    if ignored:  # the harness: such a process does start with SIGINT ignored
        probe = [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)"]
        assert "True" in subprocess.run(_SIGINT_IGNORED + probe, capture_output=True, text=True).stdout
    with _running("stats", served.address, "--watch", "--interval", "0.1", "--json", ignore_sigint=ignored) as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]  # three refreshes
        assert all(json.loads(line)["pid"] == served.proc.pid for line in lines)
        assert not _ignores_sigint(proc.pid)  # the command took SIGINT over
        proc.send_signal(sig)
        proc.communicate(timeout=PROMPT)
        assert proc.returncode == 0


def test_failures_have_exit_code_one_and_say_why(served: Served) -> None:
    wrong = _cli("stats", served.address, key="not the key")
    assert wrong.returncode == 1 and "AuthenticationError" in wrong.stderr
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nobody = _cli("stats", f"127.0.0.1:{port}")
    assert nobody.returncode == 1 and "BrokenManagerError" in nobody.stderr
    taken = _cli("serve", "--address", served.address)  # the port is in use
    assert taken.returncode == 1 and "cannot listen" in taken.stderr


def test_usage_errors_have_exit_code_two() -> None:
    no_key = _cli("serve", "--address", "127.0.0.1:0", key=None)
    assert no_key.returncode == 2 and "REFLECTMGR_AUTHKEY" in no_key.stderr
    on_the_command_line = _cli("serve", "--authkey", "secret")
    assert on_the_command_line.returncode == 2  # there is no such option
    assert _cli("stats", "not an address").returncode == 2
    assert _cli("serve", "--allow", "os:system").returncode == 2  # --allow is for --restricted
    assert _cli("launch").returncode == 2


def test_the_authkey_can_come_from_a_file(tmp_path: Path, served: Served) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    keyfile.chmod(0o600)
    out = _cli("stats", served.address, "--authkey-file", str(keyfile), key=None)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["stats"], ["bench"]], ids=["top", "serve", "stats", "bench"])
def test_help_everywhere(command: list[str]) -> None:
    out = _cli(*command, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_serve_restricted_with_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="the test extra installs trustme")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    command = ["serve", "--address", "127.0.0.1:0", "--restricted", "--tls-cert", str(tmp_path / "server.pem")]
    with _running(*command) as proc:
        address, line = _serving_line(proc)
        assert "(TLS, restricted)" in line, line
        plain = _cli("stats", address)
        assert plain.returncode == 1 and "requires TLS" in plain.stderr
        secure = _cli("stats", address, "--tls-ca", str(tmp_path / "ca.pem"), "--json")
        assert secure.returncode == 0, secure.stderr
        assert json.loads(secure.stdout)["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=DEATH)
        assert proc.returncode == 0


def test_bench_hands_its_options_to_the_benchmark_runner() -> None:
    # The runner itself is tested by tests/test_benchmarks.py (a smoke run of every scenario); here,
    # that bench reaches it with the options after --, and that its failure is ours.
    out = _cli("bench", "--quick", "--", "--help")
    assert out.returncode == 0, out.stderr
    assert "--field-only" in out.stdout and "--smoke" in out.stdout, out.stdout
    bad = _cli("bench", "--", "--no-such-option")
    assert bad.returncode == 1, bad.stderr
    assert "unrecognized arguments: --no-such-option" in bad.stderr
