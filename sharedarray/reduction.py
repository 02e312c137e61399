"""Pickling shared arrays as handles, and process-owned temporaries.

A :class:`sharedarray.ndarray` (or any view of one) pickles as a handle::

    (name, token, boot, offset, shape, strides, dtype-or-None, writeable)

of a few hundred bytes at most, whatever the array's size.  Unpickling it in
any process on the machine attaches the segment (once per process: a weak
attach cache) and rebuilds the exact view.  The reducer is registered in
:mod:`copyreg`, so pickle, multiprocessing, concurrent.futures, cloudpickle and
joblib/loky all use it.

The token identifies one segment: a name that was deleted and created again
has a different one, and the handle then raises :class:`StaleHandleError`
rather than show other data.  The boot id does the same for handles that come
from another machine or an earlier boot (:class:`ForeignHostError`).

:func:`share` makes an anonymous copy owned by this process: the name is
unlinked when the last array on it dies here, at exit, or - through the
standard library's resource tracker - when the process is killed.
"""

from __future__ import annotations

import contextlib
import contextvars
import copyreg
import functools
import os
import threading
import weakref
from multiprocessing import resource_tracker
from typing import Any, Iterator

import numpy as np

from . import _ext
from .core import (BOOT_ID, Segment, attach_segment, create_segment,
                   generate_name, ndarray, segment_contents, segment_of,
                   view)

__all__ = ["StaleHandleError", "ForeignHostError", "by_value", "share",
           "init_reductions", "reduce_ndarray", "rebuild_ndarray"]

_TRACKER_TYPE = "shared_memory"   # the stdlib tracker shm_unlink()s these


class StaleHandleError(LookupError):
    """A handle's name now holds a different array (deleted and re-created)."""


class ForeignHostError(LookupError):
    """A handle was made on another machine or before a reboot."""


_by_value: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sharedarray_by_value", default=False)


@contextlib.contextmanager
def by_value() -> Iterator[None]:
    """Inside this context, shared arrays pickle as ordinary arrays (data copied).

    Use it to store arrays in a file: outside it, ``pickle.dump`` stores a
    reference to shared memory, valid only while the segment exists.
    The setting is per thread and per asyncio task.
    """
    token = _by_value.set(True)
    try:
        yield
    finally:
        _by_value.reset(token)


# A transport that knows where its messages go may wrap the handles it sends
# (sharedarray._dask does, for Dask's messages): a function (array, handle
# reduce value) -> reduce value, set for the duration of one message.
handle_hook: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "sharedarray_handle_hook", default=None)


# ---------------------------------------------------------------- attach cache

# name -> weakref to the Segment this process maps for it.  Weak: when the last
# array on a segment goes, so does the mapping.  Both pickling and unpickling
# fill it, so a handle unpickled in the process that made it reuses the mapping.
_cache: dict[str, weakref.ref] = {}


def _cached(name: str, token: str | None) -> Segment | None:
    ref = _cache.get(name)
    if ref is None:
        return None
    seg = ref()
    if seg is None or seg.meta.token != token:
        return None
    return seg


def _remember(seg: Segment) -> None:
    """Cache ``seg`` for its name, preferring a writable mapping."""
    name = seg.name
    ref = _cache.get(name)
    old = ref() if ref is not None else None
    if old is seg:
        return
    if (old is not None and seg.readonly and not old.readonly
            and old.meta.token == seg.meta.token):
        return
    _cache[name] = weakref.ref(seg, functools.partial(_forget, name))


def _forget(name: str, ref: weakref.ref) -> None:
    if _cache.get(name) is ref:
        del _cache[name]


# ---------------------------------------------------------------- reducers

def _by_value_reduce(arr: np.ndarray) -> tuple:
    # The plain view pickles through numpy's own reducer (protocol 5 buffers too).
    return np.asarray, (arr.view(np.ndarray),)


def _same_metadata(a: np.dtype, b: np.dtype) -> bool:
    if a.metadata is b.metadata:
        return True
    try:
        return bool(a.metadata == b.metadata)
    except Exception:     # metadata may hold anything, arrays included
        return False


def _identical(a: np.dtype, b: np.dtype) -> bool:
    """``a == b``, and alike in what ``==`` ignores: the aligned flag and
    metadata (of the dtype and of every field)."""
    if a is b:
        return True
    if a != b or a.isalignedstruct != b.isalignedstruct or not _same_metadata(a, b):
        return False
    if a.names is not None:
        return all(a.fields[n][1:] == b.fields[n][1:]
                   and _identical(a.fields[n][0], b.fields[n][0]) for n in a.names)
    if a.subdtype is not None:
        return _identical(a.subdtype[0], b.subdtype[0])
    return True


def _in_header(dt: np.dtype) -> bool:
    """Whether a .npy header gives back exactly ``dt``: it keeps neither
    the aligned flag of structured dtypes nor metadata."""
    if dt.isalignedstruct or dt.metadata is not None:
        return False
    if dt.names is not None:
        return all(_in_header(dt.fields[n][0]) for n in dt.names)
    if dt.subdtype is not None:
        return _in_header(dt.subdtype[0])
    return True


# id(dtype) -> (dtype, whether a handle may leave it out); the dtype is kept
# so that its id cannot be reused while the entry exists.
_header_dtypes: dict[int, tuple[np.dtype, bool]] = {}


def _dtype_for_handle(dt: np.dtype, seg_dtype: np.dtype) -> np.dtype | None:
    """None when the receiver's own header dtype is exactly ``dt``."""
    if dt is not seg_dtype and not _identical(dt, seg_dtype):
        return dt
    entry = _header_dtypes.get(id(seg_dtype))
    if entry is None or entry[0] is not seg_dtype:
        if len(_header_dtypes) >= 256:
            _header_dtypes.clear()
        entry = _header_dtypes[id(seg_dtype)] = (seg_dtype, _in_header(seg_dtype))
    return None if entry[1] else dt


def _address(arr: np.ndarray) -> int:
    """Address of ``arr``'s first element (a buffer export: cheaper than
    ``__array_interface__``)."""
    try:
        return _ext.address(arr)
    except (BufferError, TypeError, ValueError):
        return arr.__array_interface__["data"][0]


def reduce_ndarray(arr: ndarray) -> tuple:
    """copyreg reducer: a handle if the memory is in a segment, else the data."""
    if arr.size == 0:
        # Nothing to share, and no data to send: the exact dtype and shape
        # (numpy's own reducer turns non-native byte orders native under
        # pickle protocols < 5).
        return np.ndarray, (arr.shape, arr.dtype)
    if _by_value.get():
        return _by_value_reduce(arr)
    seg = segment_of(arr)
    if seg is None or seg.meta is None:
        return _by_value_reduce(arr)
    _remember(seg)
    meta = seg.meta
    offset = _address(arr) - seg.addr
    # The receiver rebuilds with its own header's dtype unless told otherwise:
    # a view may have another dtype, or one that == the segment's but is not
    # the same (aligned flag, metadata, which a .npy header does not keep).
    dtype = _dtype_for_handle(arr.dtype, meta.dtype)
    rv = rebuild_ndarray, (seg.name, meta.token, meta.boot, offset, arr.shape,
                           arr.strides, dtype, arr.flags.writeable)
    hook = handle_hook.get()
    return rv if hook is None else hook(arr, rv)


def _segment_for(name: str, token: str | None, boot: str | None,
                 writeable: bool) -> Segment:
    if boot is not None and boot != BOOT_ID:
        raise ForeignHostError(
            f"shared array {name!r} was pickled on another machine or before a "
            f"reboot (boot id {boot}, here {BOOT_ID}); its memory is not here")
    seg = _cached(name, token)
    if seg is not None and (seg.readonly is False or not writeable):
        return seg
    try:
        seg = attach_segment(name, ro=not writeable)
    except PermissionError:
        if not writeable:
            raise
        seg = attach_segment(name, ro=True)
    if seg.meta.token != token:
        raise StaleHandleError(
            f"shared array {name!r} was deleted and created again since this "
            f"handle was made; the handle refers to memory that is gone")
    _remember(seg)
    return seg


def rebuild_ndarray(name: str, token: str | None, boot: str | None, offset: int,
                    shape: tuple, strides: tuple, dtype: np.dtype | None,
                    writeable: bool) -> ndarray:
    """Unpickle a handle: attach (cached) and rebuild the exact view."""
    seg = _segment_for(name, token, boot, writeable)
    return view(seg, offset, shape, strides,
                seg.meta.dtype if dtype is None else dtype, False,
                writeable and not seg.readonly)


def attach_owned(name: str, token: str | None, boot: str | None, offset: int,
                 shape: tuple, strides: tuple | None, dtype: np.dtype | None,
                 writeable: bool) -> ndarray:
    """Unpickle a handle whose segment is handed over to this process.

    The executor's workers send results this way: the worker registered the
    name with the shared resource tracker, and from now on this process owns
    it (unlinks it when the last array on it dies).
    """
    seg = _segment_for(name, token, boot, True)
    own(seg, registered=True)
    return view(seg, offset, shape, strides,
                seg.meta.dtype if dtype is None else dtype, False, writeable)


# ---------------------------------------------------------------- share()

def _release(name: str, path: str, kind: int, pid: int,
             unlink: Any = _ext.unlink, unregister: Any = resource_tracker.unregister,
             getpid: Any = os.getpid) -> None:
    """Finalizer of an owned segment: unlink it and tell the tracker.

    Bound arguments only: finalizers may run at interpreter shutdown.  A
    forked child inherits the finalizer but must not act on it.
    """
    if getpid() != pid:
        return
    try:
        unlink(name, path, kind)
    except OSError:
        pass          # already deleted by hand
    try:
        unregister(path, _TRACKER_TYPE)
    except Exception:
        pass


# Segment -> (finalizer, pid) for the segments this process owns.  own() is
# idempotent: a second finalizer would unregister the name a second time, and
# the resource tracker answers that with a KeyError traceback on stderr.
_owned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_owned_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _owned_lock
    _owned_lock = threading.Lock()     # another thread may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def own(seg: Segment, registered: bool = False) -> weakref.finalize:
    """Make this process the owner of ``seg``: unlink it when it dies here.

    ``registered`` says the tracker already knows the name (this process or
    a worker registered it before creating it).  Returns the finalizer;
    calling it releases the segment at once.  Owning a segment this process
    already owns returns the existing finalizer.
    """
    pid = os.getpid()
    with _owned_lock:
        entry = _owned.get(seg)
        if entry is not None and entry[0].alive and entry[1] == pid:
            return entry[0]
        path = "/" + seg.name
        if not registered:
            resource_tracker.register(path, _TRACKER_TYPE)
        fin = weakref.finalize(seg, _release, seg.name, path, _ext.KIND_SHM, pid)
        _owned[seg] = (fin, pid)
        return fin


def share_segment(array: np.ndarray, owner: int | None = None,
                  name: str | None = None) -> Segment:
    """Copy ``array`` into a new temporary segment registered with the tracker.

    The name is registered *before* the segment exists, so a kill at any
    point leaves nothing the tracker does not know about.
    """
    # The C core write()s the bytes in: one copy, no zero-fill, no faults.
    # Without bytes (empty arrays) there is nothing to copy.
    src, order, data = segment_contents(array)
    name = generate_name(owner) if name is None else name
    path = "/" + name
    resource_tracker.register(path, _TRACKER_TYPE)
    try:
        return create_segment(name, src.shape, src.dtype, order=order,
                              temporary=True, owner=owner, data=data)
    except BaseException:
        resource_tracker.unregister(path, _TRACKER_TYPE)
        raise


def share(array: Any) -> ndarray:
    """An anonymous shared copy of ``array``, owned by this process.

    Its name (``sa-<pid>-<random>``) is unlinked when the last reference to it
    in this process dies, at interpreter exit, and by the standard library's
    resource tracker if this process is killed.  Other processes that attach it
    (by unpickling) never unlink it.

    Raises
    ------
    OSError
        ``ENOSPC`` when shared memory cannot hold the copy.
    TypeError
        Object dtypes.
    """
    seg = share_segment(array)
    own(seg, registered=True)
    _remember(seg)
    m = seg.meta
    return view(seg, m.offset, m.shape, None, m.dtype, m.fortran)


# ---------------------------------------------------------------- registration

def init_reductions() -> None:
    """Register the reducers in :mod:`copyreg` (idempotent)."""
    copyreg.pickle(ndarray, reduce_ndarray)


init_reductions()
