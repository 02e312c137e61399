"""Shared arrays pickle as small handles (sharedarray/reduction.py).

What is checked here (pickling, ``share`` and ``by_value``):

* any view of a shared array, pickled and unpickled in another process, is a
  view of the same memory with the same dtype, shape, strides and writability
  (hypothesis, batched: one long-lived child checks many views per example);
* the handle's size does not depend on the array's size;
* every real transport (pickle, cloudpickle, multiprocessing Queue/Pipe/Pool,
  concurrent.futures, joblib/loky) moves handles, not data: a worker's write
  is seen by the parent;
* the attach cache maps a segment once and unmaps it when the arrays go;
* stale, deleted and foreign handles fail loudly, never return other data;
* by_value(), and that plain numpy pickling is untouched;
* share(): unlinked on gc, at exit and (through the resource tracker) after
  SIGKILL; never by a process that only attached it; fork-safe.

Every segment name follows the conftest scheme (``sat-<pid>-<run>-...``) or is
a library temporary (``sa-<pid>-...``), so the leak checks see them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import copyreg
import gc
import itertools
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from multiprocessing.reduction import ForkingPickler

import cloudpickle
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sharedarray as sa
from sharedarray import reduction
from sharedarray.core import segment_of

from conftest import SESSION, SHM, run_python, shm_exists, unlink_quietly

HANDLE_LIMIT = 512          # "at most a few hundred bytes"
_names = itertools.count()

# Markers of trouble in a subprocess's (or its resource tracker's) stderr.
_BAD_STDERR = ("Traceback", "KeyError", "leaked", "resource_tracker")


def _name(tag: str = "r") -> str:
    """A unique test segment name, in the conftest scheme (leak-checked)."""
    return f"sat-{os.getpid()}-{SESSION}-{tag}{next(_names)}-{os.urandom(2).hex()}"


def _wait_gone(name: str, timeout: float = 5.0) -> bool:
    """Poll /dev/shm until ``name`` disappears (True) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while shm_exists(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _mappings(name: str) -> int:
    """How many lines of /proc/self/maps map /dev/shm/<name>."""
    target = f"/dev/shm/{name}"
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.rstrip("\n").split(maxsplit=5)
            if len(parts) == 6 and parts[5] in (target, target + " (deleted)"):
                n += 1
    return n


def _collect() -> None:
    for _ in range(3):
        gc.collect()


def _dtype_identical(a: np.dtype, b: np.dtype) -> bool:
    """Equal, and also alike in what ``==`` ignores (alignment flag, metadata)."""
    # An empty metadata dict says nothing: numpy 2.2 unpickles datetime dtypes
    # with {} where the original had None.
    if (a != b or a.isalignedstruct != b.isalignedstruct
            or (a.metadata or None) != (b.metadata or None)):
        return False
    if a.names is not None:
        if a.names != b.names:
            return False
        for n in a.names:
            fa, fb = a.fields[n], b.fields[n]
            if fa[1:] != fb[1:] or not _dtype_identical(fa[0], fb[0]):
                return False
    if a.subdtype is not None:
        return a.shape == b.shape and _dtype_identical(a.subdtype[0], b.subdtype[0])
    return True


def _bytes_equal(x: np.ndarray, y: np.ndarray) -> bool:
    """Same values, compared bit for bit (NaN payloads included), field by
    field so that padding bytes between fields do not count."""
    if x.shape != y.shape:
        return False
    if x.dtype.names is not None:
        return all(_bytes_equal(x[n], y[n]) for n in x.dtype.names)
    return np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _handle_args(arr: np.ndarray) -> tuple:
    fn, args = reduction.reduce_ndarray(arr)
    assert fn is reduction.rebuild_ndarray
    return args


class _Tampered:
    """Pickles as an arbitrary call of the rebuild function (a forged handle)."""

    def __init__(self, args: tuple) -> None:
        self.args = args

    def __reduce__(self):
        return reduction.rebuild_ndarray, self.args


# ===================================================================== views
#
# Hypothesis draws batches of views; one long-lived child process (forked or
# spawned once per test, before any of the segments exists, so it really
# attaches them by name) unpickles each batch, compares every view with a
# by-value copy sent alongside, and writes a marker through each writable view.
# The parent then checks that the original arrays show the markers.

SEG_DTYPES = [
    np.dtype("?"), np.dtype("i1"), np.dtype("u1"), np.dtype("<i2"), np.dtype(">i2"),
    np.dtype("<u4"), np.dtype(">i8"), np.dtype("<f2"), np.dtype("<f4"),
    np.dtype(">f8"), np.dtype(np.longdouble), np.dtype("<c8"), np.dtype(">c16"),
    np.dtype("M8[ns]"), np.dtype(">m8[s]"), np.dtype("<M8[D]"),
    np.dtype("S5"), np.dtype("<U3"), np.dtype(">U2"), np.dtype("V7"),
    np.dtype([("a", "<i4"), ("b", ">f8", (2,)), ("c", "S3")]),
    np.dtype([("x", [("p", "u1"), ("q", "<i2")]), ("y", "<f4")], align=True),
    np.dtype({"names": ["u", "v"], "formats": ["<i2", "u1"], "offsets": [0, 6],
              "itemsize": 12}),
    np.dtype([(("Title", "z"), "<f8"), ("w", ">i2")]),
]
VIEW_DTYPES = ["u1", "i2", "<f4", ">u8", "V2", "S4", "c8", "<M8[us]"]
OPS = ["index", "index", "transpose", "reshape", "dtype", "field", "zero_d",
       "flip", "diagonal", "broadcast", "squeeze"]


def _reshape_candidates(v: np.ndarray) -> list:
    s = v.shape
    out = [(-1,), s + (1,), (1,) + s]
    if v.ndim >= 1 and s[0] % 2 == 0 and s[0] > 0:
        out.append((2, s[0] // 2) + s[1:])
    if v.ndim >= 2:
        out.append((s[0] * s[1],) + s[2:])
    return out


def _apply_op(data, v: np.ndarray, op: str) -> np.ndarray:
    """One view-making step; returns v itself when the step does not apply."""
    if op == "index":
        r = v[data.draw(hnp.basic_indices(v.shape, allow_newaxis=True))]
    elif op == "transpose":
        r = v.transpose(data.draw(st.permutations(range(v.ndim))))
    elif op == "reshape":
        r = v.reshape(data.draw(st.sampled_from(_reshape_candidates(v))))
        if segment_of(r) is None:      # numpy had to copy: not a view
            return v
    elif op == "dtype":
        try:
            r = v.view(data.draw(st.sampled_from(VIEW_DTYPES)))
        except (ValueError, TypeError):  # not legal for this layout
            return v
    elif op == "field":
        if v.dtype.names is None:
            return v
        names = list(v.dtype.names)
        pick = data.draw(st.lists(st.sampled_from(names), min_size=1,
                                  max_size=len(names), unique=True))
        r = v[pick[0]] if len(pick) == 1 else v[pick]
    elif op == "zero_d":
        if v.ndim == 0 or v.size == 0:
            return v
        idx = tuple(data.draw(st.integers(0, n - 1)) for n in v.shape)
        r = v[idx + (Ellipsis,)]
    elif op == "flip":
        r = np.flip(v)
    elif op == "diagonal":              # read-only view
        if v.ndim < 2:
            return v
        r = v.diagonal(data.draw(st.integers(-2, 2)))
    elif op == "broadcast":             # read-only, zero strides
        if v.ndim == 0:
            return v
        r = np.broadcast_to(v, (data.draw(st.integers(0, 3)),) + v.shape, subok=True)
    elif op == "squeeze":
        r = v.squeeze()
    else:  # pragma: no cover
        raise AssertionError(op)
    # Ops whose result numpy (or the core) does not keep as a shared view are
    # skipped here; test_core_keeps_views_shared covers those.
    return r if type(r) is sa.ndarray and segment_of(r) is not None else v


def _packed(x: np.ndarray) -> tuple:
    """An array as (bytes, dtype, shape): numpy unpickles arrays of
    non-native byte order as native ones under pickle protocols < 5, and
    the batches here use every protocol."""
    return x.tobytes(), x.dtype, x.shape


def _unpacked(t: tuple) -> np.ndarray:
    raw, dtype, shape = t
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _check_rebuilt(w, expected, strides, marker, writeable) -> list[str]:
    """Runs in the child: is ``w`` exactly the view that was pickled?"""
    expected, marker = _unpacked(expected), _unpacked(marker)
    errs = []
    if expected.size == 0:
        # Nothing to share: empty views travel by value.
        if w.shape != expected.shape or not _dtype_identical(w.dtype, expected.dtype):
            errs.append(f"empty view came back as {w.shape} {w.dtype!r}")
        return errs
    if type(w) is not sa.ndarray or w.segment is None:
        return [f"not a shared view: {type(w)!r}"]
    if w.shape != expected.shape:
        errs.append(f"shape {w.shape} != {expected.shape}")
    if w.strides != strides:
        errs.append(f"strides {w.strides} != {strides}")
    if not _dtype_identical(w.dtype, expected.dtype):
        errs.append(f"dtype {w.dtype!r} != {expected.dtype!r}")
    if bool(w.flags.writeable) != writeable:
        errs.append(f"writeable {w.flags.writeable} != {writeable}")
    if errs:
        return errs
    if not _bytes_equal(w, expected):
        errs.append("values differ")
    if writeable:
        w[...] = marker
        if not _bytes_equal(w, marker):
            errs.append("marker not written")
    else:
        try:
            w[...] = marker
        except ValueError:
            pass
        else:
            errs.append("a read-only view accepted a write")
        if not _bytes_equal(w, expected):
            errs.append("read-only view changed")
    return errs


def _view_checker(conn) -> None:
    """The child: check every batch it receives until the pipe closes."""
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        if not data:            # a forked child also holds the parent's end
            return
        errors = []
        try:
            items = pickle.loads(data)
            for i, item in enumerate(items):
                errors += [f"view {i}: {e}" for e in _check_rebuilt(*item)]
            del items, item
        except BaseException:
            errors.append(traceback.format_exc())
        gc.collect()
        conn.send(errors)


def _fill_random(arr: np.ndarray, rng: np.random.Generator) -> None:
    if arr.size:
        raw = arr.ravel(order="K").view(np.uint8)
        raw[...] = rng.integers(2, 256, raw.size, dtype=np.uint8)


def _marker_for(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """New contents for ``v``: bytes 0/1 (valid for every dtype, and never
    equal to the 2..255 the segments were filled with)."""
    raw = rng.integers(0, 2, max(v.size, 1) * v.dtype.itemsize, dtype=np.uint8)
    return np.frombuffer(raw.tobytes(), dtype=v.dtype, count=v.size).reshape(v.shape)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_views_roundtrip_in_another_process(method):
    ctx = mp.get_context(method)
    parent_conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_view_checker, args=(child_conn,), daemon=True)
    child.start()
    child_conn.close()
    examples = [0]

    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        examples[0] += 1
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        protocol = data.draw(st.integers(2, pickle.HIGHEST_PROTOCOL))
        names, keep, items, checks = [], [], [], []
        try:
            for _ in range(data.draw(st.integers(1, 6))):
                dtype = data.draw(st.sampled_from(SEG_DTYPES))
                shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4,
                                                   min_side=0, max_side=5))
                name = _name("h")
                arr = sa.create(name, shape, dtype,
                                order=data.draw(st.sampled_from("CF")))
                names.append(name)
                _fill_random(arr, rng)
                base = sa.attach(name, ro=True) if data.draw(st.booleans()) else arr
                v = base
                for op in data.draw(st.lists(st.sampled_from(OPS), max_size=4)):
                    v = _apply_op(data, v, op)
                if data.draw(st.booleans()) and v.flags.writeable:
                    v = v[...]
                    v.flags.writeable = False
                assert type(v) is sa.ndarray and segment_of(v) is not None
                if v.size:
                    assert len(pickle.dumps(v, protocol)) < HANDLE_LIMIT
                expected = np.array(v)
                marker = _marker_for(v, rng)
                writeable = bool(v.flags.writeable)
                items.append((v, _packed(expected), v.strides, _packed(marker),
                              writeable))
                checks.append((v, expected, marker, writeable))
                keep.append((arr, base))
            parent_conn.send_bytes(pickle.dumps(items, protocol))
            assert parent_conn.poll(120), "the checking child did not answer"
            errors = parent_conn.recv()
            assert errors == [], errors
            for v, expected, marker, writeable in checks:
                if v.size:
                    # The child's writes are in the original memory.
                    assert _bytes_equal(v, marker if writeable else expected)
        finally:
            del items, keep, checks
            for name in names:
                sa.delete(name)

    try:
        check()
    finally:
        parent_conn.send_bytes(b"")
        parent_conn.close()
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
    assert examples[0] >= 20
    assert child.exitcode == 0


def test_dtype_equal_but_not_identical_views_roundtrip(shm_name):
    """A view whose dtype == the segment's but differs in what == ignores
    (alignment flag, metadata) comes back with its own dtype."""
    aligned = np.dtype([("a", "u1"), ("b", "<i4")], align=True)
    dt = np.dtype({"names": ["a", "b"], "formats": ["u1", "<i4"],
                   "offsets": [0, 4], "itemsize": 8})    # == aligned, not aligned
    b = sa.create(shm_name, 4, dt)
    f = sa.create(_name(), 4, "<f8")
    try:
        with_meta = np.dtype("<f8", metadata={"unit": "m"})
        for v in (b.view(aligned), f.view(with_meta)):
            assert v.dtype == segment_of(v).meta.dtype
            w = pickle.loads(pickle.dumps(v))
            assert _dtype_identical(w.dtype, v.dtype), (w.dtype, v.dtype)
        del v, w
    finally:
        sa.delete(segment_of(f).name)
        sa.delete(shm_name)


def test_negative_strides_zero_d_and_fortran_exact(shm_name):
    a = sa.create(shm_name, (6, 5, 4), "<i4", order="F")
    a[...] = np.arange(a.size).reshape(a.shape)
    try:
        views = [a[::-1, 1::2, ::-3], a.T, a[2, 3, 1, ...], a.reshape(-1, order="F")[::7],
                 a.T.view("u1")[..., ::-5], a[None, ..., None], a[5, :, 3]]
        for v in views:
            w = pickle.loads(pickle.dumps(v))
            assert type(w) is sa.ndarray
            assert (w.shape, w.strides, w.dtype) == (v.shape, v.strides, v.dtype)
            assert w.flags.f_contiguous == v.flags.f_contiguous
            assert w.flags.c_contiguous == v.flags.c_contiguous
            assert np.shares_memory(w, v)
            assert np.array_equal(w, v)
    finally:
        sa.delete(shm_name)


def test_aligned_struct_roundtrips_exactly_in_fresh_interpreter(shm_name):
    """A .npy header keeps no aligned flag; the handle carries such dtypes."""
    dt = np.dtype([("a", "u1"), ("b", "<i8"), ("c", "<f4", (3,))], align=True)
    a = sa.create(shm_name, 5, dt)
    a["b"] = np.arange(5)
    try:
        code = textwrap.dedent("""
            import pickle, sys
            for v in pickle.loads(bytes.fromhex(sys.stdin.read())):
                print(v.dtype.isalignedstruct, v.dtype.itemsize, v["b"].tolist())
        """)
        out = run_python(code, input=pickle.dumps([a, a[::-2]]).hex())
        assert out.stdout.splitlines() == ["True 32 [0, 1, 2, 3, 4]",
                                           "True 32 [4, 2, 0]"]
        # Dtypes that a header does keep are left out of the handle.
        plain = sa.create(_name(), 5, [("a", "u1"), ("b", "<i8")])
        try:
            assert _handle_args(plain[1:])[6] is None
        finally:
            sa.delete(segment_of(plain).name)
    finally:
        sa.delete(shm_name)


@pytest.mark.parametrize("make", [
    lambda a: a[:1].squeeze(),
    lambda a: np.squeeze(a[None]),
    lambda a: np.lib.stride_tricks.sliding_window_view(a, 2, subok=True),
    lambda a: np.lib.stride_tricks.as_strided(a, (2, 3), (8, 8), subok=True),
], ids=["squeeze-method", "np.squeeze", "sliding_window_view", "as_strided"])
def test_core_keeps_views_shared(shm_name, make):
    a = sa.create(shm_name, 6)
    try:
        v = make(a)
        assert np.shares_memory(v, a)          # it is a view of shared memory...
        assert type(v) is sa.ndarray           # ...so it should stay shared
        assert v.segment is a.segment
        assert len(pickle.dumps(v)) < HANDLE_LIMIT
    finally:
        sa.delete(shm_name)


def test_empty_views_keep_exact_dtype_and_shape(shm_name):
    a = sa.create(shm_name, (4, 3), ">i2")
    try:
        for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
            for v in (a[2:2], a[:, 3:], a.T[1:1, ::-1]):
                w = pickle.loads(pickle.dumps(v, protocol))
                assert w.shape == v.shape and w.size == 0
                assert w.dtype.str == ">i2", (protocol, w.dtype)
    finally:
        sa.delete(shm_name)


def test_read_only_stays_read_only(shm_name):
    a = sa.create(shm_name, (3, 4))
    try:
        ro = a[1:]
        ro.flags.writeable = False
        ro_attached = sa.attach(shm_name, ro=True)[::2]
        code = textwrap.dedent("""
            import pickle, sys
            for v in pickle.loads(bytes.fromhex(sys.stdin.read())):
                assert not v.flags.writeable
                try:
                    v[...] = 1
                except ValueError as e:
                    assert "read-only" in str(e)
                else:
                    raise SystemExit("write accepted")
                try:
                    v.flags.writeable = True
                except ValueError:
                    pass
                else:
                    raise SystemExit("made writeable")
            print("ok")
        """)
        # In a fresh process both attach read-only, so the flag cannot be flipped.
        out = run_python(code, input=pickle.dumps([ro, ro_attached]).hex())
        assert out.stdout.strip() == "ok"
        # In this process the same handles still come back read-only.
        for v in (ro, ro_attached):
            w = pickle.loads(pickle.dumps(v))
            assert not w.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                w[...] = 1
        assert not a.any()
    finally:
        sa.delete(shm_name)


# ===================================================================== size

def test_handle_size_does_not_depend_on_array_size(shm_name):
    if os.statvfs(SHM).f_bavail * os.statvfs(SHM).f_frsize < 3 << 30:
        pytest.skip("needs 1 GiB of free shared memory (and some headroom)")
    small = sa.create(shm_name + "a", 1 << 10, "u1")
    try:
        big = sa.create(shm_name + "b", 1 << 30, "u1")
    except OSError:
        sa.delete(shm_name + "a")
        raise
    try:
        ps, pb = pickle.dumps(small), pickle.dumps(big)
        assert len(ps) < HANDLE_LIMIT and len(pb) < HANDLE_LIMIT
        # The two handles differ only in the integers of shape and strides
        # (pickle writes 1024 in 3 bytes and 2**30 in 5), never in data.  The
        # names have the same length, so the lengths differ by exactly that.
        ints = lambda arr: len(pickle.dumps((arr.shape, arr.strides)))  # noqa: E731
        assert len(pb) - len(ps) == ints(big) - ints(small)
        assert pickle.loads(pb).segment is big.segment
        # A 1 GiB pickle with ForkingPickler (multiprocessing's) is as small.
        assert len(ForkingPickler.dumps(big)) < HANDLE_LIMIT
        del pb
    finally:
        del big
        sa.delete(shm_name + "b")
        sa.delete(shm_name + "a")


def test_handle_size_structured_and_dtype_views(shm_name):
    many = np.dtype([(f"field_{i:03d}", "<f8" if i % 2 else ">i4") for i in range(64)])
    a = sa.create(shm_name, (1000, 3), many)
    b = sa.create(_name(), 1 << 20, ">c16")
    try:
        views = [a, a[::-7, 1], a["field_013"], a[["field_001", "field_050"]],
                 a.view("u1"), a.view("V6")[:, :5], b.view("<i2")[::3],
                 b.view([("re", ">f8"), ("im", ">f8")]), b.real, b.imag[::-1]]
        for v in views:
            p = pickle.dumps(v)
            assert len(p) < HANDLE_LIMIT, (v.dtype, len(p))
            w = pickle.loads(p)
            assert np.shares_memory(w, v) and w.dtype == v.dtype
        # Same structured dtype, 250x more data: same handle length (the
        # shape integers 256 and 65000 take the same width in a pickle).
        c = sa.create(_name(), 256, many)
        d = sa.create(_name(), 65_000, many)
        try:
            p_small, p_big = pickle.dumps(c[::-1]), pickle.dumps(d[::-1])
            assert len(p_big) == len(p_small) < HANDLE_LIMIT
        finally:
            sa.delete(segment_of(c).name)
            sa.delete(segment_of(d).name)
    finally:
        sa.delete(segment_of(b).name)
        sa.delete(shm_name)


# ===================================================================== transports

def _fill(view, value):
    view[...] = value
    return type(view).__name__, os.getpid()


def _fill_and_return(view, value):
    view[...] = value
    return view


def _queue_worker(inq, outq) -> None:
    view, value = inq.get()
    view[...] = value
    outq.put((type(view).__name__, bool(view.flags.writeable)))
    outq.put(view)         # and back: the parent gets its own memory again


def _pipe_worker(conn) -> None:
    view, value = conn.recv()
    view[...] = value
    conn.send(type(view).__name__)
    conn.send(view)


def _joined(p) -> None:
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
    assert p.exitcode == 0


def test_transport_pickle_fresh_interpreter(shm_name):
    a = sa.create(shm_name, (8, 1 << 17))        # 8 MiB
    try:
        v = a[2:6, ::-2]
        data = pickle.dumps(v)
        assert len(data) < HANDLE_LIMIT
        code = textwrap.dedent("""
            import pickle, sys
            import numpy as np
            v = pickle.loads(bytes.fromhex(sys.stdin.read()))
            v[...] = np.arange(v.size, dtype=v.dtype).reshape(v.shape) + 1
            print(type(v).__module__, type(v).__name__, v.flags.writeable)
        """)
        out = run_python(code, input=data.hex())
        assert out.stdout.split() == ["sharedarray.core", "ndarray", "True"]
        assert np.array_equal(v, np.arange(v.size).reshape(v.shape) + 1)
        assert not a[:2].any() and not a[2:6, -2::-2].any()
    finally:
        sa.delete(shm_name)


def test_transport_cloudpickle_closure_fresh_interpreter(shm_name):
    a = sa.create(shm_name, (4, 1 << 17), "<i8")   # 4 MiB
    try:
        v = a[1:3]
        assert len(cloudpickle.dumps(v)) < HANDLE_LIMIT

        def closure():                     # pickled by value by cloudpickle
            v[...] = 42
            return type(v).__name__

        module = sys.modules[__name__]
        cloudpickle.register_pickle_by_value(module)
        try:
            data = cloudpickle.dumps(closure)
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        assert len(data) < 4096            # the 2 MiB view is not inside
        code = textwrap.dedent("""
            import pickle, sys
            print(pickle.loads(bytes.fromhex(sys.stdin.read()))())
        """)
        out = run_python(code, input=data.hex())
        assert out.stdout.strip() == "ndarray"
        assert (a[1:3] == 42).all() and not a[0].any() and not a[3].any()
    finally:
        sa.delete(shm_name)


def test_transport_mp_queue(start_method, shm_name):
    ctx = mp.get_context(start_method)
    a = sa.create(shm_name, (4, 1 << 16))          # 2 MiB
    try:
        inq, outq = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_queue_worker, args=(inq, outq))
        p.start()
        inq.put((a[1:3, ::2], 7.0))
        assert outq.get(timeout=120) == ("ndarray", True)
        back = outq.get(timeout=120)
        _joined(p)
        assert (a[1:3, ::2] == 7).all()
        assert not a[0].any() and not a[3].any() and not a[1:3, 1::2].any()
        assert back.segment is a.segment and np.shares_memory(back, a)
        del back
    finally:
        sa.delete(shm_name)


def test_transport_mp_pipe(start_method, shm_name):
    ctx = mp.get_context(start_method)
    a = sa.create(shm_name, (1 << 18,), "<i4")     # 1 MiB
    try:
        mine, theirs = ctx.Pipe()
        p = ctx.Process(target=_pipe_worker, args=(theirs,))
        p.start()
        theirs.close()
        mine.send((a[::-3], -5))
        assert mine.poll(120)
        assert mine.recv() == "ndarray"
        back = mine.recv()
        _joined(p)
        assert (a[::-3] == -5).all() and (a.sum() == -5 * a[::-3].size)
        assert back.segment is a.segment and np.shares_memory(back, a)
        del back
    finally:
        sa.delete(shm_name)


def test_transport_mp_pool(start_method, shm_name):
    ctx = mp.get_context(start_method)
    a = sa.create(shm_name, (4, 1 << 16))
    try:
        with ctx.Pool(2) as pool:
            kinds = pool.starmap(_fill, [(a[i], i + 1) for i in range(4)])
            back = pool.apply(_fill_and_return, (a[1:3, :10], 9))
        assert {k for k, _ in kinds} == {"ndarray"}
        assert all(pid != os.getpid() for _, pid in kinds)
        assert np.array_equal(a[:, 10:], np.broadcast_to(np.arange(1, 5)[:, None],
                                                         (4, a.shape[1] - 10)))
        assert (a[1:3, :10] == 9).all()
        assert back.segment is a.segment and np.shares_memory(back, a)
        del back
    finally:
        sa.delete(shm_name)


def test_transport_process_pool_executor(start_method, shm_name):
    ctx = mp.get_context(start_method)
    a = sa.create(shm_name, (4, 1 << 16))
    try:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            kinds = list(ex.map(_fill, [a[i] for i in range(4)], range(1, 5)))
            back = ex.submit(_fill_and_return, a[:, ::-1000], -1.5).result()
        assert {k for k, _ in kinds} == {"ndarray"}
        assert all(pid != os.getpid() for _, pid in kinds)
        expected = np.broadcast_to(np.arange(1, 5.0)[:, None], a.shape).copy()
        expected[:, ::-1000] = -1.5
        assert np.array_equal(a, expected)
        assert back.segment is a.segment and np.shares_memory(back, a)
        del back
    finally:
        sa.delete(shm_name)


def test_transport_joblib_loky(shm_name):
    joblib = pytest.importorskip("joblib")
    # 4 MiB: above joblib's auto-memmapping threshold (1M), which must not
    # turn the shared array into a private copy.
    a = sa.create(shm_name, (4, 1 << 17))
    try:
        out = joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(_fill)(a[i], i + 1) for i in range(4))
        assert {k for k, _ in out} == {"ndarray"}
        assert all(pid != os.getpid() for _, pid in out)
        assert np.array_equal(a, np.broadcast_to(np.arange(1, 5.0)[:, None], a.shape))
        backs = joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(_fill_and_return)(a[i, ::2], -i) for i in range(4))
        for i, back in enumerate(backs):
            assert back.segment is a.segment and (a[i, ::2] == -i).all()
        del backs, back
    finally:
        sa.delete(shm_name)


# ===================================================================== attach cache

def test_ten_thousand_handles_map_once(shm_name):
    a = sa.create(shm_name, 10_000, "<i8")
    a[:] = np.arange(10_000)
    try:
        handles = [pickle.dumps(a[i:i + 1]) for i in range(10_000)]
        handles_ro = []
        for i in range(0, 10_000, 100):
            v = a[i:i + 100]
            v.flags.writeable = False
            handles_ro.append(pickle.dumps(v))
        del a, v
        _collect()
        assert _mappings(shm_name) == 0
        assert reduction._cache.get(shm_name) is None or \
            reduction._cache[shm_name]() is None

        arrs = [pickle.loads(h) for h in handles]
        assert _mappings(shm_name) == 1
        assert len({id(x.segment) for x in arrs}) == 1
        assert [int(x[0]) for x in arrs] == list(range(10_000))
        # Read-only handles reuse the writable mapping, and stay read-only.
        ros = [pickle.loads(h) for h in handles_ro]
        assert _mappings(shm_name) == 1
        assert all(not x.flags.writeable and x.segment is arrs[0].segment for x in ros)
        # Unpickled in one pickle (a list) too: still the same mapping.
        more = pickle.loads(pickle.dumps(arrs[::7]))
        assert _mappings(shm_name) == 1 and more[0].segment is arrs[0].segment

        del arrs, ros, more
        _collect()
        assert _mappings(shm_name) == 0        # the cache does not keep it
        assert reduction._cache.get(shm_name) is None
        # ... and it maps again on demand.
        again = pickle.loads(handles[1234])
        assert int(again[0]) == 1234 and _mappings(shm_name) == 1
        del again
        _collect()
        assert _mappings(shm_name) == 0
    finally:
        sa.delete(shm_name)


def test_ten_thousand_handles_in_fresh_process(shm_name, tmp_path):
    a = sa.create(shm_name, 10_000, "<i8")
    a[:] = np.arange(10_000)
    try:
        (tmp_path / "h.pkl").write_bytes(
            pickle.dumps([pickle.dumps(a[i:i + 1]) for i in range(10_000)]))
        code = textwrap.dedent("""
            import gc, pickle, sys
            name = sys.argv[1]
            def maps():
                t = "/dev/shm/" + name
                return sum(1 for l in open("/proc/self/maps")
                           if l.rstrip("\\n").split(maxsplit=5)[5:] in ([t], [t + " (deleted)"]))
            handles = pickle.load(open(sys.argv[2], "rb"))
            before = maps()
            arrs = [pickle.loads(h) for h in handles]
            assert [int(x[0]) for x in arrs] == list(range(10000))
            during = maps()
            del arrs; gc.collect()
            print(before, during, maps())
        """)
        out = run_python(code, shm_name, str(tmp_path / "h.pkl"))
        assert out.stdout.split() == ["0", "1", "0"]
    finally:
        sa.delete(shm_name)


# ===================================================================== bad handles

_LOAD_IN_CHILD = textwrap.dedent("""
    import pickle, sys
    import sharedarray as sa
    try:
        v = pickle.loads(bytes.fromhex(sys.stdin.read()))
    except Exception as e:
        print(type(e).__name__)
    else:
        print("loaded", v.tolist())
""")


def test_stale_handle_raises(shm_name):
    a = sa.create(shm_name, 8, "<i8")
    a[:] = 1
    h = pickle.dumps(a[2:6])
    del a
    _collect()
    sa.delete(shm_name)
    b = sa.create(shm_name, 8, "<i8")          # same name, shape and dtype
    b[:] = 2
    try:
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(h)
        pickle.dumps(b)                          # b is now in the attach cache
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(h)
        assert issubclass(sa.StaleHandleError, Exception)
        out = run_python(_LOAD_IN_CHILD, input=h.hex())
        assert out.stdout.strip() == "StaleHandleError"
        # A handle of b works, of course.
        assert pickle.loads(pickle.dumps(b[2:6])).tolist() == [2] * 4
    finally:
        sa.delete(shm_name)


def test_deleted_name_not_mapped_raises_file_not_found(shm_name):
    a = sa.create(shm_name, 8)
    h = pickle.dumps(a[::2])
    del a
    _collect()
    sa.delete(shm_name)
    with pytest.raises(FileNotFoundError):
        pickle.loads(h)
    out = run_python(_LOAD_IN_CHILD, input=h.hex())
    assert out.stdout.strip() == "FileNotFoundError"


def test_deleted_name_still_mapped_is_reused(shm_name):
    a = sa.create(shm_name, 8, "<i8")
    a[:] = np.arange(8)
    h = pickle.dumps(a[::2])
    h_ro = pickle.dumps(sa.attach(shm_name, ro=True)[1::2])
    sa.delete(shm_name)
    assert not shm_exists(shm_name)
    w = pickle.loads(h)
    assert w.segment is a.segment and w.tolist() == [0, 2, 4, 6]
    w[...] = -1
    assert a.tolist() == [-1, 1, -1, 3, -1, 5, -1, 7]
    r = pickle.loads(h_ro)
    assert r.tolist() == [1, 3, 5, 7] and not r.flags.writeable
    # Even when the name now holds another array, this process's own
    # segment is what the handle means: never the other data.
    b = sa.create(shm_name, 8, "<i8")
    b[:] = 99
    try:
        w2 = pickle.loads(h)
        assert w2.segment is a.segment and w2.tolist() == [-1] * 4
        pickle.dumps(b)        # b is now what the cache knows for the name
        try:
            w3 = pickle.loads(h)
        except sa.StaleHandleError:
            pass
        else:
            assert np.shares_memory(w3, a) and w3.tolist() == [-1] * 4
    finally:
        sa.delete(shm_name)


def test_foreign_handle_raises(shm_name):
    a = sa.create(shm_name, 8)
    try:
        args = _handle_args(a[1:])
        name, token, boot = args[:3]
        assert boot == reduction.BOOT_ID and len(boot) == 32
        other = format(int(boot, 16) ^ 1, "032x")
        forged = (name, token, other) + args[3:]
        # Even though this process maps that very name, the handle is refused.
        with pytest.raises(sa.ForeignHostError):
            reduction.rebuild_ndarray(*forged)
        data = pickle.dumps(_Tampered(forged))
        with pytest.raises(sa.ForeignHostError):
            pickle.loads(data)
        out = run_python(_LOAD_IN_CHILD, input=data.hex())
        assert out.stdout.strip() == "ForeignHostError"
        # Unchanged, the same arguments rebuild the view.
        assert pickle.loads(pickle.dumps(_Tampered(args))).segment is a.segment
    finally:
        sa.delete(shm_name)


def test_forged_token_is_stale_not_other_data(shm_name):
    a = sa.create(shm_name, 8)
    try:
        args = list(_handle_args(a))
        args[1] = "0" * 16 if args[1] != "0" * 16 else "1" * 16
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(pickle.dumps(_Tampered(tuple(args))))
    finally:
        sa.delete(shm_name)


# ===================================================================== by_value

def test_by_value_pickles_data(shm_name):
    a = sa.create(shm_name, (256, 512), "<f4")
    a[...] = np.random.default_rng(0).random(a.shape, dtype="f4")
    try:
        for v in (a, a[::-2, 3:], a.T):
            with sa.by_value():
                p = pickle.dumps(v)
            assert v.nbytes <= len(p) < v.nbytes + 1024
            w = pickle.loads(p)
            assert type(w) is np.ndarray and np.array_equal(w, v)
            assert not np.shares_memory(w, a)
            w[...] = 0                           # a private copy
        assert a.any()
        # Outside again: handles.
        assert len(pickle.dumps(a)) < HANDLE_LIMIT
        # Nested contexts restore the outer state.
        with sa.by_value():
            with sa.by_value():
                pass
            assert len(pickle.dumps(a)) > a.nbytes
        # Protocol 5 out-of-band buffers work inside by_value too.
        bufs = []
        with sa.by_value():
            p = pickle.dumps(a, protocol=5, buffer_callback=bufs.append)
        assert len(bufs) == 1 and len(p) < HANDLE_LIMIT
        w = pickle.loads(p, buffers=bufs)
        assert type(w) is np.ndarray and np.array_equal(w, a)
        del w, bufs
    finally:
        sa.delete(shm_name)


def test_by_value_is_per_thread(shm_name):
    a = sa.create(shm_name, 100_000, "u1")
    barrier = threading.Barrier(2)
    sizes: dict = {}

    def pickler(key: str, by_value: bool) -> None:
        with sa.by_value() if by_value else contextlib.nullcontext():
            barrier.wait()
            out = []
            for _ in range(200):
                out.append(len(pickle.dumps(a)))
            barrier.wait()
        sizes[key] = out

    try:
        threads = [threading.Thread(target=pickler, args=("value", True)),
                   threading.Thread(target=pickler, args=("handle", False))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert min(sizes["value"]) >= a.nbytes
        assert max(sizes["handle"]) < HANDLE_LIMIT

        # asyncio tasks are isolated as well.
        async def main():
            async def task(bv):
                with sa.by_value() if bv else contextlib.nullcontext():
                    await asyncio.sleep(0)
                    n = len(pickle.dumps(a))
                    await asyncio.sleep(0)
                    return n, len(pickle.dumps(a))
            return await asyncio.gather(task(True), task(False))
        (v1, v2), (h1, h2) = asyncio.run(main())
        assert v1 >= a.nbytes and v2 >= a.nbytes
        assert h1 < HANDLE_LIMIT and h2 < HANDLE_LIMIT
    finally:
        sa.delete(shm_name)


def test_plain_numpy_pickling_untouched():
    assert np.ndarray not in copyreg.dispatch_table
    assert copyreg.dispatch_table[sa.ndarray] is reduction.reduce_ndarray
    x = np.arange(100_000, dtype="<f8").reshape(100, 1000)
    for v in (x, x[::-1, ::3], x.T):
        p = pickle.dumps(v)
        assert len(p) >= v.nbytes
        w = pickle.loads(p)
        assert type(w) is np.ndarray and np.array_equal(w, v)
    bufs = []
    p = pickle.dumps(x, protocol=5, buffer_callback=bufs.append)
    assert len(bufs) == 1 and len(p) < 1024
    assert bytes(bufs[0].raw()) == x.tobytes()
    w = pickle.loads(p, buffers=bufs)
    assert np.array_equal(w, x) and np.shares_memory(w, x)   # zero-copy out-of-band
    # Same bytes as without sharedarray registered at all.
    code = "import pickle, numpy as np, sys; sys.stdout.write(pickle.dumps(" \
           "np.arange(1000, dtype='<f8').reshape(10, 100)[::-1, ::3], 4).hex())"
    out = run_python(code)
    assert out.stdout == pickle.dumps(
        np.arange(1000, dtype="<f8").reshape(10, 100)[::-1, ::3], 4).hex()


def test_private_memory_subclass_pickles_by_value(shm_name):
    a = sa.create(shm_name, 50_000)
    a[...] = np.arange(a.size)
    try:
        private = [
            np.zeros(50_000).view(sa.ndarray),
            np.ndarray.copy(a),                    # subclass, private memory
            np.arange(50_000.0).view(sa.ndarray)[::-1],
        ]
        for x in private:
            assert type(x) is sa.ndarray and x.segment is None
            p = pickle.dumps(x)
            assert len(p) >= x.nbytes
            w = pickle.loads(p)
            assert np.array_equal(w, x) and not np.shares_memory(w, a)
        # Results that numpy makes privately are plain arrays anyway.
        for x in (a.copy(), copy.copy(a), copy.deepcopy(a), a + 1):
            assert type(x) is np.ndarray
            assert len(pickle.dumps(x)) >= x.nbytes
        # Empty views of a shared array travel by value (nothing to share).
        e = pickle.loads(pickle.dumps(a[5:5]))
        assert e.shape == (0,) and e.dtype == a.dtype
    finally:
        sa.delete(shm_name)


# ===================================================================== share()

def test_share_unlinked_when_last_reference_dies():
    a = sa.share(np.arange(100.0))
    name = a.segment.name
    assert name.startswith(f"sa-{os.getpid()}-") and len(name) <= 30
    assert shm_exists(name)
    v = a[::3]
    h = pickle.dumps(v)
    del a
    _collect()
    assert shm_exists(name)                        # a view still uses it
    w = pickle.loads(h)                         # and handles reuse it
    assert w.segment is v.segment
    del v, w
    _collect()
    assert not shm_exists(name)
    with pytest.raises(FileNotFoundError):
        pickle.loads(h)


def test_share_unlinked_at_interpreter_exit():
    code = textwrap.dedent("""
        import numpy as np, sharedarray as sa
        keep = [sa.share(np.ones(1000)) for _ in range(3)]
        cycle = [sa.share(np.ones(10))]
        cycle.append(cycle)                     # only the gc could free it
        for a in keep + cycle[:1]:
            print(a.segment.name)
    """)
    out = run_python(code)
    names = out.stdout.split()
    try:
        assert len(names) == 4
        assert [n for n in names if shm_exists(n)] == []
        assert not any(m in out.stderr for m in _BAD_STDERR), out.stderr
    finally:
        for n in names:
            unlink_quietly(n)


def _popen(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_share_unlinked_after_creator_sigkill():
    code = textwrap.dedent("""
        import sys, time, numpy as np, sharedarray as sa
        a = sa.share(np.arange(1 << 16))
        print(a.segment.name, flush=True)
        sys.stdin.read()          # wait to be killed
    """)
    p = _popen(code)
    name = p.stdout.readline().strip()
    try:
        assert name.startswith("sa-") and shm_exists(name)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert _wait_gone(name, 5.0), f"{name} still exists 5 s after SIGKILL"
        # The tracker exits once it has cleaned up, closing the pipes.
        _, err = p.communicate(timeout=60)
        assert "Traceback" not in err and "KeyError" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        if name:
            unlink_quietly(name)


_ATTACHER = textwrap.dedent("""
    import pickle, sys, gc
    v = pickle.loads(bytes.fromhex(sys.argv[1]))
    v[...] = 5
    print("ready", flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.read()
    del v; gc.collect()
""")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_attaching_process_never_unlinks(how):
    a = sa.share(np.zeros(1000))
    name = a.segment.name
    try:
        p = _popen(_ATTACHER, pickle.dumps(a[10:20]).hex(),
                   "wait" if how == "sigkill" else "exit")
        assert p.stdout.readline().strip() == "ready"
        if how == "sigkill":
            os.kill(p.pid, signal.SIGKILL)
        # communicate() returns once every process holding the pipes is gone,
        # resource trackers included: any cleanup they would do is done.
        _, err = p.communicate(timeout=60)
        assert p.returncode == (-signal.SIGKILL if how == "sigkill" else 0), err
        assert not any(m in err for m in _BAD_STDERR), err
        assert shm_exists(name)
        assert (a[10:20] == 5).all() and a.sum() == 50
    finally:
        del a
        _collect()
    assert not shm_exists(name)


def _attach_and_exit(data: bytes) -> None:
    views = pickle.loads(data)
    for v in views:
        v[...] += 1
    del views, v
    gc.collect()


def test_attaching_mp_children_never_unlink(start_method):
    """Children that share this process's resource tracker attach and exit."""
    ctx = mp.get_context(start_method)
    a = sa.share(np.zeros(16))
    name = a.segment.name
    try:
        p = ctx.Process(target=_attach_and_exit,
                        args=(pickle.dumps([a[4:8], a[::-1]]),))
        p.start()
        _joined(p)
        assert shm_exists(name) and a.tolist() == [1] * 4 + [2] * 4 + [1] * 8
    finally:
        del a
        _collect()
    assert not shm_exists(name)


_TRACKER_SCRIPT = textwrap.dedent("""
    import gc, multiprocessing as mp, os, pickle, sys
    import numpy as np, sharedarray as sa

    def work(args):
        i, parent = args
        parent[i] = i + 1                     # attach the parent's share()
        mine = sa.share(np.full(1000, i))     # own temporaries, same tracker
        keep = sa.share(np.ones(10))
        name = mine.segment.name
        del mine; gc.collect()
        assert not os.path.exists("/dev/shm/" + name)
        return keep.segment.name              # keep dies on return

    if __name__ == "__main__":
        names = []
        for method in sys.argv[1:]:
            ctx = mp.get_context(method)
            a = sa.share(np.zeros(8))
            names.append(a.segment.name)
            pool = ctx.Pool(2)
            names += pool.map(work, [(i, a) for i in range(8)])
            pool.close(); pool.join()
            assert a.tolist() == list(range(1, 9)), a
            with ctx.Pool(1) as pool:          # terminate(): workers are killed
                pool.apply(work, ((0, a),))
        print(" ".join(names))
""")


def test_tracker_shared_by_many_processes_stays_quiet(tmp_path):
    script = tmp_path / "tracker_users.py"
    script.write_text(_TRACKER_SCRIPT)
    out = subprocess.run([sys.executable, str(script), "fork", "forkserver", "spawn"],
                         capture_output=True, text=True, timeout=300)
    names = out.stdout.split()
    try:
        assert out.returncode == 0, out.stderr
        assert len(names) == 3 * 9
        assert not any(m in out.stderr for m in _BAD_STDERR), out.stderr
        assert [n for n in names if shm_exists(n)] == []
    finally:
        for n in names:
            unlink_quietly(n)


def test_owning_twice_releases_once(tmp_path):
    """own() is idempotent: unpickling the same handed-over handle twice
    (attach_owned) must not unregister the name twice with the tracker."""
    code = textwrap.dedent("""
        import gc, os, numpy as np
        from sharedarray import reduction as r
        seg = r.share_segment(np.arange(10))          # registered with the tracker
        m = seg.meta
        args = (seg.name, m.token, m.boot, m.offset, m.shape, None, None, True)
        del seg
        a = r.attach_owned(*args)
        b = r.attach_owned(*args)
        assert a.segment is b.segment
        assert r.own(a.segment, registered=True) is r.own(b.segment, registered=True)
        del a, b
        gc.collect()
        assert not os.path.exists("/dev/shm/" + args[0])
        print(args[0])
    """)
    out = run_python(code)
    name = out.stdout.strip()
    unlink_quietly(name)
    assert name.startswith("sa-")
    assert not any(m in out.stderr for m in _BAD_STDERR), out.stderr


# ===================================================================== fork

def _fork_child(data: bytes, parent_segment_id: int) -> None:
    v = pickle.loads(data)
    assert id(v.segment) == parent_segment_id     # the inherited mapping
    v[...] = 3
    del v
    gc.collect()


def test_fork_child_uses_parent_share_and_never_unlinks():
    ctx = mp.get_context("fork")
    a = sa.share(np.zeros(10))
    name = a.segment.name
    try:
        p = ctx.Process(target=_fork_child,
                        args=(pickle.dumps(a[2:5]), id(a.segment)))
        p.start()
        _joined(p)
        assert shm_exists(name) and a.tolist() == [0, 0, 3, 3, 3, 0, 0, 0, 0, 0]
    finally:
        del a
        _collect()
    assert not shm_exists(name)


def test_fork_child_gc_and_exit_never_unlink():
    """os.fork(): the child unpickles a handle, drops *all* its references to
    the segment (so its inherited finalizer runs) and exits through normal
    interpreter shutdown (atexit).  The parent's segment survives both."""
    code = textwrap.dedent("""
        import gc, os, pickle, sys
        import numpy as np, sharedarray as sa
        a = sa.share(np.zeros(8))
        name = a.segment.name
        h = pickle.dumps(a[2:4])
        other = sa.share(np.zeros(4))         # the child keeps this one to exit
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            v = pickle.loads(h)
            assert v.segment is a.segment
            v[...] = 7
            del v, a
            gc.collect()
            assert os.path.exists("/dev/shm/" + name)
            sys.exit(0)                      # atexit runs other's finalizer
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists("/dev/shm/" + name), "child unlinked it"
        assert os.path.exists("/dev/shm/" + other.segment.name)
        assert a.tolist() == [0, 0, 7, 7, 0, 0, 0, 0]
        print(name, other.segment.name)
    """)
    out = run_python(code)
    names = out.stdout.split()
    try:
        assert len(names) == 2
        assert [n for n in names if shm_exists(n)] == []     # gone with the parent
        assert not any(m in out.stderr for m in _BAD_STDERR), out.stderr
    finally:
        for n in names:
            unlink_quietly(n)


# ============================================================ plain .npy files

def test_replaced_npy_file_makes_its_handles_stale(tmp_path):
    """A .npy written by numpy has an identity too (device, inode, size,
    header): rewritten with another layout, or replaced by another file,
    its old handles raise StaleHandleError instead of reinterpreting bytes."""
    path = tmp_path / "plain.npy"
    np.save(path, np.arange(4, dtype="<i8"))
    h = pickle.dumps(sa.attach(f"file://{path}")[1:])
    assert run_python(_LOAD_IN_CHILD, input=h.hex()).stdout.strip() == "loaded [1, 2, 3]"
    np.save(path, np.arange(4, dtype="<f8"))        # same inode, same size
    assert run_python(_LOAD_IN_CHILD, input=h.hex()).stdout.strip() == "StaleHandleError"
    h = pickle.dumps(sa.attach(f"file://{path}"))
    tmp = tmp_path / "new.npy"
    np.save(tmp, np.arange(4, dtype="<f8"))         # same bytes, another file
    os.replace(tmp, path)
    assert run_python(_LOAD_IN_CHILD, input=h.hex()).stdout.strip() == "StaleHandleError"


def test_npy_file_written_through_its_mapping_keeps_its_handles(tmp_path):
    path = tmp_path / "plain.npy"
    np.save(path, np.zeros(4))
    a = sa.attach(f"file://{path}")
    h = pickle.dumps(a)
    a[:] = 5
    a.segment.msync()
    assert run_python(_LOAD_IN_CHILD, input=h.hex()).stdout.strip() == \
        "loaded [5.0, 5.0, 5.0, 5.0]"


# ============================================================ forged handles

_FORGED_IN_CHILD = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import sharedarray as sa
    from sharedarray import reduction
    name = sys.argv[1]
    a = sa.attach(name)
    fn, args = reduction.reduce_ndarray(a)
    name, token, boot, offset, shape, strides, dtype, writeable, where = args
    big = 2 ** 63
    cases = {
        "object dtype": (offset, (4,), (8,), np.dtype(object)),
        "object field": (offset, (4,), (16,), np.dtype([("a", "O"), ("b", "<f8")])),
        "str dtype": (offset, (4,), (8,), "O"),
        "stride near 2**63": (offset, (2,), (big - 8,), None),
        "stride wraps to negative": (offset, (3,), (big // 2,), None),
        "huge shape": (offset, (big // 8, 16), (8, 0), None),
        "negative stride before start": (offset, (4,), (-8,), None),
        "negative offset": (-8, (4,), (8,), None),
        "offset past the end": (offset + 8 * 64, (1,), (8,), None),
        "one past the end": (offset + 8, (64,), (8,), None),
        "negative dimension": (offset, (-1,), (8,), None),
        "strides of other length": (offset, (4,), (8, 8), None),
        "float offset": (float(offset), (4,), (8,), None),
        "bigger itemsize": (offset, (64,), (8,), np.dtype("<f16")),
        "header bytes": (offset - 8, (2,), (8,), None),
    }
    for what, (off, shp, strd, dt) in cases.items():
        forged = (name, token, boot, off, shp, strd, dt, writeable, where)
        try:
            v = reduction.rebuild_ndarray(*forged)
        except ValueError:
            print(what, "ValueError")
        except Exception as e:
            print(what, type(e).__name__, e)
        else:
            print(what, "accepted", v.shape)
    # Edge cases that are inside: the whole array backwards, and empty views.
    whole = reduction.rebuild_ndarray(name, token, boot, offset + 8 * 63, (64,),
                                      (-8,), None, writeable, where)
    empty = reduction.rebuild_ndarray(name, token, boot, offset + 8 * 64, (0,),
                                      (big - 8,), None, writeable, where)
    print("inside", whole[0], empty.shape)
""")


def test_forged_handles_are_refused_before_numpy_sees_them(shm_name):
    sa.from_array(shm_name, np.arange(64.0))
    try:
        out = run_python(_FORGED_IN_CHILD, shm_name).stdout.splitlines()
    finally:
        sa.delete(shm_name)
    assert out[-1] == "inside 63.0 (0,)"
    bad = [line for line in out[:-1] if not line.endswith(" ValueError")]
    assert not bad, out


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offset=st.integers(-2 ** 64, 2 ** 64),
       shape=st.lists(st.integers(0, 2 ** 40), min_size=0, max_size=3),
       strides=st.lists(st.one_of(st.integers(-64, 64),
                                  st.integers(-2 ** 64, 2 ** 64)),
                        min_size=3, max_size=3))
def test_accepted_handles_stay_inside_the_data(offset, shape, strides, forged_target):
    """Whatever a handle says, what rebuild accepts lies inside the data."""
    a, args = forged_target
    name, token, boot, _, _, _, _, writeable, where = args
    shape = tuple(shape)
    strides = tuple(strides[:len(shape)])
    try:
        v = reduction.rebuild_ndarray(name, token, boot, offset, shape, strides,
                                      None, writeable, where)
    except ValueError:
        return
    start = a.segment.meta.offset
    lo = hi = v.__array_interface__["data"][0] - a.segment.addr
    if v.size:
        for n, s in zip(v.shape, v.strides, strict=True):
            lo += min(0, s * (n - 1))
            hi += max(0, s * (n - 1))
        hi += v.itemsize
        assert start <= lo and hi <= start + a.nbytes
        # Read the corners, where the lowest and highest addresses are: no
        # fault.  (Not every element: a zero stride makes a view of 2**40
        # elements inside 8 bytes, which is accepted and takes hours to sum.)
        for corner in itertools.product(*[(0, n - 1) for n in v.shape]):
            v[corner].item()


@pytest.fixture(scope="module")
def forged_target():
    name = f"sat-{os.getpid()}-{SESSION}-forged"
    a = sa.from_array(name, np.arange(64.0))
    try:
        yield a, reduction.reduce_ndarray(a)[1]
    finally:
        sa.delete(name)


# ============================================================ handles in flight

def _put_and_drop(q, ready, done):
    a = sa.share(np.arange(1000.0))
    name = a.segment.name
    q.put(a[10:20])
    del a
    q.close()
    q.join_thread()          # pickled and sent: nothing refers to it any more
    gc.collect()
    assert not sa.exists(name), "the sender still holds it"
    ready.set()
    done.wait(60)


def _send_and_drop(conn, ready, done):
    a = sa.share(np.arange(1000.0))
    name = a.segment.name
    conn.send(a[10:20])
    del a
    gc.collect()
    assert not sa.exists(name), "the sender still holds it"
    ready.set()
    done.wait(60)


def _return_shared(n):
    return sa.share(np.arange(1000.0))[10:20]


def _set_and_drop(ns, ready, done):
    a = sa.share(np.arange(1000.0))
    name = a.segment.name
    ns.x = a[10:20]
    del a
    gc.collect()
    assert not sa.exists(name), "the sender still holds it"
    ready.set()
    done.wait(60)


@pytest.mark.parametrize("transport", ["queue", "pipe", "pool", "manager"])
def test_shared_array_survives_its_sender_dropping_it(start_method, transport):
    """share() in one process, send, drop at once (the name is unlinked):
    the receiver still gets the data, through every transport and start
    method that pickles with multiprocessing's pickler."""
    ctx = mp.get_context(start_method)
    want = list(range(10, 20))
    if transport == "pool":
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_return_shared, (1,)).get(120)
            assert got.tolist() == [float(x) for x in want]
            got2 = pool.map(_return_shared, range(3))
            assert [g.tolist() for g in got2] == [[float(x) for x in want]] * 3
        return
    ready, done = ctx.Event(), ctx.Event()
    manager = None
    if transport == "queue":
        chan = ctx.Queue()
        p = ctx.Process(target=_put_and_drop, args=(chan, ready, done))
    elif transport == "pipe":
        chan, theirs = ctx.Pipe()
        p = ctx.Process(target=_send_and_drop, args=(theirs, ready, done))
    else:
        manager = ctx.Manager()
        chan = manager.Namespace()
        p = ctx.Process(target=_set_and_drop, args=(chan, ready, done))
    p.start()
    try:
        assert ready.wait(120), "the sender did not get ready"
        if transport == "queue":
            got = chan.get(timeout=120)
        elif transport == "pipe":
            assert chan.poll(120)
            got = chan.recv()
        else:
            got = chan.x
        assert got.tolist() == [float(x) for x in want]
        got[0] = -1          # the same memory, still writable
        assert got[0] == -1
        del got
    finally:
        done.set()
        p.join(60)
        if manager is not None:
            manager.shutdown()
    assert p.exitcode == 0


def test_handle_of_a_dropped_temporary_says_what_to_do():
    """Outside multiprocessing (a pickle kept in a file), a temporary that its
    owner dropped is gone: the error says so and what to do instead."""
    a = sa.share(np.arange(10.0))
    name = a.segment.name
    data = pickle.dumps(a)
    del a
    gc.collect()
    with pytest.raises(FileNotFoundError) as e:
        pickle.loads(data)
    msg = str(e.value)
    assert name in msg and "by_value" in msg and "create()" in msg and "alive" in msg
    with pytest.raises(FileNotFoundError) as e:
        ForkingPickler.loads(data)


def test_deleted_named_array_handle_says_what_happened(shm_name):
    a = sa.create(shm_name, 4)
    data = pickle.dumps(a)
    sa.delete(shm_name)
    del a
    gc.collect()
    with pytest.raises(FileNotFoundError, match="deleted") as e:
        pickle.loads(data)
    assert "by_value" in str(e.value)


def test_forking_pickler_round_trip_in_one_process():
    a = sa.share(np.arange(10.0))
    data = ForkingPickler.dumps(a[2:5])
    b = ForkingPickler.loads(data)
    assert b.segment is a.segment and b.tolist() == [2.0, 3.0, 4.0]
    named = np.arange(3)
    assert ForkingPickler.loads(ForkingPickler.dumps(named)).tolist() == [0, 1, 2]
