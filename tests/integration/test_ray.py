"""reflectmgr.ray: a manager owned by a Ray actor; its proxies in Ray tasks and actors.

One local Ray cluster for the whole module (about 3 s up, 1.3 s down), in one xdist group so
that a single test worker runs it. Ray keeps a pool of worker processes between tests; the
leftover-process check below allows those, and the session's end checks that every process of
the cluster is gone after ``ray.shutdown()``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

import reflectmgr  # noqa: E402
import reflectmgr.ray  # noqa: E402
from reflectmgr._manager import registry  # noqa: E402
from reflectmgr._transport.shm import is_shm, socket_path  # noqa: E402

from ..helpers import CHILD, DEATH, wait_until  # noqa: E402

# slow: a cluster starts (10-17 s in CI), and the group runs on one worker: first, not as the tail
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray"), pytest.mark.timeout(120)]


def _ray_processes() -> dict[int, psutil.Process]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            out[p.pid] = p
        except psutil.Error:
            continue
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    before = set(_ray_processes())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="reflectmgr-tests")
    try:
        yield
    finally:
        started = [p for pid, p in _ray_processes().items() if pid not in before]
        ray.shutdown()
        _, alive = psutil.wait_procs(started, timeout=DEATH)
        for p in alive:
            p.kill()
        assert not alive, f"Ray processes left after ray.shutdown(): {[p.pid for p in alive]}"


def _pool_worker(p: psutil.Process) -> bool:
    """One of Ray's pooled worker processes (kept for later tasks), not an actor of a test."""
    try:
        # A worker Ray has just started may not show its command line yet (seen in CI: [] for a
        # process psutil names 'ray::IDLE'); its name already carries the title.
        title = " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        return True  # gone already
    return title.startswith("ray::") and not title.startswith("ray::_Owner")


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """conftest's check, except for Ray's worker pool, which outlives a test by design."""
    before = set(_ray_processes())
    yield
    new = [p for pid, p in _ray_processes().items() if pid not in before and not _pool_worker(p)]
    _, alive = psutil.wait_procs(new, timeout=DEATH)
    # A pool worker Ray had just started may not have had its title yet (seen: name 'ray::IDLE'
    # only by the time the failure was printed); it has it now.
    alive = [p for p in alive if not _pool_worker(p)]
    for p in alive:
        p.kill()
    assert not alive, f"processes left running after the test: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture
def m(cluster: None) -> Iterator[reflectmgr.ray.Manager]:
    with reflectmgr.ray.Manager(idle_close=0.5) as mgr:
        yield mgr
        pid = mgr.pid
    assert pid is not None
    wait_until(lambda: not psutil.pid_exists(pid), DEATH, "the owner actor's process to exit")


# -- what the tasks and actors do ---------------------------------------------------------------
@ray.remote
def write(d: Any, key: str, value: Any) -> int:
    d[key] = value
    return os.getpid()


@ray.remote
def append_many(shared: Any, n: int) -> None:
    for i in range(n):
        shared["inner"]["items"].append(i)


@ray.remote
def count_under_lock(shared: Any, lock: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            shared["count"] = shared["count"] + 1  # read-modify-write: exact only under the lock


@ray.remote
def route_of(d: Any) -> Any:
    d["seen"] = True
    client = registry.lookup(d._rm_link.address)
    return None if client is None else client.address


@ray.remote
def make_list(m: Any) -> Any:
    lst = m.list([1, 2])
    lst.append(3)
    return lst


@ray.remote
def read(d: Any, key: str) -> Any:
    return d[key]


@ray.remote
class Holder:
    def __init__(self, d: Any) -> None:
        self.d = d

    def add(self, key: str, value: Any) -> None:
        self.d[key] = value

    def get(self, key: str) -> Any:
        return self.d[key]


# -- tests --------------------------------------------------------------------------------------
def test_proxies_work_in_tasks_and_actors(m: reflectmgr.ray.Manager) -> None:
    d = m.dict(a=1)
    ray.get([write.remote(d, f"k{i}", i) for i in range(4)])
    holder = Holder.remote(d)
    ray.get(holder.add.remote("from_actor", [1, 2]))
    assert ray.get(holder.get.remote("k3")) == 3
    assert dict(d) == {"a": 1, "k0": 0, "k1": 1, "k2": 2, "k3": 3, "from_actor": [1, 2]}
    ray.kill(holder)


def test_nested_mutation_from_eight_tasks_is_exact(m: reflectmgr.ray.Manager) -> None:
    shared = m.dict(inner=m.dict(items=m.list()))
    ray.get([append_many.remote(shared, 100) for _ in range(8)])
    items = shared["inner"]["items"]
    assert len(items) == 800 and sorted(items) == sorted(list(range(100)) * 8)


def test_a_lock_across_tasks_keeps_a_read_modify_write_exact(m: reflectmgr.ray.Manager) -> None:
    shared = m.dict(count=0)
    ray.get([count_under_lock.remote(shared, m.Lock(), 0) for _ in range(1)])  # warm the pool
    lock = m.Lock()
    ray.get([count_under_lock.remote(shared, lock, 200) for _ in range(4)])
    assert shared["count"] == 800


def test_a_task_on_the_owners_node_connects_by_its_unix_socket(m: reflectmgr.ray.Manager) -> None:
    d = m.dict()
    route = ray.get(route_of.remote(d))
    assert isinstance(route, str) and route != m.address, route  # shm:/path or a unix path
    assert d["seen"] is True


def test_a_proxy_made_in_a_task_comes_back_to_the_driver(m: reflectmgr.ray.Manager) -> None:
    lst = ray.get(make_list.remote(m))
    assert reflectmgr.is_proxy(lst) and list(lst) == [1, 2, 3]
    lst.append(4)
    assert m.stats().objects >= 1 and list(lst) == [1, 2, 3, 4]


def test_the_authkey_never_travels_with_a_proxy(m: reflectmgr.ray.Manager) -> None:
    from ray.experimental import internal_kv

    d = m.dict()
    assert m.address is not None
    entry = internal_kv._internal_kv_get(reflectmgr.ray._kv_key(m.address), namespace="reflectmgr")
    authkey = pickle.loads(entry)[0]
    assert len(authkey) == 32
    for blob in (pickle.dumps(d), ray.cloudpickle.dumps(d), pickle.dumps(m)):
        assert authkey not in blob
        assert b"RayKeys" in blob or b"_attach" in blob


def test_reused_workers_close_their_idle_connections(m: reflectmgr.ray.Manager) -> None:
    d = m.dict()
    ray.get([write.remote(d, f"k{i}", i) for i in range(6)])
    wait_until(lambda: m.stats().clients == 1, DEATH, "the workers' idle connections to close")
    assert ray.get(read.remote(d, "k5")) == 5  # a reused worker connects again
    wait_until(lambda: m.stats().clients == 1, DEATH, "the worker's connection to close again")


def test_actor_death_gives_a_typed_error_promptly(cluster: None) -> None:
    with reflectmgr.ray.Manager() as m:
        d = m.dict(a=1)
        assert m.pid is not None
        local = ray.get(m.actor.info.remote())["local"]
        folder = os.path.dirname(socket_path(local) if is_shm(local) else local)
        assert os.path.isdir(folder)
        ray.kill(m.actor)
        wait_until(lambda: not psutil.pid_exists(m.pid), DEATH, "the actor to die")  # type: ignore[arg-type]
        with pytest.raises(reflectmgr.BrokenManagerError):
            d["a"]
        with pytest.raises(reflectmgr.BrokenManagerError):  # ray re-raises the task's error as its type
            ray.get(read.remote(d, "a"), timeout=CHILD)
    assert not os.path.exists(folder), "the killed actor's socket folder was left behind"


def test_leaving_with_ends_the_actor_and_its_objects(cluster: None) -> None:
    from ray.experimental import internal_kv

    with reflectmgr.ray.Manager() as m:
        d = m.dict(a=1)
        pid, address = m.pid, m.address
        assert address is not None
    assert pid is not None
    wait_until(lambda: not psutil.pid_exists(pid), DEATH, "the owner actor's process to exit")
    with pytest.raises(reflectmgr.ManagerClosedError):
        d["a"]
    assert internal_kv._internal_kv_get(reflectmgr.ray._kv_key(address), namespace="reflectmgr") is None
    with pytest.raises(reflectmgr.BrokenManagerError, match="no reflectmgr manager"):
        reflectmgr.ray.RayKeys().client((address,))


def test_a_named_manager_is_reached_from_another_driver(cluster: None) -> None:
    with reflectmgr.ray.Manager(name="shared-state", namespace="reflectmgr-named") as m:
        m.root["from_owner"] = 1
        gcs = ray.get_runtime_context().gcs_address
        program = textwrap.dedent(
            f"""
            import ray, reflectmgr.ray
            ray.init(address={gcs!r}, log_to_driver=False)
            with reflectmgr.ray.connect("shared-state", "reflectmgr-named") as conn:
                conn.root["from_other_driver"] = conn.root["from_owner"] + 1
            ray.shutdown()
            """
        )
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, timeout=CHILD * 2)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert m.root["from_other_driver"] == 2
    with pytest.raises(reflectmgr.BrokenManagerError, match="no reflectmgr manager named"):
        reflectmgr.ray.connect("shared-state", "reflectmgr-named")


def test_connect_shares_the_session_and_close_leaves_the_manager_serving(m: reflectmgr.ray.Manager) -> None:
    m.root["x"] = 1
    assert m.address is not None
    name_less = reflectmgr.ray._attach(m.address)
    assert name_less.root["x"] == 1
    name_less.close()
    assert m.root["x"] == 1  # the starter's connection goes on


@ray.remote
def write_and_route(d: Any) -> Any:
    d["over"] = "tls"
    return registry.lookup(d._rm_link.address).address  # type: ignore[union-attr]


def test_tls_between_nodes_with_the_unix_socket_off(cluster: None, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="the test extra installs trustme")
    from reflectmgr.tls import client_context, server_context

    ca = trustme.CA()
    node_ip = ray.util.get_node_ip_address()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (tmp_path / "node.pem").write_bytes(ca.issue_cert(node_ip).private_key_and_cert_chain_pem.bytes())
    with reflectmgr.ray.Manager(
        local=False,
        ssl_context=server_context(str(tmp_path / "node.pem")),
        client_ssl_context=client_context(str(tmp_path / "ca.pem")),
    ) as m:
        d = m.dict()
        route = ray.get(write_and_route.remote(d))
        assert tuple(route) == tuple(m.address) and d["over"] == "tls"  # TCP, through TLS  # type: ignore[arg-type]
        from ray.experimental import internal_kv

        authkey = pickle.loads(internal_kv._internal_kv_get(reflectmgr.ray._kv_key(m.address), namespace="reflectmgr"))[
            0
        ]
        from reflectmgr._manager.client import Client

        with registry.lock:  # a process that has the key but no TLS (as on a node without the files)
            context = registry.tls.pop(registry.key(m.address))  # type: ignore[arg-type]
        try:
            with pytest.raises(reflectmgr.AuthenticationError, match="requires TLS"):
                Client(m.address, authkey)  # type: ignore[arg-type]
        finally:
            with registry.lock:
                registry.tls[registry.key(m.address)] = context  # type: ignore[arg-type]
        assert d["over"] == "tls"


def test_tls_contexts_must_travel_as_files(cluster: None) -> None:
    import ssl

    with pytest.raises(TypeError, match="server_context"):
        reflectmgr.ray.Manager(ssl_context=ssl.create_default_context(), client_ssl_context=None)


def test_first_use_starts_the_manager_and_shutdown_is_final(cluster: None) -> None:
    m = reflectmgr.ray.Manager()
    try:
        d = m.dict(a=1)  # no with, no start(): the first use starts it
        assert d["a"] == 1 and m.pid is not None
    finally:
        m.shutdown()
    pid = m.pid
    wait_until(lambda: not psutil.pid_exists(pid), DEATH, "the owner actor's process to exit")
    with pytest.raises(reflectmgr.ManagerClosedError):
        m.dict()
    m.shutdown()  # idempotent
