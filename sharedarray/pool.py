"""A ProcessPoolExecutor that moves numpy arrays through shared memory.

Data flow::

    parent                                     worker
    ------                                     ------
    submit(fn, *args) with nothing to share
      (fn by reference or by name, args of
      scalars; or one chunk of map() of such
      tasks): the standard path as it is         run fn (a chunk: _map_chunk)
    submit(fn, *args), any other task -> _Call; the executor's own future
      feeder thread pickles the _Call:
        sharedarray.ndarray -> handle           attach (same memory, writable)
        plain array >= threshold
          -> a copy C in a refillable segment   attach C read-only, holding a
             (_Leases: one per array object      shared flock on it while mapped
             and content; _Spares: refills)
        function: by reference where plain
          pickle works, else cloudpickle        run fn; drop the inputs
                                                every task's outcome: the
                                                standard record, pickled by a
                                                reducer registered in the
                                                worker (_reduce_result_item):
                                                one holding no array as it is,
                                                else the value through
                                                _ResultPickler:
                                                  plain array >= threshold, or an
                                                  array this worker owns
                                                  -> written into a released
                                                     result S of its size, taken
                                                     by renaming it R (_into_spare)
                                                     or a new segment R; R owned by
                                                     the parent (tracker-registered)
      result thread unpickles; the parent owns R
    the future settles (a result whose shared arrays cannot be attached
    fails that task only: its record carries the error, _load_result_item)
    the parent drops R: once it no longer maps it, R is renamed to a spare
    name S (_ResultSpares), kept a few seconds for the next result

Rules, each enforced in one place:

* Snapshot (``_Leases.lease``): a task sees each argument as of some moment
  at or after its ``submit()``.  Copies are made when tasks are sent, not
  when they are submitted.  A copy serves, unchecked, the tasks of the same
  ``map()`` call and every task submitted before the copy began reading the
  array (one clock, ``_ticks``, orders submits and copies); any other task
  uses it only when its bytes compare equal to the array's bytes now (a
  pending copy, or a released one kept for the same array object,
  ``_Spares.reuse``), and an equal compare then counts as a new copy.
* Reuse (``_Spares.refill``, ``_write_claimed``): a segment is rewritten
  only while the process rewriting it holds an exclusive flock on it, which
  the kernel grants only when no process maps it: every mapping of a
  refillable segment (input copies, results) holds a shared flock, taken
  before its header is read, except the parent's own mappings, which are
  never rewritten while they exist: the parent never maps input copies
  where user code can reach them, and a result becomes a spare only after
  the parent's mapping of it is gone (``Segment.after_unmap``).  The new
  header (new token) is written before any data byte, so every older
  handle is stale.  A segment some process still maps is unlinked instead.
* Claims (``_into_spare``): a worker takes a released result only by
  renaming its spare name to the new result's name (``renameat2`` without
  replace): of all processes renaming one name, exactly one succeeds, and
  after that nobody finds the object under a spare name.  Only the parent
  makes spare names, from results it dropped, and only names of a live
  executor (``_ResultSpares.retire``).
* Results (``_ResultPickler``): arrays a worker owns (its ``share()``) never
  travel as a handle to a name that dies with the worker's array: they are
  copied into a segment the parent owns.  Other shared arrays travel as
  handles.
* Cleanup: copies are unlinked when no task needs them (or kept as spares for
  a few seconds), results when the parent drops them (or kept as spares for
  a few seconds); everything at ``shutdown()``; the resource tracker (shared
  by parent and workers) when the parent is killed, and workers end
  themselves then (a native watchdog thread, ``_ext.watch_parent``).  The
  tracker knows every name from before it exists until after it is gone:
  a new name is registered before its create or rename, an old one
  unregistered after; spare names only by the parent (``_ResultSpares``).
  Tasks with nothing to share hold no copy and are not counted: the final
  sweep of results (``_Pool.close()``) waits until the manager thread,
  which receives every result, has ended.

Lock order: ``_Call.lock`` -> ``_Leases.lock`` -> ``_Spares.lock``; the
function cache's lock and ``_ResultSpares.lock`` are taken alone (the latter
also by finalizers, which may run inside its own sections: a thread that
holds it never waits for it again).  No lock is held while a worker is
started (the standard executor forks from ``submit``), and none across a
long copy except ``_Call.lock``, which only the feeder thread and the task's
done callback take.
"""

from __future__ import annotations

import _thread
import atexit
import concurrent.futures
import concurrent.futures.process
import errno
import functools
import gc
import io
import itertools
import os
import pickle
import random
import sys
import threading
import time
import types
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from multiprocessing.reduction import ForkingPickler
from typing import Any, NamedTuple

import cloudpickle
import numpy as np

from . import _ext, _names
from ._names import REFILLABLE_SUFFIX, SHM_DIR, TRACKER_TYPE, discard, fs_path, shm_path
from .core import (
    Segment,
    keep_space_for_reuse,
    lock_exclusive,
    ndarray,
    refill_segment,
    segment_contents,
    segment_of,
    temporary_header,
    view,
    wrap,
)
from .reduction import (
    _cache,
    attach_owned,
    handle_of,
    handle_written,
    own,
    owned_here,
    owners_pending,
    rebuild_ndarray,
    reduce_ndarray,
    share_segment,
)

__all__ = ["ProcessPoolExecutor"]

_SPARES = 4           # released input copies (and results) kept for reuse, at most ...
_SPARE_SHARE = 4      # ... 1/_SPARE_SHARE of the shm file system, ...
_SPARE_TTL = 5.0      # ... for this many seconds unused
_FUNCTIONS = 256      # cloudpickled functions/classes cached, per side
_EXIT_WAIT = 10.0     # seconds the exit gives clean-ups still under way
# Values that hold no array, exact types; commonest first (_ext.only_types
# tries them in order): Python's own, then numpy's scalars (what iterating
# an array or reducing one gives).  Not np.void: a record can hold objects.
_ATOMIC_TYPES = (int, float, str, type(None), bool, bytes, complex) + tuple(dict.fromkeys(
    np.dtype(code).type for code in "dlq?fbhiBHILQegFDGmMSU"))
_ATOMIC = frozenset(_ATOMIC_TYPES)
# Containers (exact tuples, lists, dicts) an argument or a result may nest
# and still count as holding no array: depths for _ext.only_types.
_ARGS_DEPTH = 3       # the arguments' tuple, then two levels inside an argument
_RESULT_DEPTH = 3


# ---------------------------------------------------------------- warnings

_warned_pid = 0


def _warn_fallback(arr: np.ndarray, exc: OSError) -> None:
    """Say once per process that shared memory was too small."""
    global _warned_pid
    if _warned_pid == os.getpid():
        return
    _warned_pid = os.getpid()
    warnings.warn(f"sharedarray: shared memory is too small for a "
                  f"{arr.nbytes:,}-byte array ({exc.strerror}); sending it and "
                  f"any later such array by pickling instead",
                  RuntimeWarning, stacklevel=3)


def _is_big(obj: Any, threshold: int | None) -> bool:
    # Empty arrays always go by value: reduce_ndarray pickles them as plain
    # arrays, which would come back here (endless recursion at threshold 0).
    return (threshold is not None and obj.nbytes >= threshold and obj.size > 0
            and not obj.dtype.hasobject)


# ---------------------------------------------------------------- functions

_BY_REFERENCE, _FROM_MAIN, _BY_VALUE = 0, 1, 2


def _how_to_send(obj: Any) -> int:
    """How a function or class travels: by reference when plain pickle finds
    it by name (as the standard executor sends it), from ``__main__`` when it
    lives there (by reference, with a by-value copy for workers whose
    ``__main__`` lacks it), by value otherwise (lambdas, closures)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return _BY_VALUE
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not obj:
        return _BY_VALUE
    return _FROM_MAIN if module == "__main__" else _BY_REFERENCE


class _FunctionCache:
    """Pickled blobs of functions and classes sent by value, per object,
    least recently used first out.  The entry holds the object, so its id is
    not reused while cached."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.blobs: OrderedDict[int, tuple[Any, bytes]] = OrderedDict()

    def get(self, obj: Any) -> bytes | None:
        with self.lock:
            hit = self.blobs.get(id(obj))
            if hit is None or hit[0] is not obj:
                return None
            self.blobs.move_to_end(id(obj))
            return hit[1]

    def put(self, obj: Any, blob: bytes) -> None:
        with self.lock:
            self.blobs[id(obj)] = (obj, blob)
            while len(self.blobs) > self.size:
                self.blobs.popitem(last=False)


_loaded: OrderedDict[bytes, Any] = OrderedDict()   # worker: blob -> object


def _load_by_value(blob: bytes, cacheable: bool) -> Any:
    """Worker side of a function or class sent by value (cached per blob, so
    a class keeps its identity across tasks)."""
    if not cacheable:
        return pickle.loads(blob)
    obj = _loaded.get(blob)
    if obj is None:
        obj = _loaded[blob] = pickle.loads(blob)
        while len(_loaded) > _FUNCTIONS:
            _loaded.popitem(last=False)
    return obj


def _from_main(qualname: str, blob: bytes) -> Any:
    """Worker side of a ``__main__`` function or class: the worker's own
    ``__main__`` one if it has it (so globals that an initializer set are
    seen, as with the standard executor), else the copy sent by value."""
    found: Any = sys.modules.get("__main__")
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if callable(found):
        return found
    return _load_by_value(blob, True)


# ---------------------------------------------------------------- workers

class _WorkerConfig(NamedTuple):
    """Per-executor constants, sent once to each worker by its initializer."""

    threshold: int | None
    owner: int             # the parent's pid: results are its temporaries
    prefix: str            # result names: prefix + random


_config = _WorkerConfig(None, 0, "")
_in_worker = False      # this process is one of our workers (not its child)


def _worker_init(config: _WorkerConfig, parent_start: int,
                 initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """Our worker set-up, chained in front of the user's initializer."""
    global _config, _in_worker
    # A native thread: it ends this worker when the parent dies, even while
    # the worker's main thread holds the GIL in a long C call.
    _ext.watch_parent(config.owner, parent_start)
    _config = config
    _in_worker = True
    if _ResultItem is not None:
        ForkingPickler.register(_ResultItem, _reduce_result_item)
    if initializer is not None:
        initializer(*initargs)


class _Task:
    """A task as the worker runs it."""

    __slots__ = ("fn", "args", "kwargs")

    def __call__(self) -> Any:
        fn, args, kwargs = self.fn, self.args, self.kwargs
        # The inputs die with this call: a mapping of a copy, and with it the
        # shared lock that keeps the parent from refilling it, ends as soon
        # as the task no longer needs it.
        self.fn = self.args = self.kwargs = None
        return fn(*args, **kwargs)


def _map_chunk(fn: Callable[..., Any], items: tuple) -> list:
    """Worker side of one chunk of ``map()`` over one iterable."""
    return list(map(fn, items))


def _starmap_chunk(fn: Callable[..., Any], chunk: tuple) -> list:
    """Worker side of one chunk of ``map()`` over several iterables: a tuple
    of argument tuples."""
    return list(itertools.starmap(fn, chunk))


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict) -> _Task:
    task = _Task()
    task.fn, task.args, task.kwargs = fn, args, kwargs
    return task


def _unsent() -> None:
    """Worker side of a task whose arguments could not be pickled."""


def _run_pickled(payload: bytes) -> _Task:
    fn, args, kwargs = pickle.loads(payload)
    return _run(fn, args, kwargs)


_forking_table: Any = None


def _dispatch_table() -> Any:
    """copyreg's table plus multiprocessing's reducers, built once per process.

    Shared arrays keep copyreg's plain handle: the executor keeps a task's
    arguments alive until the task is done and owns what workers return, so
    it needs none of the descriptor passing that multiprocessing's queues
    use to keep temporaries alive in flight."""
    global _forking_table
    if _forking_table is None:
        table = ForkingPickler(io.BytesIO()).dispatch_table.copy()
        table[ndarray] = reduce_ndarray
        _forking_table = table
    return _forking_table


class _ResultPickler(pickle.Pickler):
    """Pickles a worker's result: large plain arrays, and shared arrays this
    worker owns, move into segments that the parent will own."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _dispatch_table()
        self.created: list[str] = []  # names of the results written
        self.full = False             # no room in shared memory: data by value

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is ndarray:
            seg = segment_of(obj)
            if seg is None or not owned_here(seg):
                # A handle: the memory outlives us.
                rv = reduce_ndarray(obj)
                return (_rebuild_in_parent, rv[1]) if rv[0] is rebuild_ndarray else rv
            # Ours: the name goes when our last array on it goes, maybe
            # before the parent attaches.  Send a copy the parent owns.
            if _is_big(obj, _config.threshold) and not self.full:
                return self.move(obj)
            return np.asarray, (obj.view(np.ndarray),)
        if t is np.ndarray and _is_big(obj, _config.threshold) and not self.full:
            return self.move(obj)
        return NotImplemented

    def move(self, obj: np.ndarray) -> Any:
        name = _names.result_name(_config.prefix)
        handle = _into_spare(obj, name, self.created)
        if handle is not None:
            return _adopt_in_parent, handle
        name = _names.result_name(_config.prefix)
        try:
            # Full: the parent's released results were unlinked and the
            # creation tried again (_free_spares) before this raises.
            seg = share_segment(obj, owner=_config.owner, name=name)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _warn_fallback(obj, exc)
            self.full = True
            return np.asarray, (obj.view(np.ndarray),)
        self.created.append(name)
        return _adopt_in_parent, handle_of(wrap(seg), remember=False)


def _contiguous_strides(shape: tuple, itemsize: int, fortran: bool) -> tuple:
    """The strides numpy gives a contiguous array (no dimension is 0)."""
    strides = [0] * len(shape)
    step = itemsize
    for i in (range(len(shape)) if fortran else reversed(range(len(shape)))):
        strides[i] = step
        step *= shape[i]
    return tuple(strides)


def _write_all(fd: int, data: Any, offset: int) -> None:
    """pwrite all of ``data`` at ``offset`` (a call writes up to ~2 GiB)."""
    buf = memoryview(data)
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


def _write_claimed(name: str, size: int, header: bytes, data: Any) -> bool:
    """Worker: rewrite the released result this worker just renamed to
    ``name`` with ``header`` and ``data``, through a descriptor (no mapping
    here), only under an exclusive flock, which the kernel refuses while
    any process maps it; False, nothing written, if refused (or if its size
    is not ``size``).  The header, with its new token, goes first: from
    then on, every older handle to the object is stale."""
    fd = lock_exclusive(name)
    if fd is None:
        return False
    try:
        if os.fstat(fd).st_size != size:
            return False
        _write_all(fd, header, 0)
        _write_all(fd, data, len(header))
    finally:
        os.close(fd)
    return True


_no_renameat2 = False      # no renameat2(RENAME_NOREPLACE) here: no spares


def _no_renames() -> None:
    global _no_renameat2
    _no_renameat2 = True


def _into_spare(obj: np.ndarray, name: str, created: list[str]) -> tuple | None:
    """Worker: write ``obj`` into a result of its size that the parent
    released (``_ResultSpares``), taken by renaming it to ``name``; its
    handle, or None when there is none to take.

    The rename (no replace) is the claim: of all the processes renaming one
    spare, exactly one succeeds, and after it nobody finds the object by a
    spare name.  ``name`` is registered with the resource tracker before it
    can exist; the spare's name stays registered by the parent, which
    forgets it when it sees it gone.  Writing costs a copy into pages the
    object has, where a new segment also pays for the kernel allocating
    every page."""
    if _no_renameat2:
        return None
    src, order, data = segment_contents(obj)
    if data is None:
        return None
    try:
        header, token = temporary_header(src.dtype, src.shape, order == "F",
                                         _config.owner, name)
    except ValueError:
        return None
    size = len(header) + src.nbytes
    tracker = _names.tracker()
    path, target = shm_path(name), fs_path(name)
    registered = False
    try:
        for slot in range(_SPARES):
            spare = _names.spare_name(_config.prefix, size, slot)
            if spare is None:
                return None
            if not os.path.exists(fs_path(spare)):
                continue
            if not registered:
                tracker.register(path, TRACKER_TYPE)
                registered = True
            try:
                _ext.rename_noreplace(fs_path(spare), target)
            except FileNotFoundError:
                continue              # taken by another worker, or expired
            except FileExistsError:
                registered = False    # somebody's name (and registration)
                return None
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                    raise
                _no_renames()
                return None
            registered = False        # it exists now: a temporary of ours
            created.append(name)
            if _write_claimed(name, size, header, data):
                return handle_written(name, token, len(header), src.shape,
                                      _contiguous_strides(src.shape, src.dtype.itemsize,
                                                          order == "F"),
                                      src.dtype)
            # Some process still maps it: it keeps its memory, nobody else
            # gets it.
            created.remove(name)
            discard(name)
            return None
        return None
    finally:
        if registered:
            tracker.unregister(path, TRACKER_TYPE)


def _drop_result_spares() -> bool:
    """Worker, shared memory full: unlink the results the parent keeps for
    reuse (it forgets them when it next looks), to make room."""
    start = _names.spare_prefix(_config.prefix)
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return False
    dropped = False
    for n in names:
        if n.startswith(start) and n.endswith(REFILLABLE_SUFFIX):
            try:
                _ext.unlink(n, shm_path(n), _ext.KIND_SHM)
                dropped = True
            except OSError:
                pass
    return dropped


# The standard executor's record of a task's outcome, which a worker sends
# back.  A private name: only registered, in our workers, with the pickler
# of their result queue (multiprocessing's), never changed.  Without it,
# results travel by value (correct, not shared).
_ResultItem: Any = getattr(concurrent.futures.process, "_ResultItem", None)


def _reduce_result_item(item: Any) -> Any:
    """Worker: pickle the record of a task's outcome.  One holding no array
    (commonest; every error too) goes as the standard executor sends it;
    any other value through ``_ResultPickler``, whose large arrays and
    arrays this worker owns move into segments the parent will own.  Only
    in the worker itself: a process it forks (a task's own executor, say)
    inherits the registration, but its results are not ours to place."""
    state = item.__dict__
    value = state.get("result")
    if (state.get("exception") is not None or not _in_worker
            or type(value) in _ATOMIC
            or _ext.only_types(value, _ATOMIC_TYPES, _RESULT_DEPTH)):
        return item.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    buf = io.BytesIO()
    p = _ResultPickler(buf)
    try:
        p.dump(value)
    except BaseException:
        for name in p.created:
            discard(name)
        raise
    return _load_result_item, (dict(state, result=None), buf.getvalue())


class _HandleLost(Exception):
    """Parent: a shared array in a result could not be attached."""


def _rebuild_in_parent(*handle: Any) -> ndarray:
    try:
        return rebuild_ndarray(*handle)
    except Exception as exc:
        raise _HandleLost(exc) from exc


def _adopt_in_parent(*handle: Any) -> ndarray:
    # A result of a live executor goes back to it when dropped (_ResultSpares).
    spares = _result_spares.get(_names.result_prefix(handle[0]))
    try:
        return attach_owned(*handle, retire=None if spares is None else spares.retire)
    except Exception as exc:
        raise _HandleLost(exc) from exc


def _load_result_item(state: dict, payload: bytes) -> Any:
    """Parent (result thread): the record of an outcome whose value holds
    arrays.  A shared array in it that cannot be attached fails this task
    only, with the real exception (the record carries it as the task's);
    anything else that cannot be unpickled breaks the pool, as in the
    standard executor."""
    item = _ResultItem.__new__(_ResultItem)
    item.__dict__.update(state)
    try:
        item.result = pickle.loads(payload)
    except _HandleLost as lost:
        item.exception = lost.args[0]
    return item


# ---------------------------------------------------------------- parent: copies

class _Spare(NamedTuple):
    """A released input copy, kept to be refilled."""

    seg: Segment
    release: weakref.finalize    # unlinks it
    expires: float
    source: Any = None           # weakref to the array it last copied
    array: np.ndarray | None = None   # the copy, as our view of it


class _Janitor:
    """Calls ``fn()`` in a thread of its own after ``delay`` seconds, unless
    stopped first.

    Started without waiting for the thread to run, unlike
    ``threading.Timer``: its callers hold a lock, and a new thread may
    first run a finalizer (a garbage collection in its start-up) that
    waits for that same lock, while ``Thread.start()`` waits for the
    thread.  ``RuntimeError`` when no thread can start (interpreter exit)."""

    def __init__(self, delay: float, fn: Callable[[], None]) -> None:
        self.stopping = threading.Event()
        self.ident = 0
        self.done = _thread.allocate_lock()
        self.done.acquire()                  # released when the thread ends
        try:
            _thread.start_new_thread(self._run, (max(delay, 0.0), fn))
        except BaseException:
            self.done.release()
            raise

    def _run(self, delay: float, fn: Callable[[], None]) -> None:
        self.ident = _thread.get_ident()
        try:
            if not self.stopping.wait(delay):
                fn()
        finally:
            self.done.release()

    def stop(self) -> None:
        """Cancel it and, unless called from its own thread (``fn``), wait
        until the thread has ended."""
        self.stopping.set()
        self.join()

    def join(self, timeout: float = -1) -> None:
        """Wait until the thread has ended (not from the thread itself), or
        at most ``timeout`` seconds."""
        if self.ident != _thread.get_ident() and self.done.acquire(timeout=timeout):
            self.done.release()

    def running(self) -> bool:
        """Whether the thread has not ended yet."""
        return self.done.locked()


class _Spares:
    """Released input copies kept a few seconds to take the next array of
    their size: refilling one costs a memcpy, a new segment several.

    A timer thread expires them; it exists only while spares wait, and is
    stopped around every fork of this process (see ``_stop_janitors``), so
    that no thread of ours is copied into a child."""

    def __init__(self, count: int, budget: int, ttl: float) -> None:
        self.count = count
        self.budget = budget
        self.ttl = ttl
        self.lock = threading.Lock()
        self.spares: list[_Spare] = []
        self.janitor: _Janitor | None = None
        _all_spares.add(self)

    def put(self, seg: Segment, release: weakref.finalize,
            source: np.ndarray | None = None, array: np.ndarray | None = None) -> None:
        """Keep a copy no task needs (within the limits) or unlink it; with
        the array it copies (``source``, weakly held) and our view of it."""
        if seg.size > self.budget:
            release()
            return
        ref = weakref.ref(source) if source is not None else None
        dead = []
        with self.lock:
            self.spares.append(_Spare(seg, release, time.monotonic() + self.ttl,
                                      ref, array))
            used = sum(s.seg.size for s in self.spares)
            while len(self.spares) > self.count or used > self.budget:
                old = self.spares.pop(0)
                used -= old.seg.size
                dead.append(old.release)
            self._arm(self.ttl)
        for fin in dead:
            fin()

    def reuse(self, arr: np.ndarray) -> _Spare | None:
        """The spare that last copied ``arr`` (this very object), if its bytes
        still equal ``arr``'s: used as it is, no byte rewritten (comparing
        costs about what a refill does, and nothing when they differ early).
        A spare that copied ``arr`` but differs is refilled for it."""
        with self.lock:
            for i, spare in enumerate(self.spares):
                if spare.source is not None and spare.source() is arr:
                    del self.spares[i]
                    break
            else:
                return None
        if _same_contents(arr, spare.array):
            return spare
        return self._refill(spare, arr)

    def refill(self, arr: np.ndarray) -> _Spare | None:
        """A spare of ``arr``'s size, now holding a copy of ``arr``; or None.

        A spare that some process still maps (its lock is refused) is
        unlinked: that process keeps its memory, and nobody else gets it."""
        while True:
            with self.lock:
                for i, spare in enumerate(self.spares):
                    if spare.seg.size - spare.seg.meta.offset == arr.nbytes:
                        del self.spares[i]
                        break
                else:
                    return None
            done = self._refill(spare, arr)
            if done is not None:
                return done

    def _refill(self, spare: _Spare, arr: np.ndarray) -> _Spare | None:
        """Rewrite ``spare`` (taken out of the list) with ``arr``, under the
        exclusive lock; None (and the spare unlinked) if it cannot be."""
        if spare.seg.size - spare.seg.meta.offset != arr.nbytes:
            spare.release()
            return None
        fd = lock_exclusive(spare.seg.name)
        if fd is None:
            spare.release()
            return None
        try:
            ok = refill_segment(spare.seg, arr)
        except BaseException:
            spare.release()
            raise
        finally:
            os.close(fd)
        if ok:
            return spare
        spare.release()              # same size, another header length: rare
        return None

    def clear(self) -> bool:
        """Unlink every spare and stop the timer thread (gone when
        ``shutdown()`` returns); whether there was a spare."""
        with self.lock:
            janitor, self.janitor = self.janitor, None
        if janitor is not None:
            janitor.stop()
        return self.empty(None)

    def empty(self, timeout: float | None = 1.0) -> bool:
        """Unlink every spare; whether there was one.  When shared memory is
        full it is called from inside any creation, perhaps while this
        thread holds the lock (a finalizer run by the garbage collector):
        then, after ``timeout`` seconds, it gives up rather than wait for
        itself."""
        if not self.lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            spares, self.spares = self.spares, []
        finally:
            self.lock.release()
        for spare in spares:
            spare.release()
        return bool(spares)

    def names(self) -> list[str]:
        with self.lock:
            return [s.seg.name for s in self.spares]

    def _expire(self) -> None:
        with self.lock:
            self.janitor = None
            now = time.monotonic()
            dead = [s.release for s in self.spares if s.expires <= now]
            self.spares = [s for s in self.spares if s.expires > now]
            if self.spares:
                self._arm(min(s.expires for s in self.spares) - now)
        for fin in dead:
            fin()

    def _arm(self, delay: float) -> None:
        # A thread only while spares wait.
        if self.janitor is None:
            try:
                self.janitor = _Janitor(delay, self._expire)
            except RuntimeError:      # interpreter exit: unlinked by close()
                pass

    def pause(self) -> None:
        """Stop the timer thread (before a fork)."""
        with self.lock:
            janitor, self.janitor = self.janitor, None
        if janitor is not None:
            janitor.stop()

    def resume(self) -> None:
        """Restart the timer thread if spares wait (after a fork, in the parent)."""
        with self.lock:
            if self.spares and self.janitor is None:
                self._arm(min(s.expires for s in self.spares) - time.monotonic())


class _Kept(NamedTuple):
    """A result the parent released, kept under a spare name."""

    name: str
    size: int
    expires: float


class _ResultSpares:
    """Results the parent dropped, kept a few seconds under spare names
    (``_names.spare_name``: the size, a slot) for a worker to write its next
    result of that size into (``_into_spare``): a copy into pages the
    object has, where a new segment also costs the kernel's allocation of
    every page.

    A result is kept only once this process no longer maps it
    (``own(release=...)``), only while the executor is open, within a count,
    a byte budget and a lifetime; a timer thread expires them (stopped
    around forks, as ``_Spares``' is).  Workers take spares without telling
    this process: it sees a spare name gone and forgets it.  Only this
    process makes spare names and only it unregisters them from the
    resource tracker (registered before the rename that makes one,
    unregistered once it sees the name gone, whoever removed it), so no
    registration of a name ever crosses an older one of the same name.

    The lock is also taken by finalizers (``retire``), which may run inside
    any of this object's own sections (a garbage collection there): a
    section entered again by the thread that holds it does nothing (a
    result is then unlinked, a close done when the outer section ends).
    """

    def __init__(self, prefix: str, count: int, budget: int, ttl: float) -> None:
        self.prefix = prefix
        self.count = count
        self.budget = budget
        self.ttl = ttl
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.holder = 0               # the thread in a section
        self.kept: list[_Kept] = []
        self.closed = False
        self.janitor: _Janitor | None = None
        _all_spares.add(self)

    # -- sections
    def _enter(self) -> bool:
        me = threading.get_ident()
        if self.holder == me:
            return False
        self.lock.acquire()
        self.holder = me
        return True

    def _leave(self) -> None:
        try:
            if self.closed:           # perhaps closed from inside this section
                self._unlink_all()
                if self.janitor is not None:
                    self.janitor.stopping.set()
                    self.janitor = None
        finally:
            self.holder = 0
            self.lock.release()

    # -- the tracker and the names (in a section)
    def _forget(self, name: str) -> None:
        try:
            _names.tracker().unregister(shm_path(name), TRACKER_TYPE)
        except Exception:
            pass

    def _unlink(self, name: str) -> None:
        try:
            _ext.unlink(name, shm_path(name), _ext.KIND_SHM)
        except OSError:
            pass                      # taken by a worker (or by hand)
        self._forget(name)

    def _unlink_all(self) -> None:
        kept, self.kept = self.kept, []
        for k in kept:
            self._unlink(k.name)

    def _prune(self) -> None:
        """Forget the spares workers took."""
        live = []
        for k in self.kept:
            if os.path.exists(fs_path(k.name)):
                live.append(k)
            else:
                self._forget(k.name)
        self.kept = live

    # -- the parent dropped a result
    def retire(self, size: int, name: str, unregister: Any = None) -> None:
        """Keep the result ``name`` of ``size`` bytes, which this process
        no longer maps, as a spare; or unlink it."""
        kept = False
        if (os.getpid() == self.pid and size <= self.budget and not _no_renameat2
                and self._enter()):
            try:
                kept = not self.closed and self._keep(name, size)
            finally:
                self._leave()
        if not kept:
            discard(name, unregister=unregister)

    def _keep(self, name: str, size: int) -> bool:
        self._prune()
        used = sum(k.size for k in self.kept)
        while self.kept and (len(self.kept) >= self.count or used + size > self.budget):
            old = self.kept.pop(0)
            used -= old.size
            self._unlink(old.name)
        if not self._arm(self.ttl):
            return False
        taken = {k.name for k in self.kept}
        tracker = _names.tracker()
        for slot in range(self.count):
            spare = _names.spare_name(self.prefix, size, slot)
            if spare is None:
                return False
            if spare in taken:
                continue
            tracker.register(shm_path(spare), TRACKER_TYPE)
            try:
                _ext.rename_noreplace(fs_path(name), fs_path(spare))
            except FileExistsError:
                # Not one of ours (we know all ours): leave it, and its
                # registration, alone.
                continue
            except OSError as exc:
                self._forget(spare)
                if exc.errno in (errno.ENOSYS, errno.EINVAL):
                    _no_renames()
                return False
            self._forget(name)
            self.kept.append(_Kept(spare, size, time.monotonic() + self.ttl))
            return True
        return False

    # -- expiry, room, shutdown
    def _expire(self) -> None:
        if not self._enter():
            return
        try:
            self.janitor = None
            self._prune()
            now = time.monotonic()
            for k in [k for k in self.kept if k.expires <= now]:
                self.kept.remove(k)
                self._unlink(k.name)
            if self.kept:
                self._arm(min(k.expires for k in self.kept) - now)
        finally:
            self._leave()

    def _arm(self, delay: float) -> bool:
        # A thread only while spares wait; none can start at interpreter exit.
        if self.janitor is None:
            try:
                self.janitor = _Janitor(delay, self._expire)
            except RuntimeError:
                return False
        return True

    def empty(self) -> bool:
        """Unlink every spare (shared memory is full); whether there was one."""
        if not self._enter():
            return False
        try:
            had = bool(self.kept)
            self._unlink_all()
            return had
        finally:
            self._leave()

    def close(self) -> None:
        """Unlink every spare and keep no more (the executor is shut down)."""
        self.closed = True
        if not self._enter():
            return                    # the interrupted section finishes it
        try:
            janitor, self.janitor = self.janitor, None
            self._unlink_all()
        finally:
            self._leave()
        if janitor is not None:
            janitor.stop()            # gone when shutdown() returns

    def names(self) -> list[str]:
        """The spares kept now."""
        if not self._enter():
            return []
        try:
            self._prune()
            return [k.name for k in self.kept]
        finally:
            self._leave()

    def pause(self) -> None:
        """Stop the timer thread (before a fork)."""
        if not self._enter():
            return
        try:
            janitor, self.janitor = self.janitor, None
        finally:
            self._leave()
        if janitor is not None:
            janitor.stop()

    def resume(self) -> None:
        """Restart the timer thread if spares wait (after a fork, in the parent)."""
        if not self._enter():
            return
        try:
            if self.kept and self.janitor is None and not self.closed:
                self._arm(min(k.expires for k in self.kept) - time.monotonic())
        finally:
            self._leave()


# The executors' result spares, by result name prefix.
_result_spares: weakref.WeakValueDictionary[str, _ResultSpares] = weakref.WeakValueDictionary()

_all_spares: weakref.WeakSet[_Spares | _ResultSpares] = weakref.WeakSet()


def _stop_janitors() -> None:
    for spares in list(_all_spares):
        spares.pause()


def _restart_janitors() -> None:
    for spares in list(_all_spares):
        spares.resume()


def _forget_janitors() -> None:
    # The child: the parent's spares are not its own, nor their threads, nor
    # the clean-ups under way there (never to end here: not to wait for);
    # and a worker's child (a task's own executor, say) is no worker of ours.
    global _in_worker
    _all_spares.clear()
    _closing.clear()
    _managed.clear()            # the parent's; a thread ident may recur here
    _in_worker = False


def _free_spares() -> bool:
    """Shared memory is full (any creation in this process, the user's
    too): unlink every segment kept only for reuse - this process's spares
    and, in a worker, its parent's released results; whether any was."""
    freed = False
    for spares in list(_all_spares):
        freed |= spares.empty()
    if _config.prefix:
        freed |= _drop_result_spares()
    return freed


keep_space_for_reuse(_free_spares)


# Registered after reduction's hooks, so it runs before them: a janitor may
# be unlinking a spare (a resource tracker call) and must finish first.
os.register_at_fork(before=_stop_janitors, after_in_parent=_restart_janitors,
                    after_in_child=_forget_janitors)


# A forked child (a worker) inherits the parent's garbage, among it the
# executors dropped in reference cycles and not yet collected there.  Were
# the child to collect them, their callbacks would run in it: the standard
# executor's takes that executor's shutdown lock, which the child may have
# inherited held (its manager thread was joining the workers at the fork),
# and waits forever.  So while an executor of ours lives, a fork keeps the
# collector off until the child has frozen what it inherited (gc.freeze:
# never collected there; it is the parent's to collect), then restores it.
_gc_paused = False


def _pause_gc() -> None:
    global _gc_paused
    _gc_paused = gc.isenabled() and bool(_all_pools)
    if _gc_paused:
        gc.disable()


def _resume_gc() -> None:
    if _gc_paused:
        gc.enable()


def _freeze_inherited() -> None:
    if _gc_paused:
        gc.freeze()
        gc.enable()


os.register_at_fork(before=_pause_gc, after_in_parent=_resume_gc,
                    after_in_child=_freeze_inherited)


# One clock for submits and copies (next() is atomic under the GIL): a copy
# that began reading an array after a task's submit() drew its tick shows
# the array as it was at some moment at or after that submit().
_ticks = itertools.count(1)


class _Lease:
    """One shared copy of one plain array's contents, used by pending tasks."""

    __slots__ = ("source", "seg", "array", "release", "count", "batch", "since")

    def __init__(self, source: np.ndarray, seg: Segment, release: weakref.finalize,
                 batch: _Batch | None, since: int) -> None:
        m = seg.meta
        self.source = source      # keeps id(source) unique while leased
        self.seg = seg            # our own mapping: never in the attach cache
        self.array = view(seg, m.offset, m.shape, None, m.dtype, m.fortran,
                          writeable=False)
        self.release = release    # unlinks the copy
        self.count = 1
        self.batch = batch        # tasks of this map() may use it unchecked
        # The tick at which the copy last read (or compared equal to) every
        # byte of the source: tasks submitted before it may use it unchecked.
        self.since = since


class _Batch:
    """The tasks of one ``map()`` call: the copies they lease stay leased
    until the last of them is pickled, so one copy serves them all."""

    __slots__ = ("unsent", "submitting", "held")

    def __init__(self) -> None:
        self.unsent = 0
        self.submitting = True
        self.held: list[_Lease] = []


def _same_contents(arr: np.ndarray, copy: np.ndarray) -> bool:
    """Whether ``arr`` holds exactly the bytes of ``copy`` (a memcmp: NaN
    payloads, -0.0 and padding all count)."""
    if arr.shape != copy.shape or arr.dtype != copy.dtype:
        return False
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.array(arr, order="K")
    if (arr.flags.f_contiguous and not arr.flags.c_contiguous) != \
            (copy.flags.f_contiguous and not copy.flags.c_contiguous):
        return False
    return _ext.same_bytes(arr.view(np.ndarray).reshape(-1, order="A").view(np.uint8),
                           copy.view(np.ndarray).reshape(-1, order="A").view(np.uint8))


class _Leases:
    """The parent's shared copies of plain arrays, and the tasks using them."""

    def __init__(self, spares: _Spares, on_cleanup: Callable[[], None]) -> None:
        self.spares = spares
        self.on_cleanup = on_cleanup
        self.lock = threading.Lock()
        self.current: dict[int, _Lease] = {}   # id(source) -> its newest copy
        self.pending = 0      # _Call tasks submitted and not done (see _Pool.close)
        self.closed = False                    # shut down: clean up when idle

    def lease(self, arr: np.ndarray, batch: _Batch | None,
              submitted: int) -> _Lease | None:
        """A copy of ``arr`` as it was at some moment after tick
        ``submitted`` (its task's submit), for that task; None to pickle it."""
        with self.lock:
            lease = self.current.get(id(arr))
            if lease is not None and lease.source is arr:
                lease.count += 1               # pinned while we look at it
            else:
                lease = None
        if lease is not None:
            if (batch is not None and lease.batch is batch) or lease.since > submitted:
                self._hold(lease, batch)
                return lease
            now = next(_ticks)
            if _same_contents(arr, lease.array):
                with self.lock:
                    lease.since = max(lease.since, now)
                self._hold(lease, batch)
                return lease
            self.release([lease])
        now = next(_ticks)              # before the first byte is read
        seg, release = self._copy(arr)
        if seg is None:
            return None
        lease = _Lease(arr, seg, release, batch, now)
        with self.lock:
            self.current[id(arr)] = lease
        self._hold(lease, batch)
        return lease

    def _hold(self, lease: _Lease, batch: _Batch | None) -> None:
        if batch is None:
            return
        with self.lock:
            lease.batch = batch
            if lease not in batch.held:
                lease.count += 1
                batch.held.append(lease)

    def _copy(self, arr: np.ndarray) -> tuple[Segment | None, Any]:
        spare = self.spares.reuse(arr) or self.spares.refill(arr)
        if spare is not None:
            return spare.seg, spare.release
        try:
            # Full: every spare of this process was unlinked and the
            # creation tried again (_free_spares) before this raises.
            seg = share_segment(arr, refillable=True)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _warn_fallback(arr, exc)
            return None, None
        return seg, own(seg, registered=True)

    def release(self, leases: list[_Lease]) -> None:
        """Tasks using ``leases`` are done: keep or unlink unused copies."""
        dead = []
        with self.lock:
            for lease in leases:
                lease.count -= 1
                if lease.count:
                    continue
                if self.current.get(id(lease.source)) is lease:
                    del self.current[id(lease.source)]
                source, array = lease.source, lease.array
                lease.array = lease.source = None
                if self.closed:
                    dead.append(lease.release)
                else:
                    # Under our lock: the copy is a spare by the time its
                    # array could be submitted again (lock order allows it).
                    self.spares.put(lease.seg, lease.release, source, array)
                del source, array
        for fin in dead:
            fin()

    def submitted(self, batch: _Batch | None) -> None:
        with self.lock:
            self.pending += 1
            if batch is not None:
                batch.unsent += 1

    def sent(self, batch: _Batch | None) -> None:
        """A task was pickled (or never will be)."""
        if batch is not None:
            with self.lock:
                batch.unsent -= 1
            self.batch_check(batch)

    def batch_check(self, batch: _Batch) -> None:
        """Release a map's copies once it submitted and pickled every task."""
        with self.lock:
            if batch.submitting or batch.unsent or not batch.held:
                return
            held, batch.held = batch.held, []
        self.release(held)

    def task_done(self) -> None:
        with self.lock:
            self.pending -= 1
            run = self.closed and self.pending == 0
        if run:
            self.cleanup()

    def close(self) -> None:
        """Shut down or collected: clean up now, or when the last pending task
        is done."""
        with self.lock:
            self.closed = True
            run = self.pending == 0
        if run:
            self.cleanup()

    def cleanup(self) -> None:
        with self.lock:
            dead = list(self.current.values())
            self.current.clear()
        for lease in dead:
            lease.release()
        self.spares.clear()
        self.on_cleanup()


class _Pool:
    """What one executor's parent side knows: constants, copies, functions."""

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self.pid = os.getpid()
        self.prefix = _names.pool_prefix(self.pid, random.getrandbits(16))
        try:
            st = os.statvfs(SHM_DIR)
            budget = st.f_blocks * st.f_frsize // _SPARE_SHARE
        except OSError:
            budget = 0
        self.spares = _Spares(_SPARES, budget, _SPARE_TTL)
        self.results = _ResultSpares(self.prefix, _SPARES, budget, _SPARE_TTL)
        _result_spares[self.prefix] = self.results
        self.leases = _Leases(self.spares, self.end_results)
        self.functions = _FunctionCache(_FUNCTIONS)
        # The executor's manager thread, which receives every result (a weak
        # reference: the thread object holds the executor's queues).
        self.manager: Callable[[], threading.Thread | None] = lambda: None
        _all_pools.add(self)

    def config(self) -> _WorkerConfig:
        return _WorkerConfig(self.threshold, self.pid, self.prefix)

    def note_manager(self, executor: ProcessPoolExecutor) -> None:
        """Remember the executor's manager thread, started by its first
        submit().  The standard executor has no public way to wait for it;
        the attribute is only read."""
        thread = getattr(executor, "_executor_manager_thread", None)
        if isinstance(thread, threading.Thread):
            self.manager = weakref.ref(thread)
            if thread.ident is not None:
                _managed[thread.ident] = executor

    def close(self) -> None:
        """Shut down or collected: once no result can arrive any more (the
        manager thread has ended: tasks still running after
        ``shutdown(wait=False)`` or a collection are done), clean up.  The
        tasks with nothing to share are not counted anywhere: the sweep of
        results simply comes after all of them.  In a forked child (its
        copy of an executor collected there) it does nothing: the spares
        and results are its parent's."""
        if os.getpid() != self.pid:
            return
        manager = self.manager()
        if manager is not None and manager is not threading.current_thread():
            manager.join()
        self.leases.close()

    def end_results(self) -> None:
        """No task runs any more and none will: unlink released results and
        those that never reached us; results dropped from now on are
        unlinked."""
        self.results.close()
        self.sweep_results()

    def sweep_results(self) -> None:
        """Unlink results that never reached us (a worker died, the pool broke).
        Spares are not results: ``self.results`` alone unlinks those (and
        unregisters them, once), perhaps after this returns, if this runs
        inside one of its sections (the executor collected there)."""
        spares = _names.spare_prefix(self.prefix)
        try:
            names = os.listdir(SHM_DIR)
        except OSError:
            return
        # An attached result is released by its owner, perhaps at this very
        # moment in another thread (it died there): not swept.
        owned = owners_pending()
        for name in names:
            if (name.startswith(self.prefix) and not name.startswith(spares)
                    and name not in owned):
                ref = _cache.get(name)
                if ref is None or ref() is None:
                    _names.sweep(name)


_all_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()


# ---------------------------------------------------------------- parent: pickling tasks

class _ArgPickler(pickle.Pickler):
    """Pickles a task: the C pickler, with two additions.

    * plain arrays of at least the threshold become leased shared copies;
    * functions and classes plain pickle cannot carry (see ``_how_to_send``)
      go by value with cloudpickle, as separate blobs; those without a
      closure are cached per object.
    """

    def __init__(self, file: io.BytesIO, pool: _Pool, call: _Call) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _dispatch_table()
        self.pool = pool
        self.call = call

    def share(self, obj: np.ndarray) -> Any:
        """Reduce a large plain array to a handle on its leased copy."""
        lease = self.pool.leases.lease(obj, self.call.batch, self.call.tick)
        if lease is None:
            return NotImplemented
        self.call.leases.append(lease)
        return rebuild_ndarray, handle_of(lease.array, remember=False)

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is np.ndarray:
            return self.share(obj) if _is_big(obj, self.pool.threshold) else NotImplemented
        if t is types.FunctionType or isinstance(obj, type):
            how = _how_to_send(obj)
            if how == _BY_REFERENCE:
                return NotImplemented
            cacheable = getattr(obj, "__closure__", None) is None
            blob = self.pool.functions.get(obj) if cacheable else None
            if blob is None:
                buf = io.BytesIO()
                p = _CloudArgPickler(buf, self.pool, self.call)
                p.dump(obj)
                blob = buf.getvalue()
                cacheable = cacheable and not p.shares_memory
                if cacheable:
                    self.pool.functions.put(obj, blob)
            if how == _FROM_MAIN:
                return _from_main, (obj.__qualname__, blob)
            return _load_by_value, (blob, cacheable)
        return NotImplemented


class _CloudArgPickler(cloudpickle.Pickler):
    """cloudpickle for one function or class, sharing large arrays it holds."""

    def __init__(self, file: io.BytesIO, pool: _Pool, call: _Call) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.pool = pool
        self.call = call
        self.shares_memory = False    # a cached blob must not pin a mapping

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is ndarray:
            self.shares_memory = True
        elif t is np.ndarray and _is_big(obj, self.pool.threshold):
            self.shares_memory = True
            return _ArgPickler.share(self, obj)  # type: ignore[arg-type]
        return super().reducer_override(obj)


_batch = threading.local()     # the map() call this thread is submitting for

class _ByName:
    """A ``__main__`` function in a task with nothing to share: it pickles
    as the function's name with its by-value copy, for a worker whose
    ``__main__`` lacks it (see ``_from_main``); the standard pickler sends it."""

    __slots__ = ("qualname", "blob")

    def __init__(self, qualname: str, blob: bytes) -> None:
        self.qualname = qualname
        self.blob = blob

    def __reduce__(self) -> tuple:
        return _from_main, (self.qualname, self.blob)


def _plain_function(fn: Any, pool: _Pool) -> Any:
    """What a task with nothing to share sends for ``fn``: ``fn`` itself if
    plain pickle sends it by reference; a ``_ByName`` for a ``__main__``
    function once its by-value copy is cached (its first task went through
    our pickler, and the copy holds no shared array); else None."""
    if type(fn) not in (types.FunctionType, types.BuiltinFunctionType):
        return None
    how = _how_to_send(fn)
    if how == _BY_REFERENCE:
        return fn
    if how == _FROM_MAIN and getattr(fn, "__closure__", None) is None:
        blob = pool.functions.get(fn)
        if blob is not None:
            return _ByName(fn.__qualname__, blob)
    return None


def _plain_call(fn: Any, args: tuple, kwargs: dict, pool: _Pool) -> tuple[Any, tuple] | None:
    """How a task that holds nothing for our pickler goes to the standard
    executor: ``(function, arguments)``; None for any other task.

    Such a task is a function plain pickle can send (see
    ``_plain_function``) with arguments made of Python's and numpy's
    scalars, also inside tuples, lists and dicts (``_ARGS_DEPTH``), sent
    as it is; or one chunk of our ``map()`` over such a function (run by
    ``_map_chunk`` or ``_starmap_chunk``).  A list changed after submit()
    is pickled as it is then, as the standard executor does (an array put
    into it goes by value).  The arguments are checked in C: a Python loop
    takes ~40 ns per value, 4 us for a chunk of 100, which costs the parent
    about 70 us."""
    only = _ext.only_types
    if kwargs and not only(kwargs, _ATOMIC_TYPES, _ARGS_DEPTH):
        return None
    if (fn is _map_chunk or fn is _starmap_chunk) and len(args) == 2 and not kwargs:
        # One chunk of our map(): its items are arguments, one level more
        # for several iterables' argument tuples.
        inner, chunk = args
        depth = _ARGS_DEPTH if fn is _map_chunk else _ARGS_DEPTH + 1
        if type(chunk) is not tuple or not only(chunk, _ATOMIC_TYPES, depth):
            return None
        plain_inner = _plain_function(inner, pool)
        return None if plain_inner is None else (fn, (plain_inner, chunk))
    if not only(args, _ATOMIC_TYPES, _ARGS_DEPTH):
        return None
    plain_fn = _plain_function(fn, pool)
    return None if plain_fn is None else (plain_fn, args)


class _Call:
    """A submitted task; pickled by the executor's feeder thread."""

    __slots__ = ("fn", "args", "kwargs", "pool", "batch", "leases", "done",
                 "sent", "lock", "tick", "future", "__weakref__")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 pool: _Pool, batch: _Batch | None) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.pool = pool
        self.batch = batch
        self.leases: list[_Lease] = []
        self.done = False
        self.sent = False
        self.lock = threading.Lock()
        # Drawn in submit(), after the caller last wrote the arguments: a
        # copy begun later shows them as they were then or later.
        self.tick = next(_ticks)
        self.future: Future | None = None       # set by submit()

    def __reduce__(self) -> tuple:
        buf = io.BytesIO()
        with self.lock:
            try:
                _ArgPickler(buf, self.pool, self).dump((self.fn, self.args, self.kwargs))
            except Exception as exc:
                # The task fails with this error on its future (_doom), as
                # in the standard executor, but the executor's queue sees a
                # task that pickles: its own error path can deadlock against
                # a concurrent shutdown (CPython 3.13.0's feeder thread waits
                # for the shutdown lock while the manager, holding it, joins
                # the feeder).  The worker runs a no-op in its place.
                self._release()
                self._mark_sent()
                _doom(self, exc)
                return _run, (_unsent, (), {})
            except BaseException:
                self._release()
                self._mark_sent()
                raise
            if self.done:              # finished (pool broke) while we pickled
                self._release()
            self._mark_sent()
        return _run_pickled, (buf.getvalue(),)

    def _release(self) -> None:
        leases, self.leases = self.leases, []
        if leases:
            self.pool.leases.release(leases)

    def _mark_sent(self) -> None:
        if not self.sent:
            self.sent = True
            self.pool.leases.sent(self.batch)

    def finished(self, future: Future | None = None) -> None:
        """The task is done (its future's done callback): it no longer needs
        its copies."""
        with self.lock:
            self.done = True
            # No cycle (future -> its callbacks -> this -> future) may keep a
            # result alive after the caller drops the future.
            self.fn = self.args = self.kwargs = self.future = None
            self._release()
            self._mark_sent()
        self.pool.leases.task_done()


class _DoomedFuture(Future):
    """What a task's future becomes when its arguments could not be pickled:
    the executor settles it with the result of the no-op run in its place,
    and this turns that into the error, before anybody can see the result."""

    _sa_error: BaseException

    def set_result(self, result: Any) -> None:
        """Settle with the error this task met instead."""
        self.set_exception(self._sa_error)


def _doom(call: _Call, error: BaseException) -> None:
    """Make ``call``'s future fail with ``error`` when the executor settles it
    (in the feeder or result thread, before it does so).  The future is
    the standard one, which submit() returns as is (no second future per
    task); only a doomed one changes its class, a subclass adding nothing
    but this.  submit() sets ``call.future`` a moment after the executor
    accepts the task: wait for that."""
    while (future := call.future) is None:
        if call.done:               # settled already (the pool broke)
            return
        time.sleep(0.0005)
    future._sa_error = error                         # type: ignore[attr-defined]
    future.__class__ = _DoomedFuture


# ---------------------------------------------------------------- the executor

_exiting = False
# Clean-ups of collected executors, some under way.  Changed by single set
# operations, atomic: a collection can run anywhere, inside a lock too.
_closing: set[_Janitor] = set()


def _note_exit() -> None:
    """At exit: clean-ups from now on are done in place, and those under way
    get a few seconds to finish (their threads would not outlive the
    interpreter).  One that cannot finish does not hang the exit: what it
    left is registered with the resource tracker, which unlinks it."""
    global _exiting
    _exiting = True
    deadline = time.monotonic() + _EXIT_WAIT
    for janitor in list(_closing):
        janitor.join(max(0.0, deadline - time.monotonic()))


@functools.cache
def _watch_exit() -> None:
    """Note the interpreter's exit before any executor's finalizer runs then
    (registered after the first ``weakref.finalize``, so called before
    them: exit functions run last registered first)."""
    atexit.register(_note_exit)


def _close_collected(pool: _Pool) -> None:
    """The executor was garbage-collected, or the interpreter exits, or it
    was shut down while its tasks still run: clean up.  A collection can
    run inside any section of ours, in the thread holding its lock, which
    this must wait for; and the clean-up waits for the running tasks: the
    work goes to a new thread.  At exit, where a new thread would not
    finish (and the standard executor has waited for the tasks), it is done
    here."""
    if not _exiting:
        try:
            janitor = _Janitor(0.0, pool.close)
        except RuntimeError:
            pass
        else:
            for done in [j for j in list(_closing) if not j.running()]:
                _closing.discard(done)
            _closing.add(janitor)
            return
    pool.close()


# Executors kept alive until their manager thread has ended: shut down
# without waiting, or whose pool broke.  From Python 3.12 that thread holds
# the executor's shutdown lock while it stops the workers and joins them
# and its feeder thread (a broken pool: also while it fails the pending
# futures, whose callbacks run there), and the standard executor's weakref
# callback, run when the executor is freed, takes the same lock: freed in
# one of those threads (by a collection there, the executor being garbage
# in a cycle), it waits for itself, and the interpreter's exit waits for
# it.  Alive until the thread is gone, the executor cannot be freed while
# the lock is held.  In a forked child, where no janitor runs, the copy is
# never freed (the lock may have been held at the fork, inherited so).
_winding_down: dict[int, ProcessPoolExecutor] = {}


def _keep_until_wound_down(executor: ProcessPoolExecutor) -> None:
    """Keep ``executor`` alive until its manager thread (if any, see
    ``_Pool.note_manager``) has ended; a janitor waits for it.  Not
    Thread.start(), which waits for the new thread: the caller may hold
    the lock (see _Janitor)."""
    thread = executor._sa_pool.manager()
    key = id(executor)
    if thread is None or key in _winding_down:
        return
    _winding_down[key] = executor
    try:
        _Janitor(0.0, functools.partial(_wound_down, thread, key, os.getpid()))
    except RuntimeError:
        pass        # the interpreter exits: kept until then


def _wound_down(thread: threading.Thread, key: int, pid: int) -> None:
    """The janitor's work: once ``thread`` has ended, let its executor go
    (only in the process that kept it)."""
    thread.join()
    if os.getpid() == pid:
        _winding_down.pop(key, None)


# Executors by the ident of their manager thread.  Nothing says in advance
# that a pool will break, so a collection starting in the manager thread of
# a broken pool keeps its executor alive (reachable, so not collected) as
# above.
_managed: weakref.WeakValueDictionary[int, ProcessPoolExecutor] = \
    weakref.WeakValueDictionary()


def _before_collection(phase: str, info: dict[str, int]) -> None:
    """``gc.callbacks`` entry: see ``_managed``.  The pool is broken once
    the standard executor's ``_broken`` is set, which its manager thread
    does first when it finds a worker gone (read only)."""
    if phase != "start" or not _managed:
        return
    executor = _managed.get(threading.get_ident())
    if (executor is not None and getattr(executor, "_broken", False)
            and executor._sa_pool.manager() is threading.current_thread()):
        _keep_until_wound_down(executor)


gc.callbacks.append(_before_collection)


def _result_of(future: Future, end_time: float | None) -> Any:
    """One of map()'s results; the future is cancelled if it has none yet
    (a timeout), and no reference to it is kept."""
    try:
        return future.result(None if end_time is None else end_time - time.monotonic())
    except BaseException:
        future.cancel()
        raise
    finally:
        del future


def _map_results(fs: list[Future], end_time: float | None, chunked: bool) -> Iterator[Any]:
    """map()'s results in order, as the standard one yields them: each
    dropped once yielded, a chunk's error raised where the chunk begins, and
    the tasks not yet waited for cancelled when the iterator is closed."""
    try:
        fs.reverse()
        while fs:
            if chunked:
                results = _result_of(fs.pop(), end_time)
                results.reverse()
                while results:
                    yield results.pop()
            else:
                yield _result_of(fs.pop(), end_time)
    finally:
        for future in fs:
            future.cancel()


class ProcessPoolExecutor(concurrent.futures.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` that shares numpy arrays.

    Parameters
    ----------
    max_workers, mp_context, initializer, initargs, max_tasks_per_child
        As for the standard class (``max_tasks_per_child`` needs Python 3.11).
    share_threshold : int or None
        Plain numpy arrays of at least this many bytes, anywhere in a task's
        arguments, are copied into shared memory and reach workers as
        read-only ``sharedarray.ndarray``; arrays of this size returned by
        workers come back through shared memory as ``sharedarray.ndarray``
        owned by this process.  ``None`` turns both off.
        ``sharedarray.ndarray`` arguments always travel as handles to the
        same, writable memory.

    A task sees each argument as of some moment at or after its
    ``submit()``; one copy, made when the first task using it is sent,
    serves every task of a ``map()`` call, every task submitted before it
    was made, and every later task whose array still holds the same bytes.
    Functions travel by
    reference where plain pickle can carry them, otherwise (lambdas,
    closures, functions missing from a worker's ``__main__``) by value with
    cloudpickle.

    Lifecycle: a copy that no pending task needs is kept up to 5 seconds to
    be refilled by the next array of its size, but only while no process maps
    it; then it is unlinked.  A result this process drops is kept the same
    way (up to 5 seconds, while the executor is open) for a worker to write
    its next result of that size into, but only if no process maps it then.
    After ``shutdown(wait=False)`` the executor lives until its workers
    have stopped, even if dropped; then it is freed and cleans up.
    Everything is unlinked at ``shutdown()`` and - through the resource
    tracker - if this process is killed; workers exit by themselves when this
    process dies.  When shared memory is full, kept copies and results make
    room first; then arrays fall back to ordinary pickling with one
    ``RuntimeWarning``.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                 *, max_tasks_per_child: int | None = None,
                 share_threshold: int | None = 1 << 20) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if share_threshold is not None and share_threshold < 0:
            raise ValueError("share_threshold must be >= 0 or None")
        kwargs: dict[str, Any] = {}
        if max_tasks_per_child is not None:
            if sys.version_info < (3, 11):
                raise TypeError("max_tasks_per_child needs Python 3.11 or newer")
            kwargs["max_tasks_per_child"] = max_tasks_per_child
        from multiprocessing import resource_tracker
        # Workers must share our tracker: start it before any worker exists.
        resource_tracker.ensure_running()
        self._sa_pool = _Pool(share_threshold)
        pool = self._sa_pool
        super().__init__(max_workers, mp_context, _worker_init,
                         (pool.config(), _ext.start_time(pool.pid), initializer,
                          initargs), **kwargs)
        self._sa_finalizer = weakref.finalize(self, _close_collected, pool)
        _watch_exit()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; arrays travel through shared memory."""
        pool = self._sa_pool
        plain_call = _plain_call(fn, args, kwargs, pool)
        if plain_call is not None:
            # Nothing to share (the common tiny task): the standard path as
            # it is, no bookkeeping of ours; the worker pickles the outcome
            # (_reduce_result_item).
            future = super().submit(plain_call[0], *plain_call[1], **kwargs)
        else:
            batch = getattr(_batch, "current", None)
            call = _Call(fn, args, kwargs, pool, batch)
            pool.leases.submitted(batch)
            try:
                future = super().submit(call)
            except BaseException:
                call.finished()
                raise
            call.future = future
            future.add_done_callback(call.finished)
        if pool.manager() is None:          # the first submit() started it
            pool.note_manager(self)
        return future

    submit.__doc__ = concurrent.futures.ProcessPoolExecutor.submit.__doc__ or submit.__doc__

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None,
            chunksize: int = 1, **kwargs: Any) -> Any:
        """As the standard ``map``; an array passed to many tasks is copied once."""
        if kwargs:
            # A newer standard map()'s options (buffersize): its own map(),
            # whose chunks go through our pickler.
            return self._submitting_batch(super().map, fn, *iterables, timeout=timeout,
                                          chunksize=chunksize, **kwargs)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        fs = self._submitting_batch(self._submit_all, fn, iterables, chunksize)
        return _map_results(fs, end_time, chunksize > 1)

    def _submit_all(self, fn: Callable[..., Any], iterables: tuple,
                    chunksize: int) -> list[Future]:
        """map()'s tasks, all submitted now: ``fn(*args)`` per item, or one
        task per chunk, a flat tuple of one iterable's items or a tuple of
        several iterables' argument tuples, where the standard map() wraps
        every task in a chunk runner with a tuple of argument tuples.  A
        chunk with nothing to share takes the standard path (_plain_call)."""
        if chunksize == 1:
            return [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
        if len(iterables) == 1:
            runner, source = _map_chunk, iter(iterables[0])
        else:
            runner, source = _starmap_chunk, zip(*iterables, strict=False)
        chunks = iter(lambda: tuple(itertools.islice(source, chunksize)), ())
        return [self.submit(runner, fn, chunk) for chunk in chunks]

    def _submitting_batch(self, submit: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``submit`` as one ``map()`` call: its tasks share copies."""
        batch = _Batch()
        outer = getattr(_batch, "current", None)
        _batch.current = batch
        try:
            return submit(*args, **kwargs)
        finally:
            _batch.current = outer
            batch.submitting = False
            self._sa_pool.leases.batch_check(batch)

    map.__doc__ = concurrent.futures.ProcessPoolExecutor.map.__doc__ or map.__doc__

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the standard ``shutdown``; with ``wait``, also unlinks temporaries."""
        if not wait:
            _keep_until_wound_down(self)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            if self._sa_finalizer.detach() is not None:     # not run yet
                manager = self._sa_pool.manager()
                if manager is not None and manager.is_alive():
                    # An earlier shutdown(wait=False): the tasks still run,
                    # and this returns at once, as the standard one does.
                    _close_collected(self._sa_pool)
                else:
                    self._sa_pool.close()
