"""Issue 10, wrong results: a stale reference can only fail, never reach another object.

Object ids are never reused; what a forked child inherits stays alive for it; a pin outlives the
process that made it. Each scenario made another object's contents appear before these fixes.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle

import pytest

import reflectmgr

from ..helpers import CHILD, PROMPT, baseline_objects, wait_until
from .objects import read_after_churn, send_own_proxy_and_exit

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
CHURN = 200  # new objects made while a stale reference waits: addresses get reused at once


def _drop_and_churn(m: reflectmgr.Manager, d: object, key: str) -> list[object]:
    """Free the object at ``d[key]`` in the manager (as far as this process can), then make many
    objects of the same shape, so that a reused address would land on one of them."""
    del d[key]  # type: ignore[attr-defined]
    gc.collect()
    m.client.flush()
    return [m.dict(who=f"other {i}") for i in range(CHURN)]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
def test_forked_child_reads_what_it_inherited_after_the_parent_dropped_it(m: reflectmgr.Manager) -> None:
    ctx = multiprocessing.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    d = m.dict(a={"who": "original"})
    inherited = d["a"]
    child = ctx.Process(target=read_after_churn, args=(inherited, go, results))
    child.start()
    try:
        del inherited
        others = _drop_and_churn(m, d, "a")
        go.set()
        status, seen = results.get(timeout=CHILD)
    finally:
        go.set()
        child.join(CHILD)
    assert (status, seen) == ("ok", {"who": "original"})  # kept alive for the child, not another dict
    assert child.exitcode == 0 and len(others) == CHURN


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_os_fork_child_adopts_at_fork_not_at_its_first_call(m: reflectmgr.Manager) -> None:
    d = m.dict(a={"who": "original"})
    inherited = d["a"]
    r, w = os.pipe()
    back_r, back_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's churn, then read; never return into pytest
        code = 1
        try:
            os.close(w)
            os.read(r, 1)
            os.write(back_w, repr(dict(inherited)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(r)
    os.close(back_w)
    try:
        del inherited
        _drop_and_churn(m, d, "a")
        os.write(w, b"g")
        seen = os.read(back_r, 4096).decode()
    finally:
        os.close(w)
        os.close(back_r)
        _, status = os.waitpid(pid, 0)
    assert seen == repr({"who": "original"})
    assert os.waitstatus_to_exitcode(status) == 0


def test_pickle_loaded_again_after_its_object_died_fails(m: reflectmgr.Manager) -> None:
    d = m.dict(a={"who": "original"})
    inner = d["a"]
    blob = pickle.dumps(inner)
    assert pickle.loads(blob) == {"who": "original"}  # the first load claims the pin
    del inner
    others = _drop_and_churn(m, d, "a")
    with pytest.raises(reflectmgr.ReleasedError):
        pickle.loads(blob)  # never one of the new dicts
    assert len(others) == CHURN


def test_pin_outlives_a_child_that_sends_a_proxy_and_exits(m: reflectmgr.Manager) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=send_own_proxy_and_exit, args=(m.address, m.authkey, out))
    child.start()
    blob = out.get(timeout=CHILD)
    child.join(CHILD)
    assert child.exitcode == 0
    # The child's session is over: everything it held is released, but not what it sent.
    wait_until(lambda: m.stats().clients == 1, PROMPT, "the child's session to end")
    received = pickle.loads(blob)
    assert received == ["made", "by", "the", "child"]
    base = baseline_objects(m)
    del received
    assert wait_until(lambda: baseline_objects(m) == base - 1, PROMPT, "the claimed object to be freed")
    out.close()
    out.join_thread()
