"""The multiprocessing documentation's manager examples, run against the stdlib and reflectmgr.

Every assertion here holds for both; where reflectmgr deliberately differs (a nested value reads
as the value, not as a proxy's repr; proxies compare by value), the test says so and checks each
behaviour (docs/differences.md explains why).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.managers
import types
from collections.abc import Iterator
from typing import Any

import pytest

import reflectmgr
import reflectmgr.managers

from ..helpers import CHILD
from . import docs_examples as ex

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@pytest.fixture(params=["stdlib", "reflectmgr"])
def mp(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "stdlib":
        yield types.SimpleNamespace(name="stdlib", Manager=multiprocessing.Manager, managers=multiprocessing.managers)
    else:
        yield types.SimpleNamespace(name="reflectmgr", Manager=reflectmgr.Manager, managers=reflectmgr.managers)


def test_manager_dict_and_list_in_a_process(mp: Any) -> None:
    with mp.Manager() as manager:
        d = manager.dict()
        lst = manager.list(range(10))
        p = multiprocessing.Process(target=ex.f, args=(d, lst))
        p.start()
        p.join(CHILD)
        assert p.exitcode == 0
        assert str(d) == "{1: '1', '2': 2, 0.25: None}"
        assert str(lst) == "[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]"


def test_customized_manager(mp: Any) -> None:
    class MyManager(mp.managers.BaseManager):
        pass

    MyManager.register("Maths", ex.MathsClass)
    with MyManager() as manager:
        maths = manager.Maths()
        assert maths.add(4, 3) == 7
        assert maths.mul(7, 8) == 56


def test_customized_manager_and_proxies_demo(mp: Any) -> None:
    class MyManager(mp.managers.BaseManager):
        pass

    class GeneratorProxy(mp.managers.BaseProxy):
        _exposed_ = ("__next__",)

        def __iter__(self) -> Any:
            return self

        def __next__(self) -> Any:
            return self._callmethod("__next__")

    MyManager.register("Foo1", ex.Foo)
    MyManager.register("Foo2", ex.Foo, exposed=("g", "_h"))
    MyManager.register("baz", ex.baz, proxytype=GeneratorProxy)
    MyManager.register("operator", ex.get_operator_module)
    manager = MyManager()
    manager.start()
    try:
        f1 = manager.Foo1()
        assert f1.f() == "you called Foo.f()" and f1.g() == "you called Foo.g()"
        assert not hasattr(f1, "_h")
        assert sorted(f1._exposed_) == sorted(["f", "g"])
        f2 = manager.Foo2()
        assert f2.g() == "you called Foo.g()" and f2._h() == "you called Foo._h()"
        assert not hasattr(f2, "f")
        assert sorted(f2._exposed_) == sorted(["g", "_h"])
        it = manager.baz()
        assert list(it) == [i * i for i in range(10)]
        op = manager.operator()
        assert op.add(23, 45) == 68 and op.pow(2, 94) == 2**94
        assert "add" in op._exposed_
        with pytest.raises(mp.managers.RemoteError):
            f1._callmethod("_h")
    finally:
        manager.shutdown()


def test_remote_manager_serving_a_queue(mp: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    report = ctx.Queue()
    server = ctx.Process(target=ex.run_queue_server, args=(mp.managers.__name__, report))
    server.start()
    try:
        address = report.get(timeout=CHILD)

        class QueueManager(mp.managers.BaseManager):
            pass

        QueueManager.register("get_queue")
        m = QueueManager(address=address, authkey=b"abracadabra")
        m.connect()
        queue = m.get_queue()
        queue.put("hello")
        assert queue.get(timeout=CHILD) == "hello"
        m2 = QueueManager(address=address, authkey=b"wrong key")
        with pytest.raises(multiprocessing.AuthenticationError):
            m2.connect()
            m2.get_queue()
    finally:
        server.kill()
        server.join(CHILD)
        report.close()
        report.join_thread()


def test_proxy_objects(mp: Any) -> None:
    with mp.Manager() as manager:
        lst = manager.list([i * i for i in range(10)])
        assert str(lst) == "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"
        assert lst[4] == 16
        assert lst[2:5] == [4, 9, 16]


def test_nested_proxies(mp: Any) -> None:
    with mp.Manager() as manager:
        a = manager.list()
        b = manager.list()
        a.append(b)  # referent of a now contains referent of b
        if mp.name == "stdlib":
            assert str(a).startswith("[<ListProxy object")  # the stdlib prints the proxy
        else:
            assert str(a) == "[[]]"  # reflectmgr prints the referent (docs/differences.md)
        assert str(b) == "[]"
        b.append("hello")
        assert str(a[0]) == "['hello']" and str(b) == "['hello']"

        l_outer = manager.list([manager.dict() for i in range(2)])
        d_first_inner = l_outer[0]
        d_first_inner["a"] = 1
        d_first_inner["b"] = 2
        l_outer[1]["c"] = 3
        l_outer[1]["z"] = 26
        assert str(l_outer[0]) == "{'a': 1, 'b': 2}"
        assert str(l_outer[1]) == "{'c': 3, 'z': 26}"


def test_proxies_and_comparison(mp: Any) -> None:
    with mp.Manager() as manager:
        lst = manager.list([1, 2, 3])
        assert lst[:] == [1, 2, 3]  # compare a copy: the documented way, on both
        # The stdlib's proxies do not compare by value; reflectmgr's forward __eq__.
        assert (lst == [1, 2, 3]) is (mp.name == "reflectmgr")


def test_namespace(mp: Any) -> None:
    with mp.Manager() as manager:
        glob = manager.Namespace()
        glob.x = 10
        glob.y = "hello"
        glob._z = 12.3  # hidden from the printout (underscore), on both
        assert str(glob) == "Namespace(x=10, y='hello')"


def test_number_of_objects_and_debug_info(mp: Any) -> None:
    # What CPython's test harness checks after every manager test class (and code modelled on it).
    import gc

    with mp.Manager() as manager:
        d = manager.dict(a=1)
        lst = manager.list([1, 2])
        assert manager._number_of_objects() == 2
        info = manager._debug_info()
        assert "refcount=" in info and "{'a': 1}" in info and "[1, 2]" in info
        assert len(info.splitlines()) == 4  # two lines per object
        del d, lst
        gc.collect()
        assert manager._number_of_objects() == 0
        assert manager._debug_info() == ""
