"""A ProcessPoolExecutor that moves numpy arrays through shared memory.

Data flow and ownership::

    parent                                   worker
    ------                                   ------
    submit(fn, *args)  -> _Call
      feeder thread pickles _Call:
        cloudpickle(fn, args, kwargs) with
          sharedarray.ndarray   -> handle (same memory, writable)
          plain array >= threshold
              -> copy into temp segment T    unpickle: attach T read-only
                 (parent owns T; one copy
                 per array object, leased
                 by every task that uses it)
                                             run fn
                                             pickle the result with
                                               plain array >= threshold
                                                 -> new segment R, named
                                                    sa-<parent pid>-<pool><rand>,
                                                    registered with the tracker
      result thread unpickles: attach R, the parent now owns R
    future done -> leases released; when no pending task needs T, T becomes a
    spare, refilled in place by the next array of its size (a memcpy instead
    of a new segment), or is unlinked

Who unlinks what:

* T (inputs): the parent.  When no pending task needs it, T is kept as a
  spare for ``_SPARE_TTL`` seconds (at most ``_SPARES`` of them, in at most a
  ``1/_SPARE_SHARE`` of /dev/shm), then unlinked; at once when the room is
  needed for a new copy, at ``shutdown()``, or when T cannot be reused: a
  task using it failed, or a worker still maps it after its task (it kept
  the array, or returned a view of it; the worker says so with its result).
* R (results): the parent, when the last array on R dies (like ``share()``).
  Results that never reached the parent (a worker killed mid-task, a broken
  pool) are found by their pool prefix and unlinked at ``shutdown()``.
* Anything left when the parent itself is killed: the standard library's
  resource tracker, which every worker shares with the parent.  Workers watch
  the parent and exit when it dies, so the tracker sees everyone go.

Arrays made with ``create()`` are never unlinked by the pool.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import io
import os
import pickle
import random
import select
import sys
import threading
import time
import types
import warnings
import weakref
from concurrent.futures import Future
from multiprocessing import resource_tracker
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable

import cloudpickle
import numpy as np

from . import _names
from .core import SHM_DIR, Segment, ndarray, refill_segment, view
from .reduction import (_cache, _remember, attach_owned, own, rebuild_ndarray,
                        reduce_ndarray, share_segment)

__all__ = ["ProcessPoolExecutor"]

_POLL_PARENT = 0.5    # seconds between checks where pidfd is unavailable
_SPARES = 4           # released input copies kept for reuse, at most ...
_SPARE_SHARE = 4      # ... 1/_SPARE_SHARE of the shm file system, ...
_SPARE_TTL = 5.0      # ... for this many seconds unused
_ATOMIC = frozenset({type(None), bool, int, float, complex, str, bytes})
_PLAIN_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)
_SCAN_ITEMS = 1024    # longest result list checked for atomics (~20 ns/item)


# ---------------------------------------------------------------- workers

def _watch_parent(pid: int) -> None:
    """Exit this worker when process ``pid`` dies, however it dies."""
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except (AttributeError, OSError) as exc:
        if isinstance(exc, ProcessLookupError):
            os._exit(1)
        fd = None

    def watch() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while True:
                time.sleep(_POLL_PARENT)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os._exit(1)

    threading.Thread(target=watch, name="sharedarray-parent-watch",
                     daemon=True).start()


def _worker_init(parent: int, initializer: Callable[..., Any] | None,
                 initargs: tuple) -> None:
    """Our worker set-up, chained in front of the user's initializer."""
    _watch_parent(parent)
    if initializer is not None:
        initializer(*initargs)


_forking_table: Any = None


def _dispatch_table() -> Any:
    """copyreg's table plus multiprocessing's reducers, built once per process."""
    global _forking_table
    if _forking_table is None:
        _forking_table = ForkingPickler(io.BytesIO()).dispatch_table
    return _forking_table


def _is_big(obj: Any, threshold: int | None) -> bool:
    # Empty arrays always go by value: reduce_ndarray pickles them as plain
    # arrays, which would come back here (endless recursion at threshold 0).
    return (type(obj) is np.ndarray and threshold is not None
            and obj.nbytes >= threshold and obj.size > 0
            and not obj.dtype.hasobject)


class _ResultPickler(pickle.Pickler):
    """Pickles a worker's result, moving large plain arrays into segments."""

    def __init__(self, file: io.BytesIO, threshold: int | None, owner: int,
                 prefix: str) -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _dispatch_table()
        self.threshold = threshold
        self.owner = owner
        self.prefix = prefix
        self.created: list = []

    def reducer_override(self, obj: Any) -> Any:
        if not _is_big(obj, self.threshold):
            return NotImplemented
        name = f"{self.prefix}{random.getrandbits(32):08x}"
        try:
            seg = share_segment(obj, owner=self.owner, name=name)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _warn_fallback(obj, exc)
            return NotImplemented
        self.created.append(seg)
        m = seg.meta
        # Explicit strides: the copy may be in Fortran order (attach_owned
        # would lay a C-order view over it).
        strides = view(seg, m.offset, m.shape, None, m.dtype, m.fortran).strides
        return attach_owned, (seg.name, m.token, m.boot, m.offset, m.shape,
                              strides, None, True)


class _Result:
    """A worker's return value on its way back to the parent, with the names
    of input copies this worker still maps (they must not be reused)."""

    __slots__ = ("value", "threshold", "owner", "prefix", "retained")

    def __init__(self, value: Any, threshold: int | None, owner: int,
                 prefix: str, retained: tuple = ()) -> None:
        self.value = value
        self.threshold = threshold
        self.owner = owner
        self.prefix = prefix
        self.retained = retained

    def __reduce__(self) -> tuple:
        buf = io.BytesIO()
        p = _ResultPickler(buf, self.threshold, self.owner, self.prefix)
        try:
            p.dump(self.value)
        except BaseException:
            for seg in p.created:
                _discard(seg.name)
            raise
        return _load_result, (buf.getvalue(), self.retained)


# Parent: names of input copies that a worker kept mapped after its task (a
# global, a returned view): never reused, unlinked as usual when released.
_pinned: set[str] = set()


def _load_result(payload: bytes, retained: tuple = ()) -> Any:
    """Unpickle a result in the parent (result thread)."""
    if retained:
        _pinned.update(retained)
    return pickle.loads(payload)


# Worker: the input copies attached while one task is unpickled.
_loading: list[str] | None = None


def _rebuild_lease(*handle: Any) -> ndarray:
    """Worker side of a leased input copy: a handle, noted for the task."""
    arr = rebuild_ndarray(*handle)
    if _loading is not None:
        _loading.append(handle[0])
    return arr


def _still_mapped(names: list[str]) -> tuple:
    """Which of ``names`` this process still maps."""
    out = []
    for name in names:
        ref = _cache.get(name)
        if ref is not None and ref() is not None:
            out.append(name)
    return tuple(out)


class _LoadedCall:
    """A task as the worker sees it: call it to run it."""

    __slots__ = ("fn", "args", "kwargs", "threshold", "owner", "prefix", "leased")

    leased: list[str] | tuple

    def __call__(self) -> Any:
        try:
            value = self.fn(*self.args, **self.kwargs)
        finally:
            if self.leased:
                # Drop the inputs now: the parent reuses a copy only if no
                # worker maps it once its tasks are done.
                self.fn = self.args = self.kwargs = None
        retained = _still_mapped(self.leased) if self.leased else ()
        t = type(value)
        if not retained and (
                t in _ATOMIC or self.threshold is None
                # map()'s chunks come back as lists: skip our pickler when
                # they hold only atomic values (no array can be inside)
                or ((t is list or t is tuple) and len(value) <= _SCAN_ITEMS
                    and all(type(v) in _ATOMIC for v in value))):
            return value      # nothing to share: the standard path is fastest
        return _Result(value, self.threshold, self.owner, self.prefix, retained)


def _plain_call(fn: Callable[..., Any], args: tuple, kwargs: dict,
                threshold: int | None, owner: int, prefix: str) -> _LoadedCall:
    """Worker side of a task that needed no pickling of ours."""
    call = _LoadedCall()
    call.fn, call.args, call.kwargs = fn, args, kwargs
    call.threshold, call.owner, call.prefix = threshold, owner, prefix
    call.leased = ()
    return call


def _load_call(payload: bytes) -> _LoadedCall:
    global _loading
    call = _LoadedCall()
    call.leased = _loading = []
    try:
        (call.fn, call.args, call.kwargs, call.threshold, call.owner,
         call.prefix) = pickle.loads(payload)
    finally:
        _loading = None
    return call


# ---------------------------------------------------------------- parent

_discard = _names.discard


def _warn_fallback(arr: np.ndarray, exc: OSError) -> None:
    warnings.warn(f"sharedarray: shared memory is too small for a "
                  f"{arr.nbytes:,}-byte array ({exc.strerror}); sending it by "
                  f"pickling instead", RuntimeWarning, stacklevel=2)


def _refs(obj: Any) -> int:
    """``sys.getrefcount(obj)`` one call down, like ``_held_elsewhere``."""
    return sys.getrefcount(obj)


def _refs_when_unused() -> int:
    """What ``sys.getrefcount`` says inside ``_held_elsewhere`` for an object
    held only by one attribute and the caller's local variable, as ``retire``
    holds a lease's segment.  Measured, not assumed: it differs between
    interpreter versions (3.10 also keeps a call's arguments on the caller's
    stack)."""
    holder = types.SimpleNamespace(seg=object())
    seg = holder.seg
    return _refs(seg)


_UNUSED_REFS = _refs_when_unused()


def _held_elsewhere(seg: Segment) -> bool:
    """Whether anything in this process besides a retiring lease still holds
    ``seg``: every array on a segment, its views and whatever holds those
    (memoryviews, results unpickled from workers) keep the Segment itself
    alive as their base.  Call it as ``retire`` does: with ``seg`` in a local
    variable and in ``lease.seg``, and nowhere else."""
    return sys.getrefcount(seg) > _UNUSED_REFS


class _Lease:
    """One temporary copy of one plain array, used by pending tasks."""

    __slots__ = ("source", "seg", "array", "release", "count", "dirty", "mapped")

    def __init__(self, source: np.ndarray, seg: Segment,
                 release: weakref.finalize, mapped: bool = False) -> None:
        m = seg.meta
        self.source = source      # keeps id(source) unique while leased
        self.seg = seg
        self.array = view(seg, m.offset, m.shape, None, m.dtype, m.fortran,
                          writeable=False)
        self.release = release    # unlinks the copy
        self.count = 1
        self.dirty = False        # a task using it failed: never reuse it
        self.mapped = mapped      # our mapping has every page (refilled before)


class _PoolState:
    """What the parent knows about its temporaries; shared with _Call."""

    def __init__(self, threshold: int | None) -> None:
        self.threshold = threshold
        self.pid = os.getpid()
        self.prefix = f"{_names.generated_prefix(self.pid)}{random.getrandbits(16):04x}"
        self.lock = threading.Lock()
        self.leases: dict[int, _Lease] = {}
        self.parked: list[_Lease] = []   # unused, kept until the next task is pickled
        self.pending = 0                 # tasks submitted and not done
        self.unsent = 0                  # ... of which not pickled yet
        self.closed = False              # shut down or collected: clean up when idle
        self.by_value: collections.OrderedDict[int, tuple[Any, bytes]] = \
            collections.OrderedDict()
        self.fallback_warned = False
        # Released copies (segment, its finalizer, when it expires, whether
        # our mapping has every page), oldest first, kept for a while to take
        # the next array of the same size: refilling one costs a memcpy, a
        # new segment several.
        self.spares: list[tuple[Segment, weakref.finalize, float, bool]] = []
        self.janitor: threading.Timer | None = None
        try:
            st = os.statvfs(SHM_DIR)
            self.spare_budget = st.f_blocks * st.f_frsize // _SPARE_SHARE
        except OSError:
            self.spare_budget = 0

    def pickle_by_value(self, obj: Any, call: "_Call") -> tuple[bytes, bool]:
        """cloudpickle ``obj``; reuse the blob while ``obj`` lives and holds
        no shared memory.  Returns (blob, cacheable)."""
        with self.lock:
            hit = self.by_value.get(id(obj))
            if hit is not None and hit[0] is obj:
                self.by_value.move_to_end(id(obj))
                return hit[1], True
        buf = io.BytesIO()
        p = _CloudArgPickler(buf, self, call)
        p.dump(obj)
        data = buf.getvalue()
        if p.shares_memory or getattr(obj, "__closure__", None) is not None:
            return data, False   # closures: captured state may change between tasks
        with self.lock:
            self.by_value[id(obj)] = (obj, data)   # the strong ref pins id(obj)
            if len(self.by_value) > _BY_VALUE_CACHE_SIZE:
                self.by_value.popitem(last=False)
        return data, True

    def lease(self, arr: np.ndarray) -> _Lease | None:
        """The shared copy of ``arr``, made on first use; None to pickle it."""
        with self.lock:
            lease = self.leases.get(id(arr))
            if lease is not None and lease.source is arr:
                lease.count += 1
                return lease
        spare = self.refill(arr)
        if spare is not None:
            seg, fin = spare
        else:
            seg = self.new_copy(arr)
            if seg is None:
                return None
            fin = own(seg, registered=True)
            _remember(seg)
        lease = _Lease(arr, seg, fin, mapped=spare is not None)
        with self.lock:
            self.leases[id(arr)] = lease
        return lease

    def refill(self, arr: np.ndarray) -> tuple[Segment, weakref.finalize] | None:
        """A spare copy of the same size, now holding ``arr``; or None."""
        with self.lock:
            for i, (seg, fin, _, mapped) in enumerate(self.spares):
                if seg.size - seg.meta.offset == arr.nbytes:
                    del self.spares[i]
                    break
            else:
                return None
        try:
            if refill_segment(seg, arr, populate=not mapped):
                return seg, fin
        except BaseException:
            fin()
            raise
        fin()                 # same size, other header length: rare
        return None

    def new_copy(self, arr: np.ndarray) -> Segment | None:
        """A new segment holding ``arr``; None (and a warning) when full."""
        for attempt in (0, 1):
            try:
                return share_segment(arr)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if attempt == 0 and self.drop_spares():
                    continue          # the spares were in the way
                if not self.fallback_warned:
                    self.fallback_warned = True
                    _warn_fallback(arr, exc)
                return None
        return None

    def drop_spares(self) -> bool:
        """Unlink every spare copy; whether there was one."""
        with self.lock:
            spares, self.spares = self.spares, []
            janitor, self.janitor = self.janitor, None
        if janitor is not None:
            janitor.cancel()
            if janitor is not threading.current_thread():
                janitor.join()        # gone when shutdown() returns
        for _seg, fin, _, _ in spares:
            fin()
        return bool(spares)

    def expire(self) -> None:
        """Janitor: unlink spares unused for ``_SPARE_TTL`` seconds."""
        with self.lock:
            self.janitor = None
            now = time.monotonic()
            dead = [fin for _, fin, end, _ in self.spares if end <= now]
            self.spares = [s for s in self.spares if s[2] > now]
            if self.spares:
                self.arm_locked(min(s[2] for s in self.spares) - now)
        for fin in dead:
            fin()

    def arm_locked(self, delay: float) -> None:
        if self.janitor is None:
            self.janitor = threading.Timer(max(delay, 0.0), self.expire)
            self.janitor.daemon = True
            self.janitor.name = "sharedarray-spares"
            self.janitor.start()

    def retire(self, leases: list[_Lease]) -> None:
        """Copies no task needs any more: keep as spares the ones nobody
        maps (within the budget) and unlink the rest."""
        dead = []
        for lease in leases:
            seg = lease.seg
            lease.array = None        # our own view of it
            if (lease.dirty or seg.name in _pinned or _held_elsewhere(seg)
                    or seg.size > self.spare_budget):
                _pinned.discard(seg.name)
                dead.append(lease.release)
                continue
            with self.lock:
                if self.closed:
                    dead.append(lease.release)
                    continue
                self.spares.append((seg, lease.release,
                                    time.monotonic() + _SPARE_TTL, lease.mapped))
                used = sum(s[0].size for s in self.spares)
                while self.spares and (len(self.spares) > _SPARES
                                       or used > self.spare_budget):
                    old, fin, _, _ = self.spares.pop(0)
                    used -= old.size
                    dead.append(fin)
                self.arm_locked(_SPARE_TTL)
        for fin in dead:
            fin()

    def release(self, leases: list[_Lease]) -> None:
        """Tasks using ``leases`` are done: unlink copies nobody needs.

        While tasks wait to be pickled (the rest of a ``map``), an unused copy
        is parked until the next task is pickled, which may lease it again."""
        dead = []
        with self.lock:
            for lease in leases:
                lease.count -= 1
                if lease.count == 0 and self.leases.get(id(lease.source)) is lease:
                    if self.unsent:
                        self.parked.append(lease)
                    else:
                        del self.leases[id(lease.source)]
                        dead.append(lease)
        self.retire(dead)

    def submitted(self) -> None:
        with self.lock:
            self.pending += 1
            self.unsent += 1

    def sent(self, pickled: bool = True) -> None:
        """A task was pickled (or will never be).  Parked copies that it did
        not lease again are released; all of them when no task is left."""
        with self.lock:
            self.unsent -= 1
            if not pickled and self.unsent:
                return
            dead = [lease for lease in self.parked if lease.count == 0
                    and self.leases.get(id(lease.source)) is lease]
            for lease in dead:
                del self.leases[id(lease.source)]
            self.parked.clear()
        self.retire(dead)

    def task_done(self) -> None:
        with self.lock:
            self.pending -= 1
            run = self.closed and self.pending == 0
        if run:
            self.cleanup()

    def close(self) -> None:
        """Shut down or collected: clean up now, or when the last pending task
        is done (after ``shutdown(wait=False)`` tasks still run)."""
        with self.lock:
            self.closed = True
            run = self.pending == 0
        if run:
            self.cleanup()

    def cleanup(self) -> None:
        """Release every lease and spare; unlink results that never arrived."""
        with self.lock:
            dead = list(self.leases.values())
            self.leases.clear()
            self.parked.clear()
        self.retire(dead)     # closed: unlinks them all
        self.drop_spares()
        try:
            names = os.listdir(SHM_DIR)
        except OSError:
            return
        for name in names:
            if name.startswith(self.prefix):
                ref = _cache.get(name)
                if ref is None or ref() is None:
                    _discard(name)


def _by_reference(obj: Any) -> bool:
    """Whether plain pickle would carry ``obj`` as a reference that works
    in any worker: an importable module-level function or class."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "<")
    return module is not None and module != "__main__" and "<" not in qualname


class _ArgPickler(pickle.Pickler):
    """Pickles a task: the C pickler, with three additions.

    * plain arrays of at least the threshold become leased shared copies;
    * functions and classes that plain pickle cannot carry by reference
      (lambdas, closures, anything defined in ``__main__``) are pickled by
      value with cloudpickle, as separate blobs; those without a closure are
      cached per object, so a ``__main__`` function costs cloudpickle once
      per executor and not once per task;
    * ``shares_memory`` records whether the stream refers to shared memory,
      which makes a blob unsafe to cache (it would pin the mapping).
    """

    def __init__(self, file: io.BytesIO, state: "_PoolState", call: "_Call") -> None:
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.dispatch_table = _dispatch_table()
        self.state = state
        self.call = call
        self.shares_memory = False

    def share(self, obj: Any) -> Any:
        """Reduce a large plain array to a handle on its leased copy."""
        lease = self.state.lease(obj)
        if lease is None:
            return NotImplemented
        self.call.leases.append(lease)
        self.shares_memory = True
        return _rebuild_lease, reduce_ndarray(lease.array)[1]

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is np.ndarray:
            return self.share(obj) if _is_big(obj, self.state.threshold) else NotImplemented
        if t is ndarray:
            self.shares_memory = True
        elif (t is types.FunctionType or isinstance(obj, type)) and not _by_reference(obj):
            data, cacheable = self.state.pickle_by_value(obj, self.call)
            self.shares_memory |= not cacheable
            return _load_by_value, (data, cacheable)
        return NotImplemented


class _CloudArgPickler(cloudpickle.Pickler):
    """cloudpickle for one function or class, sharing large arrays it holds."""

    def __init__(self, file: io.BytesIO, state: "_PoolState", call: "_Call") -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.state = state
        self.call = call
        self.shares_memory = False

    share = _ArgPickler.share

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is np.ndarray and _is_big(obj, self.state.threshold):
            return self.share(obj)
        if t is ndarray:
            self.shares_memory = True
        return super().reducer_override(obj)


_by_value_cache: dict[bytes, Any] = {}
_BY_VALUE_CACHE_SIZE = 256    # distinct functions/classes a worker keeps


def _load_by_value(data: bytes, cacheable: bool) -> Any:
    """Worker side of a cloudpickled function or class (cached per blob, so
    a class keeps its identity across tasks)."""
    if not cacheable:
        return pickle.loads(data)
    obj = _by_value_cache.get(data)
    if obj is None:
        obj = pickle.loads(data)
        if len(_by_value_cache) >= _BY_VALUE_CACHE_SIZE:
            _by_value_cache.clear()
        _by_value_cache[data] = obj
    return obj


class _Call:
    """A submitted task; pickled by the executor's feeder thread."""

    __slots__ = ("fn", "args", "kwargs", "state", "leases", "done", "sent",
                 "lock", "__weakref__")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 state: _PoolState) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.state = state
        self.leases: list[_Lease] = []
        self.done = False
        self.sent = False
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple:
        state = self.state
        fn, args, kwargs = self.fn, self.args, self.kwargs
        if (type(fn) in _PLAIN_FUNCTIONS and _by_reference(fn)
                and all(type(a) in _ATOMIC for a in args)
                and (not kwargs or all(type(v) in _ATOMIC for v in kwargs.values()))):
            # Nothing for our pickler to do (the common tiny task): let the
            # executor's own pickler write it, without a nested stream.
            with self.lock:
                self._sent_locked(True)
            return _plain_call, (fn, args, kwargs, state.threshold, state.pid,
                                 state.prefix)
        buf = io.BytesIO()
        with self.lock:
            try:
                _ArgPickler(buf, state, self).dump(
                    (self.fn, self.args, self.kwargs, state.threshold, state.pid,
                     state.prefix))
            except BaseException:
                self._release_locked()
                self._sent_locked()
                raise
            if self.done:              # finished (pool broke) while we pickled
                self._spoil_locked()
                self._release_locked()
            self._sent_locked(True)
        return _load_call, (buf.getvalue(),)

    def _spoil_locked(self) -> None:
        for lease in self.leases:
            lease.dirty = True

    def _release_locked(self) -> None:
        leases, self.leases = self.leases, []
        if leases:
            self.state.release(leases)

    def _sent_locked(self, pickled: bool = False) -> None:
        if not self.sent:
            self.sent = True
            self.state.sent(pickled)

    def finished(self, future: Future | None) -> None:
        """Done callback: the task no longer needs its shared inputs."""
        failed = (future is None or future.cancelled()
                  or future.exception() is not None)
        with self.lock:
            if failed:
                # A worker may still map them (a traceback holds the frames;
                # a broken pool tells nothing): never reuse these copies.
                self._spoil_locked()
            self.done = True
            self._release_locked()
            self._sent_locked()
        self.state.task_done()


class ProcessPoolExecutor(concurrent.futures.ProcessPoolExecutor):
    """``concurrent.futures.ProcessPoolExecutor`` that shares numpy arrays.

    Parameters
    ----------
    max_workers, mp_context, initializer, initargs, max_tasks_per_child
        As for the standard class (``max_tasks_per_child`` needs Python 3.11).
    share_threshold : int or None
        Plain numpy arrays of at least this many bytes, anywhere in a task's
        arguments, are copied once into shared memory and reach workers as
        read-only ``sharedarray.ndarray``; arrays of this size returned by
        workers come back through shared memory as ``sharedarray.ndarray``
        owned by this process.  ``None`` turns both off.
        ``sharedarray.ndarray`` arguments always travel as handles to the
        same, writable memory.

    Functions and arguments are pickled with cloudpickle, so lambdas,
    closures and functions defined in ``__main__`` work with every start
    method.

    Lifecycle: a copy that no pending task needs any more is kept for up
    to 5 seconds, to be refilled by the next array of the same size (a
    memcpy instead of a new segment), unless a worker still maps it; then it
    is unlinked.  Everything is unlinked at ``shutdown()`` and - through the
    resource tracker - if this process is killed; workers exit by
    themselves when this process dies.  When shared memory is full, kept
    copies make room first; then an array falls back to ordinary pickling
    with a ``RuntimeWarning``.
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
        # Workers must share our tracker: start it before any worker exists.
        resource_tracker.ensure_running()
        self._sa_state = _PoolState(share_threshold)
        super().__init__(max_workers, mp_context, _worker_init,
                         (os.getpid(), initializer, initargs), **kwargs)
        self._sa_finalizer = weakref.finalize(self, _PoolState.close,
                                              self._sa_state)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; arrays travel through shared memory."""
        call = _Call(fn, args, kwargs, self._sa_state)
        self._sa_state.submitted()
        try:
            future = super().submit(call)
        except BaseException:
            call.finished(None)
            raise
        future.add_done_callback(call.finished)
        return future

    submit.__doc__ = concurrent.futures.ProcessPoolExecutor.submit.__doc__ or submit.__doc__

    def map(self, fn: Callable[..., Any], *iterables: Any, timeout: float | None = None,
            chunksize: int = 1, **kwargs: Any) -> Any:
        """As the standard ``map``; an array passed to many tasks is copied once."""
        # Counts as one more unpickled task while the tasks are submitted, so
        # a copy is not dropped between two submits when the first finishes.
        self._sa_state.submitted()
        try:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize,
                               **kwargs)
        finally:
            self._sa_state.sent(False)
            self._sa_state.task_done()

    map.__doc__ = concurrent.futures.ProcessPoolExecutor.map.__doc__ or map.__doc__

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the standard ``shutdown``; with ``wait``, also unlinks temporaries."""
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        if wait:
            self._sa_finalizer()
