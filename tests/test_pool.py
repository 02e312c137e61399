"""Behaviour of sharedarray.ProcessPoolExecutor, under every start method.

Each behaviour is written once and runs under fork, forkserver and spawn, like
CPython's ``ProcessPool{Fork,Forkserver,Spawn}Mixin``: the module-scoped
``start_method`` fixture below overrides the function-scoped one of conftest,
so one executor per start method (``pool``) is shared by every test that
leaves it usable.  Tests that shut an executor down, break it or configure it
differently make their own.

Worker functions live at module level: pytest's default (prepend) import mode
puts ``tests/`` on ``sys.path``, which spawn and forkserver children inherit,
so they import this module by name.  Lambdas and closures go by value through
cloudpickle.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gc
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sharedarray as sa
import sharedarray.pool as sa_pool

from conftest import (
    START_METHODS,
    new_pool,
    own_temporaries,
    run_python,
    shm_exists,
    wait_for_file,
    wait_until,
)

THRESHOLD = 1 << 20                      # the executor's default
BIG = (THRESHOLD // 8) * 2               # float64 elements: 2 MiB, above it
SMALL = 128                              # float64 elements: 1 KiB, below it


# ---------------------------------------------------------------- helpers

def _big(offset: float = 0.0) -> np.ndarray:
    return np.arange(BIG, dtype=np.float64) + offset


# ---------------------------------------------------------------- worker functions

@dataclasses.dataclass
class Box:
    """A user type holding arrays (pickled by reference to this module)."""
    payload: Any
    label: str = "box"


def describe(x: Any) -> dict:
    """What a worker sees for ``x``."""
    seg = getattr(x, "segment", None) if isinstance(x, np.ndarray) else None
    return {
        "type": f"{type(x).__module__}.{type(x).__qualname__}",
        "shared": isinstance(x, sa.ndarray),
        "writeable": bool(x.flags.writeable),
        "segment": seg.name if seg is not None else None,
        "sum": float(np.asarray(x, dtype=np.float64).sum()),
        "pid": os.getpid(),
    }


def describe_nested(obj: Any) -> dict:
    """``describe`` the array inside a list, dict or Box."""
    if isinstance(obj, list):
        return describe(obj[0][1])
    if isinstance(obj, dict):
        return describe(obj["inner"]["a"])
    if isinstance(obj, Box):
        return describe(obj.payload)
    raise TypeError(type(obj))


def describe_slowly(x: Any, delay: float = 0.01) -> dict:
    time.sleep(delay)
    return describe(x)


def write_all(obj: Any, value: float) -> str:
    """Write ``value`` into every array reachable in ``obj``."""
    if isinstance(obj, np.ndarray):
        obj[...] = value
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            write_all(o, value)
    elif isinstance(obj, dict):
        for o in obj.values():
            write_all(o, value)
    elif isinstance(obj, Box):
        write_all(obj.payload, value)
    elif callable(obj):
        obj(value)
    return "done"


def make_result(n: int, fill: float) -> np.ndarray:
    return np.full(n, fill, dtype=np.float64)


def make_results(n: int) -> dict:
    return {"a": np.arange(n, dtype=np.float64), "b": [np.ones((n // 2, 2), dtype=np.int64)],
            "small": np.arange(4)}


def double_in_place(x: np.ndarray) -> dict:
    x *= 2
    return describe(x)


def square(x: int) -> int:
    return x * x


def ident(x: Any) -> Any:
    return x


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)


def getpid(_: Any = None) -> int:
    return os.getpid()


_INIT_STATE: dict = {}


_kept: list = []


def keep_input(x: np.ndarray) -> str:
    """Hold on to the input after the task (a worker-side cache)."""
    _kept.append(x)
    return x.segment.name


def keep_input_and_fail(x: np.ndarray) -> None:
    _kept.append(x)
    raise ValueError(x.segment.name)


def every_other(x: np.ndarray) -> np.ndarray:
    """A view of the input as the result (it points into the input's copy)."""
    return x[::2]


def layout(x: np.ndarray) -> dict:
    """How a 2-d input arrived, and a few of its values."""
    return {"segment": x.segment.name, "dtype": str(x.dtype), "shape": x.shape,
            "fortran": bool(x.flags.f_contiguous and not x.flags.c_contiguous),
            "picks": [int(x[1, 2]), int(x[3, -1])], "sum": int(x.sum())}


def kept_sums() -> list[float]:
    return [float(k.sum()) for k in _kept]


def init_worker(tag: str, arr: np.ndarray) -> None:
    _INIT_STATE["tag"] = tag
    _INIT_STATE["arr"] = arr


def read_init_state(_: Any = None) -> tuple:
    arr = _INIT_STATE.get("arr")
    seg = getattr(arr, "segment", None)
    return (os.getpid(), _INIT_STATE.get("tag"), seg.name if seg is not None else None,
            float(arr.sum()) if arr is not None else None)


def init_fail() -> None:
    raise RuntimeError("initializer failed on purpose")


def _explode(*_: Any) -> None:
    raise RuntimeError("cannot unpickle this on purpose")


class UnpicklableInWorker:
    """Pickles fine in the parent; unpickling it fails in the worker."""

    def __reduce__(self) -> tuple:
        return _explode, ()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Module-scoped override of conftest's: lets ``pool`` be shared."""
    return request.param


@pytest.fixture
def tasks_of_ours(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the tasks that go through our pickler (a ``_Call`` each)."""
    made: list[int] = []
    init = sa_pool._Call.__init__

    def counting(self: Any, *args: Any) -> None:
        made.append(1)
        init(self, *args)

    monkeypatch.setattr(sa_pool._Call, "__init__", counting)
    return made


@pytest.fixture(scope="module")
def pool(start_method: str):
    """One executor per start method for the tests that leave it usable."""
    ex = sa.ProcessPoolExecutor(2, mp.get_context(start_method))
    # Released copies are kept for reuse a few seconds; here a few
    # milliseconds, so that every test ends with nothing of its own left.
    ex._sa_pool.spares.ttl = 0.02
    ex._sa_pool.results.ttl = 0.02
    yield ex
    ex.shutdown(wait=True)


# ---------------------------------------------------------------- basics

def test_is_a_standard_process_pool_executor(pool):
    assert isinstance(pool, concurrent.futures.ProcessPoolExecutor)
    assert isinstance(pool, concurrent.futures.Executor)


def test_submit_and_map_with_chunksize(pool):
    assert pool.submit(square, 7).result() == 49
    assert list(pool.map(square, range(50), chunksize=7)) == [i * i for i in range(50)]
    assert list(pool.map(square, range(5), chunksize=100)) == [0, 1, 4, 9, 16]
    assert list(pool.map(pow, [2, 3], [5, 2])) == [32, 9]


def test_map_timeout(pool, tmp_path):
    flag = str(tmp_path / "go")
    it = pool.map(wait_for_file, [flag, flag], timeout=0.3)
    try:
        # The builtin TimeoutError from 3.11 on; its own class on 3.10.
        with pytest.raises(concurrent.futures.TimeoutError):
            next(it)
    finally:
        Path(flag).touch()
    # The pool is still usable once the blocked task is released.
    assert pool.submit(square, 3).result() == 9


def total(x: Any) -> float:
    return float(np.sum(x))


def fail_on_five(x: int) -> int:
    if x == 5:
        raise ValueError("five")
    return x


@pytest.mark.parametrize("chunksize", [1, 2, 3, 100])
def test_map_yields_what_the_builtin_map_does(pool, chunksize, tasks_of_ours):
    """Our map() makes its own chunks: items of one iterable (a tuple among
    them stays one argument) or argument tuples of several iterables (to
    the shortest); every result once, in order.  A chunk with nothing to
    share takes the standard path; one with an array, ours."""
    items = [(1, 2), (3,), 4, "s", None, [5, (6,)], {"k": 7.5}] * 3
    assert list(pool.map(repr, items, chunksize=chunksize)) == list(map(repr, items))
    assert (list(pool.map(pow, range(10), [2] * 7, chunksize=chunksize))
            == list(map(pow, range(10), [2] * 7)))
    assert list(pool.map(square, [], chunksize=chunksize)) == []
    assert list(pool.map(getpid, chunksize=chunksize)) == []
    assert not tasks_of_ours
    mixed = [1, np.ones(3), 2, 3, np.full(2, 2.0)]
    assert list(pool.map(total, mixed, chunksize=chunksize)) == [1.0, 3.0, 2.0, 3.0, 4.0]
    with_arrays = {1: 2, 2: 2, 3: 2, 100: 1}[chunksize]
    assert len(tasks_of_ours) == with_arrays


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_raises_an_error_where_its_chunk_begins(pool, chunksize):
    """As the standard map(): the results before the failing task's chunk,
    then its error, and the iterator is finished."""
    it = pool.map(fail_on_five, range(12), chunksize=chunksize)
    before = 5 if chunksize == 1 else 4
    assert [next(it) for _ in range(before)] == list(range(before))
    with pytest.raises(ValueError, match="five"):
        next(it)
    assert list(it) == []
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(square, [1], chunksize=0)


def test_map_passes_newer_options_to_the_standard_map(pool):
    """An option this map() does not know (3.14's buffersize) is the
    standard map()'s to take or refuse."""
    if sys.version_info >= (3, 14):
        assert list(pool.map(square, range(5), chunksize=2, buffersize=1)) == [0, 1, 4, 9, 16]
    else:
        with pytest.raises(TypeError, match="buffersize"):
            pool.map(square, range(5), buffersize=1)


def test_map_drops_each_result_once_yielded(pool):
    """A chunk's results are not kept by the iterator after they are
    yielded (the standard map's promise, chunks included)."""
    for chunksize in (1, 3):
        for obj in pool.map(Box, range(6), chunksize=chunksize):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


def test_worker_exception_carries_remote_traceback(pool):
    fut = pool.submit(raise_value_error, "boom 42")
    with pytest.raises(ValueError, match="boom 42") as info:
        fut.result()
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert "raise_value_error" in str(cause)
    assert "Traceback" in str(cause)
    # Exceptions inside map too.
    with pytest.raises(ValueError, match="in map"):
        list(pool.map(raise_value_error, ["in map"]))


def test_unpicklable_argument_fails_the_future_only(pool):
    lock = threading.Lock()
    big = _big()
    fut = pool.submit(ident, (big, lock))
    exc = fut.exception(timeout=60)
    assert isinstance(exc, TypeError)
    assert "lock" in str(exc)
    # The pool is still usable, and the big array's temporary copy made while
    # pickling the failed task does not stay behind.
    assert pool.submit(square, 4).result() == 16
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_unpicklable_result_fails_the_future_only(pool):
    with pytest.raises(Exception, match="pickle"):
        pool.submit(threading.Lock).result()
    assert pool.submit(square, 5).result() == 25


def test_closure_sees_current_state_on_each_submit(pool):
    state = {"k": 1}
    weights = np.zeros(SMALL)
    fn = lambda x: x * state["k"] + weights.sum()   # noqa: E731
    assert pool.submit(fn, 1).result() == 1
    state["k"] = 2
    weights[:] = 1.0
    assert pool.submit(fn, 1).result() == 2 + SMALL
    assert list(pool.map(fn, [1, 2])) == [2 + SMALL, 4 + SMALL]


def test_lambdas_and_closures(pool):
    assert pool.submit(lambda x: x + 1, 41).result() == 42
    k = 10

    def add_k(x: int) -> int:
        return x + k

    assert list(pool.map(add_k, range(4))) == [10, 11, 12, 13]
    assert list(pool.map(lambda x, y: x * y, range(4), range(4), chunksize=2)) == [0, 1, 4, 9]


# ---------------------------------------------------------------- write-through

def test_named_array_written_through_at_any_depth(pool, name_factory):
    """A ``create``d array reaches the worker as the same (writable) memory."""
    names = [name_factory() for _ in range(5)]
    arrs = [sa.create(n, (64,), np.float64) for n in names]   # small: below threshold
    big = sa.create(name_factory(), (BIG,), np.float64)        # large: above it
    names.append(big.segment.name)
    try:
        a0, a1, a2, a3, a4 = arrs

        def closure(value: float) -> None:
            a4[:] = value

        payloads = [a0, [[0, a1]], {"inner": {"a": a2}}, Box(a3), closure, (big,)]
        for i, p in enumerate(payloads, start=1):
            assert pool.submit(write_all, p, float(i)).result() == "done"
        for i, a in enumerate(arrs + [big], start=1):
            assert np.all(a == i), (i, a[:4])
        # The worker saw the very segment, writable.
        d = pool.submit(describe, a0).result()
        assert d["shared"] and d["writeable"] and d["segment"] == a0.segment.name
    finally:
        for n in names:
            sa.delete(n)


def test_shared_array_written_through(pool):
    a = sa.share(np.zeros(SMALL))
    b = sa.share(np.zeros(BIG))
    assert pool.submit(write_all, {"x": [a, Box(b)]}, 3.0).result() == "done"
    assert np.all(a == 3.0) and np.all(b == 3.0)
    d = pool.submit(double_in_place, b).result()
    assert d["segment"] == b.segment.name and d["writeable"]
    assert np.all(b == 6.0)
    # The pool did not unlink the parent's share()d arrays.
    assert shm_exists(a.segment.name) and shm_exists(b.segment.name)
    names = [a.segment.name, b.segment.name]
    del a, b, d
    assert wait_until(lambda: not any(shm_exists(n) for n in names), 10)


def test_created_arrays_survive_shutdown(start_method, shm_name):
    arr = sa.create(shm_name, (BIG,), np.float64)
    try:
        with new_pool(start_method) as ex:
            assert ex.submit(write_all, [arr], 5.0).result() == "done"
            assert ex.submit(describe_nested, Box(arr)).result()["segment"] == shm_name
        assert sa.exists(shm_name)
        assert np.all(sa.attach(shm_name) == 5.0)
    finally:
        sa.delete(shm_name)


# ---------------------------------------------------------------- auto-shared inputs

def _nest(kind: str, arr: np.ndarray) -> tuple[Callable, tuple]:
    """(function, args) delivering ``arr`` to the worker at some depth."""
    if kind == "direct":
        return describe, (arr,)
    if kind == "list":
        return describe_nested, ([[0, arr]],)
    if kind == "dict":
        return describe_nested, ({"inner": {"a": arr}},)
    if kind == "dataclass":
        return describe_nested, (Box(arr),)
    if kind == "closure":
        return (lambda: describe(arr)), ()
    if kind == "kwargs":
        return (lambda *, x: describe(x)), ()
    raise AssertionError(kind)


NESTINGS = ["direct", "list", "dict", "dataclass", "closure", "kwargs"]


@pytest.mark.parametrize("kind", NESTINGS)
def test_large_input_arrives_read_only_shared(pool, kind):
    arr = _big(1.0)
    fn, args = _nest(kind, arr)
    fut = pool.submit(fn, *args, **({"x": arr} if kind == "kwargs" else {}))
    d = fut.result()
    assert d["type"] == "sharedarray.core.ndarray"
    assert d["shared"] is True
    assert d["writeable"] is False
    assert d["segment"].startswith(f"sa-{os.getpid()}-")
    assert d["sum"] == float(arr.sum())
    # The caller's array is untouched and still a plain array.
    assert type(arr) is np.ndarray and arr.flags.writeable


def test_read_only_input_cannot_be_written(pool):
    with pytest.raises(ValueError, match="read-only"):
        pool.submit(write_all, _big(), 1.0).result()


@pytest.mark.parametrize("kind", ["direct", "list", "dict", "dataclass", "closure"])
def test_small_input_arrives_as_plain_copy(pool, kind):
    arr = np.arange(SMALL, dtype=np.float64)
    fn, args = _nest(kind, arr)
    d = pool.submit(fn, *args).result()
    assert d["type"] == "numpy.ndarray"
    assert d["shared"] is False and d["segment"] is None
    assert d["sum"] == float(arr.sum())


def test_threshold_boundary(pool):
    exact = np.zeros(THRESHOLD, dtype=np.uint8)
    below = np.zeros(THRESHOLD - 1, dtype=np.uint8)
    assert pool.submit(describe, exact).result()["shared"] is True
    assert pool.submit(describe, below).result()["shared"] is False
    assert type(pool.submit(make_result, THRESHOLD // 8, 1.0).result()) is sa.ndarray
    assert type(pool.submit(ident, below).result()) is np.ndarray


@pytest.mark.parametrize("chunksize", [1, 3])
def test_same_array_copied_once_per_map(pool, chunksize):
    arr = _big()
    results = list(pool.map(describe, [arr] * (40 * chunksize), chunksize=chunksize))
    segments = {d["segment"] for d in results}
    assert len(segments) == 1, segments
    assert all(d["sum"] == float(arr.sum()) for d in results)


def test_distinct_arrays_get_distinct_copies(pool):
    a, b = _big(1.0), _big(2.0)
    da, db = pool.map(describe, [a, b])
    assert da["segment"] != db["segment"]
    assert (da["sum"], db["sum"]) == (float(a.sum()), float(b.sum()))


def test_one_copy_for_repeated_references_in_one_task(pool):
    arr = _big()
    got = pool.submit(lambda xs: [describe(x)["segment"] for x in xs],
                      [arr, arr, {"k": arr}["k"]]).result()
    assert len(set(got)) == 1


def test_threshold_none_sends_plain_arrays_both_ways(start_method):
    with new_pool(start_method, share_threshold=None) as ex:
        arr = _big()
        for kind in ["direct", "list", "closure"]:
            fn, args = _nest(kind, arr)
            d = ex.submit(fn, *args).result()
            assert d["type"] == "numpy.ndarray" and d["writeable"], kind
            assert d["sum"] == float(arr.sum())
        r = ex.submit(make_result, BIG, 2.0).result()
        assert type(r) is np.ndarray and np.all(r == 2.0)
        # ``share``d arrays still travel as handles.
        s = sa.share(np.zeros(SMALL))
        assert ex.submit(write_all, s, 9.0).result() == "done"
        assert np.all(s == 9.0)
        del s
        assert not own_temporaries() or wait_until(lambda: not own_temporaries(), 10)


# ---------------------------------------------------------------- results

def test_large_result_comes_back_shared_and_owned(pool):
    r = pool.submit(make_result, BIG, 3.5).result()
    assert type(r) is sa.ndarray
    assert r.flags.writeable
    assert r.shape == (BIG,) and r.dtype == np.float64
    assert np.all(r == 3.5)
    name = r.segment.name
    assert name.startswith(f"sa-{os.getpid()}-")
    assert shm_exists(name)
    # Writable here, and handed to the next task as the same memory.
    r[0] = -1.0
    d = pool.submit(double_in_place, r).result()
    assert d["segment"] == name and d["shared"] and d["writeable"]
    assert r[0] == -2.0 and np.all(r[1:] == 7.0)
    # Not unlinked while held, even after more tasks and collections.
    list(pool.map(square, range(10)))
    gc.collect()
    assert shm_exists(name)
    view = r[::2]
    del r
    gc.collect()
    assert shm_exists(name) and view[1] == 7.0
    del view, d
    assert wait_until(lambda: not shm_exists(name), 10), name


def test_nested_results(pool):
    res = pool.submit(make_results, BIG).result()
    a, b, small = res["a"], res["b"][0], res["small"]
    assert type(a) is sa.ndarray and np.array_equal(a, np.arange(BIG))
    assert type(b) is sa.ndarray and b.dtype == np.int64 and b.shape == (BIG // 2, 2)
    assert np.all(b == 1)
    assert type(small) is np.ndarray and np.array_equal(small, np.arange(4))
    names = [a.segment.name, b.segment.name]
    assert names[0] != names[1] and all(shm_exists(n) for n in names)
    del res, a, b
    assert wait_until(lambda: not any(shm_exists(n) for n in names), 10)


def test_result_layouts_and_dtypes(pool):
    f = np.asfortranarray(np.arange(BIG, dtype=np.float64).reshape(-1, 4))
    rf = pool.submit(lambda: f.copy(order="F")).result()
    assert type(rf) is sa.ndarray and rf.flags.f_contiguous and np.array_equal(rf, f)
    strided = pool.submit(lambda: np.arange(2 * BIG, dtype=np.float64)[::2]).result()
    assert type(strided) is sa.ndarray and np.array_equal(strided, np.arange(0, 2 * BIG, 2))
    rec = np.zeros(BIG // 2, dtype=[("a", ">i4"), ("b", "<f8")])
    rec["a"] = np.arange(BIG // 2)
    rr = pool.submit(ident, rec).result()
    assert type(rr) is sa.ndarray and rr.dtype == rec.dtype and np.array_equal(rr, rec)


def test_small_result_is_plain(pool):
    r = pool.submit(make_result, SMALL, 1.0).result()
    assert type(r) is np.ndarray and np.all(r == 1.0)


def test_result_survives_shutdown(start_method):
    with new_pool(start_method) as ex:
        keep = ex.submit(make_result, BIG, 4.0).result()
        drop = ex.submit(make_result, BIG, 5.0).result()
        dropped = drop.segment.name
        del drop
    name = keep.segment.name
    assert own_temporaries() == {name}
    assert not shm_exists(dropped)
    assert np.all(keep == 4.0)
    del keep
    assert wait_until(lambda: not shm_exists(name), 10)


# ---------------------------------------------------------------- temporaries

def test_input_temporary_unlinked_when_its_task_is_done(pool):
    arr = _big()
    fut = pool.submit(describe, arr)
    name = fut.result()["segment"]
    assert name.startswith(f"sa-{os.getpid()}-")
    # The caller still holds ``arr``: the copy goes because no task needs it
    # (after the few milliseconds a spare lives in these tests).
    assert wait_until(lambda: not shm_exists(name), 5), name
    assert type(arr) is np.ndarray


def test_input_temporary_kept_while_a_pending_task_needs_it(pool, tmp_path):
    flag = str(tmp_path / "go")
    arr = _big()
    blocker = pool.submit(wait_for_file, flag, arr)
    first = pool.submit(describe, arr).result()
    name = first["segment"]
    time.sleep(0.1)
    gc.collect()
    assert shm_exists(name)               # ``blocker`` still needs it
    Path(flag).touch()
    out = blocker.result()
    assert type(out) is sa.ndarray and out.segment.name == name   # the very copy
    del out, blocker
    assert wait_until(lambda: not shm_exists(name), 5), name


@pytest.mark.parametrize("how", ["shutdown", "with"])
def test_no_temporaries_after_shutdown(start_method, how):
    arrs = [_big(i) for i in range(3)]
    ex = new_pool(start_method)
    futs = [ex.submit(describe_nested, Box(a)) for a in arrs * 3]
    futs += [ex.submit(make_result, BIG, float(i)) for i in range(4)]
    kept = futs[-1].result()
    if how == "with":
        with ex:
            pass
    else:
        ex.shutdown()
    for f in futs[:-4]:
        assert f.result()["shared"]
    del futs
    gc.collect()
    assert own_temporaries() == {kept.segment.name}
    del kept
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_shutdown_cancel_futures(start_method, tmp_path):
    flag = str(tmp_path / "go")
    ex = new_pool(start_method, max_workers=1)
    arr = _big()
    blocker = ex.submit(wait_for_file, flag, "released")
    futs = [ex.submit(describe, arr) for _ in range(20)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    try:
        # Pending futures are cancelled while the only worker is still busy.
        assert wait_until(futs[-1].cancelled, 30)
    finally:
        Path(flag).touch()
        stopper.join(60)
    assert not stopper.is_alive()
    assert blocker.result() == "released"
    cancelled = [f for f in futs if f.cancelled()]
    done = [f for f in futs if not f.cancelled()]
    # Only tasks already handed to the call queue (max_workers + 1) may have run.
    assert len(cancelled) >= 20 - 2, len(cancelled)
    for f in done:
        assert f.result()["shared"]
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    del futs, done, cancelled
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_submit_after_shutdown_raises(start_method):
    ex = new_pool(start_method)
    assert ex.submit(square, 2).result() == 4
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])


@pytest.mark.parametrize("how", ["drop", "shutdown-again"])
def test_pending_tasks_complete_after_shutdown_without_wait(start_method, how, tmp_path):
    """Standard behaviour: after ``shutdown(wait=False)`` pending futures still
    complete, whether the executor is then dropped or shut down again.  A
    dropped one lives on until its manager thread has ended (see
    ``..._is_not_freed_in_its_manager``), then is freed and cleans up."""
    flag = str(tmp_path / "go")
    ex = new_pool(start_method, max_workers=1)
    futs = [ex.submit(wait_for_file, flag, Box(_big(i))) for i in range(5)]
    # Wait until the first tasks are pickled (their temporaries exist).
    assert wait_until(lambda: len(own_temporaries()) >= 2, 30)
    ex.shutdown(wait=False)
    ref = weakref.ref(ex)
    if how == "drop":
        del ex
        gc.collect()
        assert ref() is not None        # its tasks are blocked: its manager runs
    else:
        ex.shutdown(wait=True)      # returns at once, as in the standard library
    Path(flag).touch()
    sums = [float(f.result(timeout=60).payload.sum()) for f in futs]
    assert sums == [float(_big(i).sum()) for i in range(5)]
    del futs
    if how == "drop":
        assert wait_until(lambda: ref() is None, 30)   # freed, finalizers run
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


# ---------------------------------------------------------------- reuse of released copies

def _spares(ex: sa.ProcessPoolExecutor) -> list[str]:
    return ex._sa_pool.spares.names()


def _idle(ex: sa.ProcessPoolExecutor) -> bool:
    return not ex._sa_pool.leases.current


def _keep_spares(ex: sa.ProcessPoolExecutor) -> sa.ProcessPoolExecutor:
    ex._sa_pool.spares.ttl = 30.0        # as long as in real use
    ex._sa_pool.results.ttl = 30.0
    return ex


def _first_copy(ex: sa.ProcessPoolExecutor, fn: Callable, arr: np.ndarray) -> Any:
    """Run ``fn(arr)``; wait until the executor has released the copy."""
    out = ex.submit(fn, arr).result()
    assert wait_until(lambda: _idle(ex), 10)
    return out


def test_released_copy_takes_the_next_array_of_its_size(start_method):
    with _keep_spares(new_pool(start_method)) as ex:
        name = _first_copy(ex, describe, _big(1.0))["segment"]
        assert wait_until(lambda: _spares(ex) == [name]) and own_temporaries() == {name}
        # A fresh array of the same size is copied into it, not into a new one.
        d = ex.submit(describe, _big(2.0)).result()
        assert d["segment"] == name and not d["writeable"]
        assert d["sum"] == float(_big(2.0).sum())
        assert wait_until(lambda: _spares(ex) == [name], 10)
        # Another shape, dtype and order of the same byte size: still reused,
        # and read back with its own layout.
        other = np.asfortranarray(np.arange(BIG, dtype=np.int64).reshape(4, -1))
        got = ex.submit(layout, other).result()
        assert got == {"segment": name, "dtype": "int64", "shape": (4, BIG // 4),
                       "fortran": True, "picks": [int(other[1, 2]), int(other[3, -1])],
                       "sum": int(other.sum())}
        assert wait_until(lambda: _spares(ex) == [name], 10)
        # Another size gets a segment of its own.
        d = ex.submit(describe, np.ones(BIG + 512)).result()
        assert d["segment"] != name and d["sum"] == BIG + 512
        assert wait_until(lambda: len(_spares(ex)) == 2, 10)
    assert not own_temporaries()                  # shutdown unlinks spares at once


@pytest.mark.parametrize("how", ["kept", "returned", "raised"])
def test_copy_a_worker_still_maps_is_never_refilled(start_method, how):
    """A copy is refilled only when no process maps it: a worker that
    keeps its input, returns a view of it or fails with it live in a
    traceback must go on seeing the old contents."""
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        first = _big(1.0)
        view = None
        if how == "kept":
            name = _first_copy(ex, keep_input, first)
        elif how == "returned":
            view = _first_copy(ex, every_other, first)
            name = view.segment.name
            assert not view.flags.writeable and np.array_equal(view, first[::2])
        else:
            with pytest.raises(ValueError) as info:
                ex.submit(keep_input_and_fail, first).result()
            name = str(info.value)
            assert wait_until(lambda: _idle(ex), 10)
        for k in range(2, 5):            # fresh arrays of the same size
            d = ex.submit(describe, _big(float(k))).result()
            assert d["segment"] != name and d["sum"] == float(_big(float(k)).sum())
        if view is not None:
            assert np.array_equal(view, first[::2])
        else:
            assert ex.submit(kept_sums).result() == [float(first.sum())]
        del view
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_handle_to_refilled_copy_is_stale(start_method):
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        blob = _first_copy(ex, pickle.dumps, _big(1.0))   # the worker's handle
        assert pickle.loads(blob).sum() == float(_big(1.0).sum())
        gc.collect()
        assert wait_until(lambda: len(_spares(ex)) == 1, 10)
        ex.submit(describe, _big(2.0)).result()            # refills it
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(blob)


def test_spares_are_bounded_and_expire(start_method):
    with new_pool(start_method) as ex:
        spares = ex._sa_pool.spares
        spares.ttl = 1.0
        arrs = [_big(float(i)) for i in range(8)]
        sums = [d["sum"] for d in ex.map(describe, arrs)]
        assert sums == [float(a.sum()) for a in arrs]
        assert wait_until(lambda: _idle(ex), 10)
        assert 1 <= len(_spares(ex)) <= spares.count
        # Unused for the lifetime: unlinked without a shutdown.
        assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()
        # A byte budget too: here room for one copy.
        spares.budget = BIG * 8 + 4096
        list(ex.map(describe, arrs))
        assert wait_until(lambda: _idle(ex), 10)
        assert len(_spares(ex)) <= 1


_inherited: Any = None


def _collect_inherited_executor() -> None:
    """A forked child: what its garbage collector does with the copy of an
    executor it inherited (run its finalizer), and an explicit close."""
    _inherited._sa_finalizer()
    _inherited._sa_pool.close()
    for janitor in list(sa_pool._closing):
        janitor.join()


def test_a_forked_child_leaves_its_parents_executor_alone():
    """A forked child (a worker, or any process the program forks) that
    collects its copy of an executor must not unlink the parent's kept
    copies and results, nor sweep its results: they are the parent's."""
    global _inherited
    with _keep_spares(new_pool("fork", max_workers=1)) as ex:
        name = _first_copy(ex, describe, _big(1.0))["segment"]
        r = ex.submit(make_result, BIG, 2.0).result()
        result = r.segment.name
        del r
        assert wait_until(lambda: len(ex._sa_pool.results.names()) == 1, 10)
        kept = ex._sa_pool.results.names()
        before = sorted(own_temporaries())
        assert name in before and kept[0] in before and result not in before
        _inherited = ex
        try:
            child = mp.get_context("fork").Process(target=_collect_inherited_executor)
            child.start()
            child.join(60)
        finally:
            _inherited = None
        assert child.exitcode == 0
        assert sorted(own_temporaries()) == before
        assert ex._sa_pool.results.names() == kept
        # Both still serve: the same copy for the next array of its size,
        # the kept result's pages for the next result.
        assert ex.submit(describe, _big(3.0)).result()["segment"] == name
        again = ex.submit(make_result, BIG, 4.0).result()
        assert float(again[-1]) == 4.0 and kept[0] not in own_temporaries()
        del again


def test_a_full_dev_shm_empties_spares_even_from_inside_their_lock():
    """A creation that finds /dev/shm full unlinks the executors' spares
    (``_free_spares``).  It can run in a thread that holds a spares lock
    (a finalizer run by the garbage collector there): that pool's spares
    are then left alone, without a deadlock, and the others still go."""
    with new_pool("fork", max_workers=1) as ex, new_pool("fork", max_workers=1) as other:
        for pool in (ex, other):
            pool._sa_pool.spares.ttl = 60.0
            assert pool.submit(describe, _big(1.0)).result()["sum"] == float(_big(1.0).sum())
        assert wait_until(lambda: _idle(ex) and _idle(other), 10)
        mine, theirs = _spares(ex), _spares(other)
        assert len(mine) == 1 and len(theirs) == 1
        with ex._sa_pool.spares.lock:
            assert sa_pool._free_spares() is True
        assert _spares(ex) == mine and os.path.exists(f"/dev/shm/{mine[0]}")
        assert _spares(other) == [] and not os.path.exists(f"/dev/shm/{theirs[0]}")
        assert sa_pool._free_spares() is True          # free again: they go now
        assert _spares(ex) == [] and not os.path.exists(f"/dev/shm/{mine[0]}")
        assert sa_pool._free_spares() is False         # nothing left to free


# A process outside the pool that receives a worker's input (its own pool,
# a Queue, a Manager) and keeps it: the copy must never change under it.

_queue: Any = None


def set_queue(q: Any) -> None:
    global _queue
    _queue = q


def pass_on(x: np.ndarray) -> str:
    """Hand the input to the helper process, then return."""
    _queue.put(x)
    return x.segment.name


def hold_and_report(inbox: Any, outbox: Any) -> None:
    """Helper process: keep what arrives, report its sums when asked."""
    held = inbox.get(timeout=60)
    outbox.put(("got", float(held.sum()), float(held[0])))
    inbox.get(timeout=120)                  # "report"
    outbox.put(("now", float(held.sum()), float(held[0])))


def test_a_third_process_keeps_its_view_of_a_copy(start_method):
    ctx = mp.get_context(start_method)
    inbox, outbox = ctx.Queue(), ctx.Queue()
    helper = ctx.Process(target=hold_and_report, args=(inbox, outbox))
    helper.start()
    try:
        with _keep_spares(new_pool(start_method, max_workers=1, initializer=set_queue,
                                    initargs=(inbox,))) as ex:
            first = _big(1.0)
            name = _first_copy(ex, pass_on, first)
            got = outbox.get(timeout=60)
            assert got == ("got", float(first.sum()), float(first[0]))
            # Fresh arrays of the copy's size: none may be written into it.
            for k in range(2, 6):
                d = ex.submit(describe, _big(float(k))).result()
                assert d["segment"] != name and d["sum"] == float(_big(float(k)).sum())
            inbox.put("report")
            assert outbox.get(timeout=60) == ("now", float(first.sum()), float(first[0]))
    finally:
        helper.join(60)
        if helper.is_alive():
            helper.kill()
    assert helper.exitcode == 0


def unpickle_in_a_loop(blob: bytes, expect: float, rounds: int, outbox: Any) -> None:
    """Helper process: attach an old handle again and again; every view
    that attaches must show the old contents for as long as it lives."""
    attached = stale = wrong = 0
    for _ in range(rounds):
        try:
            arr = pickle.loads(blob)
        except sa.StaleHandleError:
            stale += 1
            continue
        except FileNotFoundError:
            stale += 1
            continue
        attached += 1
        for _ in range(3):
            if not (arr[0] == expect == arr[-1] and float(arr.sum()) == expect * arr.size):
                wrong += 1
                break
            time.sleep(0.001)
        del arr
    outbox.put((attached, stale, wrong))


def test_old_handle_never_shows_a_refill(start_method):
    """While copies are refilled in a loop, a process attaching an old handle
    to one gets either the old contents, for as long as it maps them, or
    StaleHandleError; never the new contents."""
    ctx = mp.get_context(start_method)
    outbox = ctx.Queue()
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        blob = _first_copy(ex, pickle.dumps, np.full(BIG, 7.0))
        gc.collect()
        helper = ctx.Process(target=unpickle_in_a_loop, args=(blob, 7.0, 400, outbox))
        helper.start()
        try:
            k = 0
            while helper.is_alive() and k < 400:
                k += 1
                arr = np.full(BIG, float(k % 5), dtype=np.float64)   # never 7.0
                assert ex.submit(describe, arr).result()["sum"] == float(arr.sum())
            attached, stale, wrong = outbox.get(timeout=120)
        finally:
            helper.join(60)
            if helper.is_alive():
                helper.kill()
    assert wrong == 0, (attached, stale, wrong)
    assert attached + stale == 400


# ---------------------------------------------------------------- reuse of released results

def _result_spares(ex: sa.ProcessPoolExecutor) -> list[str]:
    return ex._sa_pool.results.names()


def _inode(name: str) -> int:
    return os.stat(f"/dev/shm/{name}").st_ino


def _assert_never_reused(ex: sa.ProcessPoolExecutor, ino: int) -> None:
    """The dropped result with inode ``ino`` became a spare; the next results
    of its size come right and are never written into it."""
    assert wait_until(lambda: len(_result_spares(ex)) == 1, 10)
    for k in range(2, 6):
        rk = ex.submit(make_result, BIG, float(k)).result()
        assert _inode(rk.segment.name) != ino and np.all(rk == float(k))
        del rk


def fortran_ints(n: int) -> np.ndarray:
    return np.asfortranarray(np.arange(n, dtype=np.int64).reshape(4, -1))


def make_result_when(flag: str, n: int, fill: float) -> np.ndarray:
    """Build a result once ``flag`` exists (workers racing for one spare)."""
    wait_for_file(flag)
    return np.full(n, fill, dtype=np.float64)


def test_released_result_takes_the_next_result_of_its_size(start_method):
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        r = ex.submit(make_result, BIG, 1.0).result()
        name = r.segment.name
        assert sa._names.parse(name).refillable
        ino = _inode(name)
        del r
        # Kept under a spare name once the parent no longer maps it.
        assert wait_until(lambda: len(_result_spares(ex)) == 1, 10)
        spare = _result_spares(ex)[0]
        assert not shm_exists(name) and _inode(spare) == ino
        # The next result of that size is written into it by the worker.
        r2 = ex.submit(make_result, BIG, 2.0).result()
        assert type(r2) is sa.ndarray and r2.flags.writeable and np.all(r2 == 2.0)
        assert r2.segment.name != name and _inode(r2.segment.name) == ino
        assert not shm_exists(spare)
        # Another dtype, shape and order of the same byte size: reused, with
        # its own layout.
        name2 = r2.segment.name
        del r2
        assert wait_until(lambda: len(_result_spares(ex)) == 1, 10)
        other = fortran_ints(BIG)
        r3 = ex.submit(fortran_ints, BIG).result()
        assert _inode(r3.segment.name) == ino and not shm_exists(name2)
        assert r3.dtype == np.int64 and r3.flags.f_contiguous and np.array_equal(r3, other)
        # Another size: a segment of its own.
        r4 = ex.submit(make_result, BIG + 512, 4.0).result()
        assert _inode(r4.segment.name) != ino and np.all(r4 == 4.0)
        del r3, r4
        assert wait_until(lambda: len(_result_spares(ex)) == 2, 10)
    assert not own_temporaries()                  # shutdown unlinks spares at once


def test_old_handles_to_a_recycled_result_never_show_new_data(start_method):
    """A handle by name finds the name gone; one that travels with a
    descriptor of the memory (multiprocessing's pickler) finds a new token
    and raises StaleHandleError."""
    from multiprocessing.reduction import ForkingPickler
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        r = ex.submit(make_result, BIG, 1.0).result()
        ino = _inode(r.segment.name)
        by_name = pickle.dumps(r)
        with_fd = bytes(ForkingPickler.dumps(r))
        del r
        assert wait_until(lambda: len(_result_spares(ex)) == 1, 10)
        r2 = ex.submit(make_result, BIG, 2.0).result()
        assert _inode(r2.segment.name) == ino            # recycled
        with pytest.raises(FileNotFoundError):
            pickle.loads(by_name)
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(with_fd)
        assert np.all(r2 == 2.0)


def test_result_the_parent_still_holds_is_never_recycled(start_method):
    with _keep_spares(new_pool(start_method)) as ex:
        r = ex.submit(make_result, BIG, 1.0).result()
        ino = _inode(r.segment.name)
        view = r.view(np.ndarray)[::2]      # a plain view keeps the mapping
        del r
        gc.collect()
        assert _result_spares(ex) == []
        for k in range(2, 6):
            rk = ex.submit(make_result, BIG, float(k)).result()
            assert _inode(rk.segment.name) != ino and np.all(rk == float(k))
            del rk                          # these recycle among themselves
        assert np.all(view == 1.0)
        del view
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_result_a_worker_keeps_is_never_recycled(start_method):
    """The parent drops a result that a worker still maps (it kept its
    input): no later result may be written into it."""
    with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
        r = ex.submit(make_result, BIG, 1.0).result()
        name, ino = r.segment.name, _inode(r.segment.name)
        assert ex.submit(keep_input, r).result() == name
        del r
        _assert_never_reused(ex, ino)
        assert ex.submit(kept_sums).result() == [1.0 * BIG]
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_result_a_third_process_maps_is_never_recycled(start_method):
    ctx = mp.get_context(start_method)
    inbox, outbox = ctx.Queue(), ctx.Queue()
    helper = ctx.Process(target=hold_and_report, args=(inbox, outbox))
    helper.start()
    try:
        with _keep_spares(new_pool(start_method, max_workers=1)) as ex:
            r = ex.submit(make_result, BIG, 1.0).result()
            ino = _inode(r.segment.name)
            inbox.put(r)
            assert outbox.get(timeout=60) == ("got", 1.0 * BIG, 1.0)
            del r
            _assert_never_reused(ex, ino)
            inbox.put("report")
            assert outbox.get(timeout=60) == ("now", 1.0 * BIG, 1.0)
    finally:
        helper.join(60)
        if helper.is_alive():
            helper.kill()
    assert helper.exitcode == 0
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_two_workers_racing_for_one_spare_never_share_it(start_method, tmp_path):
    with _keep_spares(new_pool(start_method, max_workers=2)) as ex:
        for k in range(6):
            r = ex.submit(make_result, BIG, -1.0).result()
            ino = _inode(r.segment.name)
            del r
            assert wait_until(lambda: len(_result_spares(ex)) >= 1, 10)
            flag = str(tmp_path / f"go{k}")
            futs = [ex.submit(make_result_when, flag, BIG, float(i)) for i in (1, 2)]
            time.sleep(0.05)              # both workers waiting for the flag
            Path(flag).touch()
            a, b = (f.result(timeout=60) for f in futs)
            assert np.all(a == 1.0) and np.all(b == 2.0)
            inodes = [_inode(a.segment.name), _inode(b.segment.name)]
            assert inodes[0] != inodes[1] and inodes.count(ino) <= 1
            del a, b, futs
    assert not own_temporaries()


def claim_in_rounds(config: Any, rounds: int, size: int, barrier: Any, outbox: Any) -> None:
    """Helper process: at each round, try to write a result into a spare."""
    sa_pool._config = config
    for i in range(rounds):
        barrier.wait(60)
        name = sa._names.result_name(config.prefix)
        handle = sa_pool._into_spare(np.full(size, float(os.getpid() + i)), name, [])
        outbox.put((i, None if handle is None else handle[0]))
        barrier.wait(60)


def test_claiming_a_spare_is_exclusive(start_method):
    """Two processes try to claim the one spare at once, round after round:
    exactly one gets it each time (the other finds none)."""
    ctx = mp.get_context(start_method)
    rounds = 20
    with new_pool(start_method, max_workers=1) as ex:
        pool = ex._sa_pool
        pool.results.ttl = 60.0
        barrier, outbox = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=claim_in_rounds,
                             args=(pool.config(), rounds, BIG, barrier, outbox))
                 for _ in range(2)]
        for p in procs:
            p.start()
        won = []
        try:
            for _ in range(rounds):
                seg = sa.reduction.share_segment(np.zeros(BIG),
                                                 name=sa._names.result_name(pool.prefix))
                name, size = seg.name, seg.size
                del seg
                pool.results.retire(size, name)
                assert len(pool.results.names()) == 1
                barrier.wait(60)
                got = [outbox.get(timeout=60) for _ in procs]
                barrier.wait(60)
                names = [n for _, n in got if n is not None]
                assert len(names) == 1, got
                arr = sa.attach(names[0])
                assert arr.shape == (BIG,) and arr[0] == arr[-1] and arr[0] > 0
                del arr
                sa_pool.discard(names[0])
                won.append(names[0])
        finally:
            for p in procs:
                p.join(60)
                if p.is_alive():
                    p.kill()
        assert len(set(won)) == rounds
    assert not own_temporaries()


def test_result_spares_are_bounded_and_expire(start_method):
    with new_pool(start_method) as ex:
        results = ex._sa_pool.results
        results.ttl = 1.0
        got = [ex.submit(make_result, BIG + 512 * i, float(i)).result() for i in range(8)]
        assert [float(g[-1]) for g in got] == [float(i) for i in range(8)]
        del got
        assert 1 <= len(_result_spares(ex)) <= results.count
        # Unused for the lifetime: unlinked without a shutdown.
        assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()
        # A byte budget too: here room for one.
        results.budget = BIG * 8 + 8192
        got = [ex.submit(make_result, BIG + 512 * i, float(i)).result() for i in range(4)]
        del got
        assert len(_result_spares(ex)) <= 1


# ---------------------------------------------------------------- snapshots

def test_array_changed_between_submits_reaches_the_second_task_changed(start_method, tmp_path):
    """As with the standard executor: a task sees its arguments as of a
    moment at or after its submit(), not an older copy still in use."""
    flag = str(tmp_path / "go")
    with new_pool(start_method) as ex:
        x = _big(1.0)
        first = ex.submit(wait_for_file, flag, x)        # keeps x's copy leased
        assert wait_until(lambda: not _idle(ex), 10)
        x[:] = 42.0
        second = ex.submit(describe, x).result(timeout=60)
        assert second["sum"] == 42.0 * BIG
        Path(flag).touch()
        assert float(first.result(timeout=60).sum()) == float(_big(1.0).sum())


def test_unchanged_array_submitted_again_shares_one_copy(start_method, tmp_path):
    flag = str(tmp_path / "go")
    with new_pool(start_method) as ex:
        x = _big(3.0)
        first = ex.submit(wait_for_file, flag, x)
        names = {ex.submit(describe, x).result(timeout=60)["segment"] for _ in range(4)}
        Path(flag).touch()
        kept = first.result(timeout=60)
        assert names == {kept.segment.name}
        del kept


@pytest.mark.parametrize("change", ["nan payload", "negative zero", "one byte"])
def test_snapshot_compares_bytes_not_values(start_method, tmp_path, change):
    flag = str(tmp_path / "go")
    with new_pool(start_method) as ex:
        x = np.zeros(BIG)
        first = ex.submit(wait_for_file, flag, x)
        assert wait_until(lambda: not _idle(ex), 10)
        if change == "nan payload":
            x[5] = np.nan
            x.view(np.uint64)[5] ^= np.uint64(1)  # another NaN
        elif change == "negative zero":
            x[5] = -0.0                          # == 0.0, other bytes
        else:
            x.view(np.uint8)[-1] = 1
        got = ex.submit(ident, x).result(timeout=60)
        assert got.tobytes() == x.tobytes()
        Path(flag).touch()
        first.result(timeout=60)
        del got


def test_a_copy_begun_after_a_submit_serves_that_task_unchecked(monkeypatch):
    """The snapshot clock: a copy (or a compare) that began after a task's
    submit() shows the array as it was then or later, so that task takes it
    without comparing; a task submitted after the copy began compares, and
    sees a change made in between."""
    pool = sa_pool._Pool(THRESHOLD)
    leases = pool.leases
    compared: list[bool] = []
    real = sa_pool._same_contents

    def counted(a: np.ndarray, b: np.ndarray) -> bool:
        compared.append(same := real(a, b))
        return same
    monkeypatch.setattr(sa_pool, "_same_contents", counted)
    arr = _big(1.0)
    held = []
    try:
        first, second = next(sa_pool._ticks), next(sa_pool._ticks)   # two submits
        held.append(copy := leases.lease(arr, None, first))          # copied now
        assert copy is not None and compared == []
        held.append(leases.lease(arr, None, second))
        assert held[-1] is copy and compared == []      # begun after: unchecked
        third = next(sa_pool._ticks)                     # submitted after the copy
        fourth = next(sa_pool._ticks)
        held.append(leases.lease(arr, None, third))
        assert held[-1] is copy and compared == [True]  # compared, equal
        held.append(leases.lease(arr, None, fourth))    # the compare began after
        assert held[-1] is copy and compared == [True]
        arr[7] = -1.0                                    # changed, then submitted
        fifth = next(sa_pool._ticks)
        held.append(changed := leases.lease(arr, None, fifth))
        assert changed is not copy and compared == [True, False]
        assert changed is not None and changed.array[7] == -1.0 and copy.array[7] != -1.0
    finally:
        leases.release([h for h in held if h is not None])
        pool.close()
    assert not leases.current and not pool.spares.names()


# ---------------------------------------------------------------- initializer, breakage, recycling

def test_initializer_runs_in_each_worker(start_method):
    init_arr = sa.share(np.full(SMALL, 2.0))
    with new_pool(start_method, initializer=init_worker, initargs=("tagged", init_arr)) as ex:
        got = list(ex.map(read_init_state, range(8)))
    assert {g[1] for g in got} == {"tagged"}
    assert {g[2] for g in got} == {init_arr.segment.name}      # a handle, not a copy
    assert {g[3] for g in got} == {2.0 * SMALL}
    del init_arr


def test_initializer_must_be_callable(start_method):
    with pytest.raises(TypeError):
        new_pool(start_method, initializer=42)


def test_initializer_failure_breaks_the_pool(start_method):
    ex = new_pool(start_method, initializer=init_fail)
    try:
        fut = ex.submit(square, 3)
        with pytest.raises(BrokenProcessPool):
            fut.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(square, 3)
    finally:
        ex.shutdown()


def test_task_that_cannot_be_unpickled_breaks_the_pool(start_method):
    ex = new_pool(start_method)
    try:
        fut = ex.submit(ident, [UnpicklableInWorker(), _big()])
        with pytest.raises(BrokenProcessPool):
            fut.result(timeout=60)
    finally:
        ex.shutdown()
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
def test_max_tasks_per_child(start_method):
    if start_method == "fork":
        with pytest.raises(ValueError, match="fork"):
            new_pool(start_method, max_workers=1, max_tasks_per_child=2)
        return
    with new_pool(start_method, max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(getpid).result() for _ in range(4)]
        r = ex.submit(make_result, BIG, 1.0).result()
    assert pids[0] == pids[1] != pids[2] == pids[3], pids
    assert type(r) is sa.ndarray and np.all(r == 1.0)


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="max_tasks_per_child exists")
def test_max_tasks_per_child_needs_311(start_method):
    with pytest.raises(TypeError):
        new_pool(start_method, max_tasks_per_child=2)


def test_share_threshold_validation():
    with pytest.raises(ValueError):
        sa.ProcessPoolExecutor(1, share_threshold=-1)


def test_zero_threshold_with_empty_and_scalar_arrays(start_method):
    """``share_threshold=0`` shares every array; empty and 0-d ones too must work."""
    with new_pool(start_method, max_workers=1, share_threshold=0) as ex:
        for v in [np.zeros(0), np.zeros((3, 0)), np.array(2.5), np.arange(3)]:
            r = ex.submit(ident, [v]).result()[0]
            assert r.shape == v.shape and r.dtype == v.dtype
            assert np.array_equal(np.asarray(r), v)
        del r
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


# ---------------------------------------------------------------- __main__ functions

MAIN_SCRIPT = r'''
import json, multiprocessing as mp, os, sys
import numpy as np
import sharedarray as sa


def in_main(x):
    return x * 2


if __name__ == "__main__":
    def local(x):              # not importable at all: cloudpickle sends it by value
        return x + 1

    big = np.ones(1 << 18)
    with sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1])) as ex:
        a = ex.submit(in_main, 21).result()
        b = list(ex.map(local, [1, 2, 3]))
        c = ex.submit(in_main, big).result()
        d = ex.submit(lambda y: y.sum(), c).result()
        out = {"a": a, "b": b, "c_type": type(c).__name__, "c_mod": type(c).__module__,
               "c_sum": float(c.sum()), "d": float(d), "pid": os.getpid()}
    del c
    import gc; gc.collect()
    out["left"] = sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"sa-{os.getpid()}-"))
    print(json.dumps(out))
'''


def test_functions_defined_in_main(start_method, tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), start_method], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["a"] == 42 and out["b"] == [2, 3, 4]
    assert (out["c_mod"], out["c_type"]) == ("sharedarray.core", "ndarray")
    assert out["c_sum"] == out["d"] == 2.0 * (1 << 18)
    assert out["left"] == []
    assert "leaked" not in proc.stderr, proc.stderr


MAIN_PLAIN = r'''
import multiprocessing as mp, sys
import sharedarray as sa
import sharedarray.pool as sa_pool

OFFSET = 5


def in_main(x):
    return x * 2 + OFFSET


ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
pool = ex._sa_pool
before = sa_pool._plain_call(in_main, (1,), {}, pool) is not None
first = ex.submit(in_main, 1).result()
after = sa_pool._plain_call(in_main, (1,), {}, pool) is not None
rest = [f.result() for f in [ex.submit(in_main, i) for i in range(50)]]
mapped = list(ex.map(in_main, range(50), chunksize=7))
ex.shutdown()
print(before, after, first, rest == mapped == [i * 2 + 5 for i in range(50)])
'''


def test_tasks_of_a_main_function_take_the_standard_path_after_the_first(start_method):
    """A ``__main__`` function's first task goes through our pickler, which
    keeps its by-value copy; later tasks with nothing to share take the
    standard path, carrying the function's name and that copy.  Here the
    program is ``python -c``: a spawned or forkserver worker's ``__main__``
    lacks the function (the copy is loaded), a forked worker's has it."""
    proc = run_python(MAIN_PLAIN, start_method, timeout=120)
    assert proc.stdout.split() == ["False", "True", "7", "True"], proc.stdout + proc.stderr


# ---------------------------------------------------------------- what workers return

def return_own_share(n: int, fill: float) -> Any:
    """A worker's own share()d array, dropped by the worker as it returns."""
    return sa.share(np.full(n, fill))


def return_own_share_view(n: int) -> Any:
    return sa.share(np.arange(float(n)))[1::2]


def return_created(name: str) -> Any:
    return sa.from_array(name, np.arange(float(SMALL)))


def return_deleted(name: str) -> Any:
    """A handle to a name that is gone before the parent can attach it."""
    arr = sa.attach(name)
    sa.delete(name)
    return {"kept": 1, "arr": arr}


def make_result_after(path: str, n: int, fill: float) -> np.ndarray:
    wait_for_file(path)
    return make_result(n, fill)


def return_deleted_after(path: str, name: str) -> Any:
    wait_for_file(path)
    return return_deleted(name)


@pytest.mark.parametrize("n", [SMALL, BIG])
def test_worker_may_return_its_own_shared_arrays(pool, n):
    futs = [pool.submit(return_own_share, n, float(i)) for i in range(18)]
    for i, f in enumerate(futs):
        r = f.result(timeout=60)
        assert r.shape == (n,) and float(r.sum()) == float(i) * n
    r = pool.submit(return_own_share_view, n).result(timeout=60)
    assert np.array_equal(r, np.arange(float(n))[1::2])


def test_worker_may_return_a_created_array(pool, shm_name):
    r = pool.submit(return_created, shm_name).result(timeout=60)
    try:
        assert r.segment.name == shm_name and np.array_equal(r, np.arange(float(SMALL)))
    finally:
        sa.delete(shm_name)


def return_deleted_given(name: str, arr: np.ndarray) -> Any:
    """return_deleted, for a task with an array argument (our pickler)."""
    return return_deleted(name)


@pytest.mark.parametrize("path", ["standard", "ours"])
def test_result_that_cannot_come_back_fails_its_own_future(pool, shm_name, path,
                                                           tasks_of_ours):
    """A shared array in a result that the parent cannot attach fails that
    task with the real error, whichever way the task travelled."""
    sa.from_array(shm_name, np.ones(SMALL))     # not mapped here any more
    gc.collect()
    bystander = pool.submit(describe_slowly, np.ones(SMALL), 0.2)
    fut = (pool.submit(return_deleted, shm_name) if path == "standard"
           else pool.submit(return_deleted_given, shm_name, np.ones(BIG)))
    assert len(tasks_of_ours) == (1 if path == "standard" else 2)
    with pytest.raises(FileNotFoundError):
        fut.result(timeout=60)
    assert bystander.result(timeout=60)["sum"] == SMALL
    assert pool.submit(square, 7).result(timeout=60) == 49


def test_returned_future_behaves_as_the_standard_one(pool, tmp_path):
    flag = str(tmp_path / "go")
    first = pool.submit(wait_for_file, flag, 1)
    second = pool.submit(wait_for_file, flag, 2)
    queued = [pool.submit(square, i) for i in range(20)]
    assert wait_until(lambda: first.running() or first.done(), 30)
    assert not first.cancel()                   # running: cannot be cancelled
    cancelled = [f for f in queued if f.cancel()]
    Path(flag).touch()
    assert (first.result(timeout=60), second.result(timeout=60)) == (1, 2)
    for f in queued:
        assert f.cancelled() == (f in cancelled)
        if not f.cancelled():
            assert f.result(timeout=60) == queued.index(f) ** 2
    done, _ = concurrent.futures.wait(queued, timeout=60)
    assert len(done) == len(queued)


INIT_GLOBAL_SCRIPT = r'''
import multiprocessing as mp, sys
import sharedarray as sa

SCALE = None


def init(scale):
    global SCALE
    SCALE = scale


def task(x):
    return SCALE * x


if __name__ == "__main__":
    with sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]), initializer=init,
                                initargs=(3,)) as ex:
        print(ex.submit(task, 14).result(), list(ex.map(task, [1, 2])))
'''


def test_initializer_globals_are_seen_by_main_functions(start_method, tmp_path):
    """The standard pattern: an initializer sets a module global that a task
    defined in ``__main__`` reads."""
    script = tmp_path / "init_global.py"
    script.write_text(INIT_GLOBAL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), start_method], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", "[3,", "6]"]


def test_functions_travel_by_reference_where_plain_pickle_works():
    assert sa_pool._how_to_send(square) == sa_pool._BY_REFERENCE
    assert sa_pool._how_to_send(len) == sa_pool._BY_REFERENCE
    assert sa_pool._how_to_send(lambda: 0) == sa_pool._BY_VALUE

    def local() -> None:
        pass

    assert sa_pool._how_to_send(local) == sa_pool._BY_VALUE
    shadow = types_copy(square)                  # same name, another object
    shadow.__qualname__ = square.__qualname__
    shadow.__module__ = square.__module__
    assert sa_pool._how_to_send(shadow) == sa_pool._BY_VALUE


def types_copy(fn: Callable) -> Callable:
    import types
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__)


# ---------------------------------------------------------------- threads at fork

FORK_THREADS_SCRIPT = r'''
import json, multiprocessing as mp, os, threading, time
import numpy as np
import sharedarray as sa

forks = []          # the threads alive at each fork of this process
os.register_at_fork(before=lambda: forks.append(sorted(t.name for t in threading.enumerate())))


def total(x):
    return float(x.sum())


def threads_here(_=None):
    return sorted(t.name for t in threading.enumerate())


def ones(n):
    return np.ones(n)


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    big = np.ones(1 << 18)                      # 2 MiB: travels through shared memory
    with sa.ProcessPoolExecutor(1, ctx) as a:
        a.submit(total, big).result()           # its released copy is kept for reuse
        r = a.submit(ones, 1 << 18).result()    # and so is this result, once dropped
        del r
        assert a._sa_pool.results.names()
        time.sleep(0.1)
        with sa.ProcessPoolExecutor(1, ctx) as b:   # forks while a keeps that copy
            b.submit(total, big).result()
        worker = a.submit(threads_here).result()
    print(json.dumps({"parent_forks": forks, "worker": worker}))
'''


def test_no_thread_of_ours_when_a_process_forks(tmp_path):
    """The library's own threads are not there when this process or a worker
    forks (3.12+ warns about forking a multi-threaded process; 3.14 makes
    forkserver the default on Linux for that reason).  The standard
    executor's own threads (its manager and queue feeder) are not ours to
    avoid.  Run in a fresh interpreter: pytest's faulthandler watchdog and
    xdist's I/O thread would be there too.  (A worker's parent watchdog is a
    native thread that holds no lock; it is not a Python thread.)"""
    out = json.loads(run_python(FORK_THREADS_SCRIPT, cwd=tmp_path).stdout.splitlines()[-1])
    ours = [n for names in out["parent_forks"] for n in names if n.startswith("sharedarray")]
    assert len(out["parent_forks"]) >= 2
    assert ours == []
    assert [n for n in out["worker"] if n.startswith("sharedarray")] == []


# ---------------------------------------------------------------- spares that remember their array

def test_resubmitted_array_is_matched_against_its_released_copy(start_method, monkeypatch):
    """An array submitted again after its task is done is compared with the
    copy it left behind: unchanged, that copy serves as it is (no byte
    written); changed in place, the new task still sees the change."""
    copies: list[str] = []
    def counting(name: str) -> Callable[..., Any]:
        real = getattr(sa_pool, name)

        def counted(*a: Any, **k: Any) -> Any:
            copies.append(name)
            return real(*a, **k)
        return counted

    for name in ("share_segment", "refill_segment"):
        monkeypatch.setattr(sa_pool, name, counting(name))
    ex = new_pool(start_method)
    try:
        leases = ex._sa_pool.leases
        arr = np.arange(float(BIG))
        first = ex.submit(describe, arr).result(timeout=60)
        assert wait_until(lambda: not leases.current, 10)
        second = ex.submit(describe, arr).result(timeout=60)
        assert second["segment"] == first["segment"] and second["sum"] == first["sum"]
        assert copies == ["share_segment"]
        assert wait_until(lambda: not leases.current, 10)
        arr[-1] = -1.0                  # changed in place after its tasks are done
        third = ex.submit(describe, arr).result(timeout=60)
        assert third["sum"] == float(arr.sum()) != first["sum"]
        assert copies == ["share_segment", "refill_segment"]
        assert wait_until(lambda: not leases.current, 10)
        twin = arr.copy()               # the same bytes, another object: copied
        assert ex.submit(describe, twin).result(timeout=60)["sum"] == third["sum"]
        assert len(copies) == 3          # copied (into the free copy, or a new one)
    finally:
        ex.shutdown(wait=True)


def test_tasks_with_nothing_to_share_are_recognised(pool):
    """Such tasks (also our map()'s chunks of them) travel as the standard
    executor sends them; anything with an array, a function sent by value
    or another object goes through our pickler."""
    import functools

    parent = pool._sa_pool

    def plain(fn: Any, args: tuple, kwargs: dict) -> bool:
        return sa_pool._plain_call(fn, args, kwargs, parent) is not None

    assert sa_pool._plain_call(square, (3,), {}, parent) == (square, (3,))
    assert plain(abs, (-3,), {"k": None})
    items, chunk = (1, [2]), ((1, 2), (3, [4]))
    assert (sa_pool._plain_call(sa_pool._map_chunk, (square, items), {}, parent)
            == (sa_pool._map_chunk, (square, items)))
    assert (sa_pool._plain_call(sa_pool._starmap_chunk, (square, chunk), {}, parent)
            == (sa_pool._starmap_chunk, (square, chunk)))
    assert not plain(square, (np.ones(3),), {})
    # Containers of scalars, two levels inside an argument; not an array in them.
    assert plain(square, ([1, 2], {"k": (1, 2.5)}, ((None,),)), {"kw": [{"a": 1}]})
    assert not plain(square, ([1, np.ones(3)],), {})
    assert not plain(square, ({"k": np.ones(3)},), {})
    assert not plain(square, ([[[1]]],), {})                  # deeper: our pickler
    assert not plain(square, (list(range(5000)),), {})       # larger: our pickler
    assert not plain(square, (1,), {"a": np.ones(3)})
    assert not plain(square, (1,), {"a": [np.ones(3)]})
    assert not plain(lambda x: x, (1,), {})
    for runner in (sa_pool._map_chunk, sa_pool._starmap_chunk):
        assert not plain(runner, (lambda x: x, ((1,),)), {})
        assert not plain(runner, (square, ((np.ones(3),),)), {})
        assert not plain(runner, (square, ((1,), ([np.ones(3)],))), {})
        assert not plain(runner, (square, [(1,)]), {})            # not our chunk
        assert not plain(runner, (square, ((1,),)), {"k": 1})
    assert plain(sa_pool._map_chunk, (square, ([[2, 3]],)), {})
    assert not plain(sa_pool._map_chunk, (square, ([[[2]]],)), {})    # deeper
    assert plain(sa_pool._starmap_chunk, (square, (([[2]],),)), {})
    assert not plain(functools.partial(square), (1,), {})
    # Exact types only: Python's and numpy's scalars; subclasses, records
    # (np.void, which can hold objects) and anything else take our pickler.
    assert plain(square, (None, True, 1, 1.5, 1j, "s", b"b"), {})
    assert plain(square, (np.float64(1.0), np.int32(2), np.bool_(True), np.str_("s"),
                          np.datetime64("2026-01-01"), np.complex64(1j)), {})
    assert not plain(square, (np.void(b"ab"),), {})
    assert not plain(square, (Box(1),), {})
    assert not plain(square, (type("Int", (int,), {})(1),), {})


def nested(x: Any) -> Any:
    """Returns its argument inside containers, with numpy scalars."""
    return {"x": x, "scalars": [np.float64(1.5), np.int64(2)], "pair": (x, [x])}


def test_tasks_of_scalars_and_containers_take_the_standard_path(pool, tmp_path,
                                                                tasks_of_ours):
    """Numpy scalars (what iterating an array gives) and lists, tuples or
    dicts of scalars travel as the standard executor sends them, both ways:
    no _Call, no lease; the values come back equal and of the same types."""
    flag = str(tmp_path / "go")
    waiting = pool.submit(wait_for_file, flag, [np.float32(0.5), {"k": "s"}])
    args = [np.arange(3)[1], [1, 2.5], {"a": (None, b"b")}, np.float64(3.25)]
    futs = [pool.submit(nested, a) for a in args]
    assert not tasks_of_ours and pool._sa_pool.leases.pending == 0
    Path(flag).touch()
    assert waiting.result(timeout=60) == [np.float32(0.5), {"k": "s"}]
    for a, f in zip(args, futs, strict=True):
        r = f.result(timeout=60)
        assert r == nested(a) and type(r["x"]) is type(a)
        assert [type(v) for v in r["scalars"]] == [np.float64, np.int64]
    mapped = list(pool.map(nested, np.arange(5), chunksize=2))
    assert [type(r["x"]) for r in mapped] == [np.int64] * 5
    assert [int(r["x"]) for r in mapped] == list(range(5))
    assert not tasks_of_ours
    pool.submit(nested, [np.ones(3)]).result(timeout=60)     # an array: ours
    assert tasks_of_ours == [1]


def test_a_large_array_in_a_container_still_travels_shared(pool):
    """A list or dict with a large array in it is not "nothing to share":
    the array reaches the worker and comes back through shared memory."""
    out = pool.submit(nested, [np.full(BIG, 2.0)]).result(timeout=60)
    assert type(out["x"][0]) is sa.ndarray and float(out["x"][0].sum()) == 2.0 * BIG
    assert type(out["pair"][1][0][0]) is sa.ndarray


def result_of_own_pool(n: int) -> tuple:
    """A task that runs a standard executor of its own (forked from this
    worker) and returns what that one's worker returned."""
    import multiprocessing as mp
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as own:
        r = own.submit(make_result, n, 3.0).result()
    return type(r).__module__, float(r.sum()), r


def test_a_tasks_own_executor_is_left_alone(pool):
    """A process forked from a worker inherits its set-up, but its results
    are not ours to place: the task's own executor gets a plain array, by
    value; the task's result then comes back shared."""
    module, total, r = pool.submit(result_of_own_pool, BIG).result(timeout=120)
    assert (module, total) == ("numpy", 3.0 * BIG)
    assert type(r) is sa.ndarray and float(r.sum()) == 3.0 * BIG


def test_map_of_plain_tasks_still_shares_large_results(pool):
    rs = list(pool.map(make_result, [BIG] * 3, [1.0, 2.0, 3.0], chunksize=2))
    assert [type(r) for r in rs] == [sa.ndarray] * 3
    assert [float(r[-1]) for r in rs] == [1.0, 2.0, 3.0]


def test_tasks_with_nothing_to_share_take_the_standard_path(pool, tmp_path,
                                                           tasks_of_ours):
    """No _Call or lease for them, and their large results still come back
    through shared memory (also a worker's own ``share()``)."""
    flag = str(tmp_path / "go")
    fut = pool.submit(make_result_after, flag, BIG, 2.5)
    own = pool.submit(return_own_share, BIG, 1.0)
    assert not tasks_of_ours and pool._sa_pool.leases.pending == 0
    Path(flag).touch()
    r = fut.result(timeout=60)
    assert type(r) is sa.ndarray and r.flags.writeable and np.all(r == 2.5)
    assert r.segment.name.startswith(f"sa-{os.getpid()}-")
    r2 = own.result(timeout=60)
    assert type(r2) is sa.ndarray and float(r2.sum()) == float(BIG)
    del r, r2


def test_futures_of_tasks_with_nothing_to_share_are_not_kept(pool, tmp_path):
    """The executor holds such a future only as long as the standard one
    does: until it is done."""
    flag = str(tmp_path / "go")
    waiting = pool.submit(wait_for_file, flag, 1)
    done = [pool.submit(square, i) for i in range(20)]
    assert [f.result(timeout=60) for f in done] == [i * i for i in range(20)]
    refs = [weakref.ref(f) for f in done]
    done.clear()
    gc.collect()
    assert all(r() is None for r in refs)
    Path(flag).touch()
    assert waiting.result(timeout=60) == 1


def test_tasks_with_nothing_to_share_still_running_at_close(start_method, tmp_path,
                                                           shm_name):
    """After the executor's collection with such tasks under way (dropped
    without a shutdown: the standard executor then lets them finish), the
    final sweep of results waits until they are all done, and a result that
    cannot be attached still fails its own future."""
    flag = str(tmp_path / "go")
    sa.from_array(shm_name, np.ones(SMALL))
    gc.collect()
    ex = new_pool(start_method, max_workers=1)
    leases = ex._sa_pool.leases
    futs = [ex.submit(make_result_after, flag, BIG, float(i)) for i in range(3)]
    futs.append(ex.submit(return_deleted_after, flag, shm_name))
    assert leases.pending == 0                       # the standard path
    swept: list[list[bool]] = []
    real = leases.on_cleanup

    def recording() -> None:
        swept.append([f.done() for f in futs])
        real()

    leases.on_cleanup = recording
    ref = weakref.ref(ex)
    del ex
    assert wait_until(lambda: ref() is None, 10)    # collected: close() runs, in a
    assert any(j.running() for j in sa_pool._closing)   # thread of its own, and
    assert not leases.closed and not swept              # waits for the tasks
    Path(flag).touch()
    rs = [f.result(timeout=60) for f in futs[:3]]
    assert [type(r) for r in rs] == [sa.ndarray] * 3
    assert [float(r[-1]) for r in rs] == [0.0, 1.0, 2.0]
    with pytest.raises(FileNotFoundError):
        futs[3].result(timeout=60)
    assert wait_until(lambda: bool(swept), 10) and swept == [[True] * 4]
    names = {r.segment.name for r in rs}
    assert all(shm_exists(n) for n in names)        # swept, yet still ours
    del rs
    futs.clear()
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


FORK_DURING_CLOSE = r'''
import os, sys, threading
import sharedarray as sa
import sharedarray.pool as sa_pool

ex = sa.ProcessPoolExecutor(1)
go = threading.Event()
# A clean-up of a collected executor under way in a thread of its own.
sa_pool._closing.add(sa_pool._Janitor(0.0, go.wait))
pid = os.fork()
if pid == 0:
    sys.exit(0)          # exit functions run: the parent's clean-up is not awaited
_, status = os.waitpid(pid, 0)
go.set()
ex.shutdown()
print("child", os.waitstatus_to_exitcode(status))
'''


def test_a_forked_child_does_not_wait_for_its_parents_clean_ups():
    """A child forked while a collected executor's clean-up runs in its own
    thread exits normally: that thread is not in the child, and the child's
    exit does not wait for it (the parent's does)."""
    proc = run_python(FORK_DURING_CLOSE, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "child 0", proc.stdout + proc.stderr


INHERITED_GARBAGE = r'''
import gc, os, threading, weakref
import sharedarray as sa

ex = sa.ProcessPoolExecutor(1)          # an executor of ours lives
parent = os.getpid()
held = threading.Lock()
holder = threading.Thread(target=held.acquire)   # held for good, as a lock a
holder.start(); holder.join()                    # thread held at the fork


class Node:
    pass


def callback(_ref):
    if os.getpid() != parent:
        held.acquire()                  # the child: would wait forever


gc.set_threshold(1_000_000)             # no collection until asked
node = Node()
node.me = node                          # garbage in a cycle, not yet collected
ref = weakref.ref(node, callback)
del node
pid = os.fork()
if pid == 0:
    gc.collect()                        # the child's collector runs
    os._exit(0 if ref() is not None else 3)
_, status = os.waitpid(pid, 0)
gc.collect()                            # the parent collects its own garbage
ex.shutdown()
print("child", os.waitstatus_to_exitcode(status), "parent collected", ref() is None)
'''


def test_a_forked_child_never_collects_what_it_inherited():
    """While an executor of ours lives, a forked child (a worker, or any
    fork) does not collect the garbage it inherited: the callbacks of an
    inherited executor would run there and may wait for a lock held in the
    parent at the fork (the standard executor's does, on Python 3.13 often).
    The parent still collects its own."""
    proc = run_python(INHERITED_GARBAGE, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "child 0 parent collected True", (
        proc.stdout + proc.stderr)


STUCK_AT_EXIT = r'''
import threading
import sharedarray as sa
import sharedarray.pool as sa_pool

ex = sa.ProcessPoolExecutor(1)
ex.shutdown()
never = threading.Event()
# A collected executor's clean-up that cannot finish (it waits for ever).
sa_pool._closing.add(sa_pool._Janitor(0.0, never.wait))
sa_pool._EXIT_WAIT = 0.2
print("exiting")
'''


def test_a_clean_up_that_cannot_finish_does_not_hang_the_exit():
    """At exit the clean-ups of collected executors still under way are
    waited for, but not for ever: the interpreter exits."""
    proc = run_python(STUCK_AT_EXIT, timeout=120)
    assert proc.stdout.strip() == "exiting" and proc.returncode == 0, proc.stderr


# A script's start: from Python 3.12 the standard executor's manager thread
# joins the workers it stopped holding the executor's shutdown lock; this
# runs a collection there and then, and notes whether the executor (``ref``)
# still lived after it.
COLLECTING_IN_MANAGER = r'''
import gc, os, signal, sys, threading, time, weakref
import multiprocessing as mp, multiprocessing.process as mpp
import sharedarray as sa


class Cycle:
    """Keeps an executor in a reference cycle: only the collector frees it."""

    def __init__(self, ex):
        self.ex = ex
        self.me = self


_join = mpp.BaseProcess.join
ref = None
alive_in_manager = []


def join(self, timeout=None):
    if threading.current_thread() is not threading.main_thread():
        gc.collect()
        alive_in_manager.append(ref is not None and ref() is not None)
    return _join(self, timeout)


def freed(ref):
    """Whether the executor is freed once its keeper lets it go (after its
    manager thread has ended)."""
    for _ in range(3000):
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.01)
    return False


mpp.BaseProcess.join = join
gc.disable()                      # collections only where this script makes them
'''

WINDING_DOWN = COLLECTING_IN_MANAGER + r'''
ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
manager = ex._executor_manager_thread
ref = weakref.ref(ex)
Cycle(ex)
ex.shutdown(wait=False)
del ex
manager.join()
del manager
print("kept", all(alive_in_manager) and bool(alive_in_manager), "freed", freed(ref))
'''


def test_an_executor_dropped_after_shutdown_without_wait_is_not_freed_in_its_manager(
        start_method):
    """shutdown(wait=False), then the executor dropped in a reference cycle.
    Its manager thread stops and joins the workers holding the executor's
    shutdown lock (Python 3.12+); the standard executor's weakref callback
    takes that lock.  A collection in the manager thread that freed the
    executor then would wait for itself, and the exit for ever.  The
    executor lives until its manager thread is gone, then is freed."""
    proc = run_python(WINDING_DOWN, start_method, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "kept True freed True", (
        proc.stdout + proc.stderr)


BROKEN_WHILE_DROPPED = COLLECTING_IN_MANAGER + r'''
from concurrent.futures.process import BrokenProcessPool

ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
manager = ex._executor_manager_thread
victim = next(iter(ex._processes))
ref = weakref.ref(ex)
fut = ex.submit(time.sleep, 60)
Cycle(ex)
del ex                            # garbage in a cycle, its pool still running
os.kill(victim, signal.SIGKILL)
try:
    fut.result(timeout=60)
except BrokenProcessPool:
    pass
manager.join(timeout=60)
if manager.is_alive():
    print("manager stuck", flush=True)
    os._exit(3)
del manager, fut
print("kept", all(alive_in_manager) and bool(alive_in_manager), "freed", freed(ref))
'''


def test_a_dropped_executor_whose_pool_breaks_is_not_freed_in_its_manager(start_method):
    """A worker dies while its executor is garbage in a reference cycle.
    The manager thread fails the futures and joins the workers holding the
    shutdown lock (Python 3.12+), which the standard executor's weakref
    callback takes: a collection there must not free the executor.  It is
    kept until the manager thread has ended, then freed."""
    proc = run_python(BROKEN_WHILE_DROPPED, start_method, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "kept True freed True", (
        proc.stdout + proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr


FORK_WHILE_WINDING_DOWN = r'''
import gc, os, threading, multiprocessing as mp, multiprocessing.process as mpp
import sharedarray as sa
import sharedarray.pool as sa_pool

held, go = threading.Event(), threading.Event()
_join = mpp.BaseProcess.join


def join(self, timeout=None):
    # Hold the manager thread inside its shutdown (its lock held from 3.12)
    # until the main thread has forked.
    if threading.current_thread() is not threading.main_thread() and not go.is_set():
        held.set()
        go.wait()
    return _join(self, timeout)


mpp.BaseProcess.join = join
ex = sa.ProcessPoolExecutor(2, mp.get_context("spawn"))
assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
ex.shutdown(wait=False)
del ex                            # now only kept alive until its manager ends
held.wait()
parent = os.getpid()
import warnings
warnings.simplefilter("ignore", DeprecationWarning)   # fork beside threads, on purpose
pid = os.fork()
if pid == 0:
    # No janitor is copied by the fork; were one's work to run here (its
    # thread ended), the executor's copy must still stay, or its callback
    # waits for the lock held at the fork.
    ended = threading.Thread(target=int)
    ended.start()
    ended.join()
    for key in list(sa_pool._winding_down):
        sa_pool._wound_down(ended, key, parent)
    gc.collect()
    os._exit(0 if sa_pool._winding_down else 3)
_, status = os.waitpid(pid, 0)
go.set()
print("child", os.waitstatus_to_exitcode(status))
'''


def test_a_fork_while_an_executor_winds_down_leaves_it_alone_in_the_child():
    """A fork while an executor shut down without waiting is still stopping
    its workers (its shutdown lock held): the child never frees its copy of
    that executor (whose callback would wait for the lock held at the
    fork), even when its copy of the manager thread goes, and exits."""
    proc = run_python(FORK_WHILE_WINDING_DOWN, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "child 0", proc.stdout + proc.stderr
