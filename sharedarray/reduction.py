"""Pickling shared arrays as handles, and process-owned temporaries.

A :class:`sharedarray.ndarray` (or any view of one) pickles as a handle::

    (name, token, boot, offset, shape, strides, dtype-or-None, writeable, shm-dev)

of a few hundred bytes at most, whatever the array's size.  Unpickling it in
any process on the machine attaches the segment (once per process: a weak
attach cache) and rebuilds the exact view, after checking that the view lies
inside the segment's data.  The reducer is registered in :mod:`copyreg`, so
pickle, multiprocessing, concurrent.futures, cloudpickle and joblib/loky all
use it.

The token identifies one segment: a name that was deleted and created again
has a different one, and the handle then raises :class:`StaleHandleError`
rather than show other data (a ``.npy`` this library did not write is
identified by its device, inode, size and header instead).  The boot id and
the device of ``/dev/shm`` do the same for handles that come from another
machine, an earlier boot or another container (:class:`ForeignHostError`).

Handles in flight: for :mod:`multiprocessing`'s own pickler (queues, pipes,
pools, managers, executors) a temporary travels with a descriptor of its
memory (``multiprocessing.reduction.DupFd``), so it arrives even when the
sender drops it - and its name is unlinked - before the receiver unpickles it.

:func:`share` makes an anonymous copy owned by this process: the name is
unlinked when the last array on it dies here, at exit, or - through the
standard library's resource tracker - when the process is killed.
"""

from __future__ import annotations

import contextlib
import contextvars
import copyreg
import errno
import functools
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _ext, _header, _names
from ._names import BOOT_ID, SHM_DEV
from .core import (
    Segment,
    attach_fd_segment,
    attach_segment,
    create_segment,
    ndarray,
    segment_contents,
    segment_of,
    view,
)

__all__ = ["StaleHandleError", "ForeignHostError", "by_value", "share",
           "init_reductions", "reduce_ndarray", "rebuild_ndarray"]

# Descriptors kept for segments that arrived as one (their name may be
# gone), so that this process can pass them on; beyond this many, such
# segments are passed on by name only (the fd limit is often 1024).
_MAX_KEPT_FDS = 256


class StaleHandleError(LookupError):
    """A handle's name now holds a different array (deleted and re-created)."""


class ForeignHostError(LookupError):
    """A handle was made on another machine, before a reboot, or in another
    container (another ``/dev/shm``)."""


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


def _ident(seg: Segment) -> str:
    """What identifies the array in ``seg``: its header's token, or for a
    ``.npy`` this library did not write, its device, inode, size and a
    digest of its header.  (Not its mtime: every write through a shared
    mapping changes that, and would make every handle to the file stale.)"""
    meta = seg.meta
    if meta.token is not None:
        return meta.token
    dev, ino, size, _ = seg.identity
    return f"npy:{dev:x}:{ino:x}:{size:x}:{meta.digest:08x}"


def _cached(name: str, token: str | None) -> Segment | None:
    ref = _cache.get(name)
    if ref is None:
        return None
    seg = ref()
    if seg is None or (seg.meta.token != token and _ident(seg) != token):
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
            and _ident(old) == _ident(seg)):
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
    rv = rebuild_ndarray, handle_of(arr, seg)
    hook = handle_hook.get()
    return rv if hook is None else hook(arr, rv)


def handle_of(arr: np.ndarray, seg: Segment | None = None,
              remember: bool = True) -> tuple:
    """The handle (arguments of :func:`rebuild_ndarray`) of an array on a
    segment.  ``remember`` puts the segment in this process's attach cache,
    so that the handle unpickled here reuses this very mapping."""
    if seg is None:
        seg = segment_of(arr)
        if seg is None:
            raise ValueError("the array is not in shared memory")
    if remember:
        _remember(seg)
    meta = seg.meta
    offset = _address(arr) - seg.addr
    # The receiver rebuilds with its own header's dtype unless told otherwise:
    # a view may have another dtype, or one that == the segment's but is not
    # the same (aligned flag, metadata, which a .npy header does not keep).
    dtype = _dtype_for_handle(arr.dtype, meta.dtype)
    token = meta.token if meta.token is not None else _ident(seg)
    # Where the memory is: the device of the /dev/shm it is in (a file's
    # device says nothing of that).
    where = None if _names.is_file(seg.name) else SHM_DEV
    return (seg.name, token, meta.boot or BOOT_ID, offset, arr.shape, arr.strides,
            dtype, arr.flags.writeable, where)


def _gone(name: str) -> FileNotFoundError:
    """The error for a handle whose name no longer exists: what happened,
    and what to do about it."""
    m = _names.GENERATED_RE.match(name)
    if m:
        what = (f"shared array {name!r} is gone: it was a temporary of process "
                f"{m.group(1)} (share() or an executor), unlinked when that "
                f"process dropped its last reference to it or exited, before "
                f"this handle was loaded. multiprocessing's queues, pipes, pools "
                f"and managers keep such arrays alive in flight; elsewhere (a "
                f"pickle stored in a file, another transport) keep the array "
                f"alive in the sender until the receiver has it, make a named "
                f"array with sharedarray.create()/from_array(), or pickle the "
                f"data itself inside sharedarray.by_value()")
    else:
        what = (f"shared array {name!r} no longer exists: it was deleted after "
                f"this handle was made (a handle is a reference, not the data; "
                f"to store the data, pickle it inside sharedarray.by_value())")
    return FileNotFoundError(errno.ENOENT, what, name)


def _check_place(name: str, boot: str | None, where: int | None) -> None:
    if boot is not None and boot != BOOT_ID:
        raise ForeignHostError(
            f"shared array {name!r} was pickled on another machine or before a "
            f"reboot (boot id {boot}, here {BOOT_ID}); its memory is not here")
    if where is not None and where != SHM_DEV:
        raise ForeignHostError(
            f"shared array {name!r} was pickled in another container on this "
            f"machine: it lives in another /dev/shm (device {where:#x}, here "
            f"{SHM_DEV:#x}); share the IPC namespace (docker run --ipc=host or "
            f"--ipc=container:...) or send the data with sharedarray.by_value()")


def _segment_for(name: str, token: str | None, boot: str | None,
                 writeable: bool, where: int | None = None,
                 lock: bool | None = None) -> Segment:
    _check_place(name, boot, where)
    seg = _cached(name, token)
    if seg is not None and (seg.readonly is False or not writeable):
        return seg
    try:
        try:
            seg = attach_segment(name, ro=not writeable, lock=lock)
        except PermissionError:
            if not writeable:
                raise
            seg = attach_segment(name, ro=True, lock=lock)
    except FileNotFoundError:
        raise _gone(name) from None
    _check_token(seg, name, token)
    _remember(seg)
    return seg


def _check_token(seg: Segment, name: str, token: str | None) -> None:
    if seg.meta.token != token and _ident(seg) != token:
        raise StaleHandleError(
            f"shared array {name!r} was deleted and created again (or, for a "
            f"plain .npy file, replaced) since this handle was made; the "
            f"handle refers to memory that is gone")


# dtypes a handle named and that passed check_dtype (keys: dtype objects)
_valid_dtypes: dict[np.dtype, bool] = {}


def _checked_view(seg: Segment, offset: Any, shape: Any, strides: Any,
                  dtype: Any, writeable: Any) -> ndarray:
    """The view a handle describes, once it is known to lie inside the
    segment's data: a forged or corrupt handle raises ``ValueError``
    instead of reaching numpy (whose own bounds check can overflow)."""
    meta = seg.meta
    name = seg.name
    if dtype is None:
        dt = meta.dtype
    elif isinstance(dtype, np.dtype):
        dt = dtype
        if dt not in _valid_dtypes:
            _header.check_dtype(dt, f"handle to {name!r}")
            if len(_valid_dtypes) > 256:
                _valid_dtypes.clear()
            _valid_dtypes[dt] = True
    else:
        raise ValueError(f"handle to {name!r}: dtype {dtype!r} is not a numpy dtype")
    if (type(offset) is not int or type(shape) is not tuple
            or len(shape) > _header.MAXDIMS
            or not (strides is None or (type(strides) is tuple
                                        and len(strides) == len(shape)))):
        raise ValueError(f"handle to {name!r}: malformed offset/shape/strides")
    itemsize = dt.itemsize
    lo = hi = offset
    empty = False
    if strides is None:
        count = 1
        for n in shape:
            if type(n) is not int or n < 0:
                raise ValueError(f"handle to {name!r}: bad shape {shape!r}")
            count *= n
        empty = count == 0
        hi += count * itemsize
    else:
        for n, s in zip(shape, strides, strict=False):
            if type(n) is not int or n < 0 or type(s) is not int:
                raise ValueError(f"handle to {name!r}: bad shape {shape!r} or "
                                 f"strides {strides!r}")
            if n == 0:
                empty = True
            elif s < 0:
                lo += s * (n - 1)
            else:
                hi += s * (n - 1)
        hi += itemsize
    start, end = meta.offset, meta.offset + meta.nbytes
    if empty:
        lo = hi = offset
    if not (start <= lo and hi <= end and lo <= hi):
        raise ValueError(
            f"handle to {name!r}: the view it describes (bytes {lo} to {hi}) "
            f"is outside the array's data (bytes {start} to {end}); the handle "
            f"is corrupt or forged")
    return view(seg, offset, shape, strides, dt, False,
                bool(writeable) and not seg.readonly)


def rebuild_ndarray(name: str, token: str | None, boot: str | None, offset: int,
                    shape: tuple, strides: tuple, dtype: np.dtype | None,
                    writeable: bool, where: int | None = None) -> ndarray:
    """Unpickle a handle: attach (cached) and rebuild the exact view."""
    seg = _segment_for(name, token, boot, writeable, where)
    return _checked_view(seg, offset, shape, strides, dtype, writeable)


def attach_owned(name: str, token: str | None, boot: str | None, offset: int,
                 shape: tuple, strides: tuple | None, dtype: np.dtype | None,
                 writeable: bool, where: int | None = None, *,
                 retire: Any = None) -> ndarray:
    """Unpickle a handle whose segment is handed over to this process.

    The executor's workers send results this way: the worker registered the
    name with the shared resource tracker, and from now on this process owns
    it: it unlinks it when the last array on it dies, or, with ``retire``,
    calls ``retire(size, name, unregister=...)`` once this process no
    longer maps it (see :func:`own`).  This process's mapping holds no
    flock: nothing rewrites the segment before that call.
    """
    seg = _segment_for(name, token, boot, True, where, lock=False)
    own(seg, registered=True,
        release=None if retire is None else functools.partial(retire, seg.size))
    return _checked_view(seg, offset, shape, strides, dtype, writeable)


def handle_written(name: str, token: str, offset: int, shape: tuple,
                   strides: tuple, dtype: np.dtype) -> tuple:
    """The handle of a whole array that this process wrote into the shm
    temporary ``name`` (data at ``offset``, header token ``token``) through
    a descriptor, without mapping it."""
    return (name, token, BOOT_ID, offset, shape, strides,
            _dtype_for_handle(dtype, dtype), True, SHM_DEV)


# ---------------------------------------------------------------- in flight

# Segment -> the descriptor it arrived with (see _MAX_KEPT_FDS).
_kept_fds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _keep_fd(seg: Segment, fd: int) -> bool:
    """Keep ``fd`` open as long as ``seg`` lives; False if at the limit."""
    if seg in _kept_fds or len(_kept_fds) >= _MAX_KEPT_FDS:
        return False
    os.set_inheritable(fd, False)
    _kept_fds[seg] = fd
    weakref.finalize(seg, os.close, fd)
    return True


def _fd_of(seg: Segment) -> int | None:
    """A new descriptor of ``seg``'s object, or None: a dup of the one it
    arrived with, else the name opened again, if it still names this very
    object."""
    kept = _kept_fds.get(seg)
    if kept is not None:
        return os.dup(kept)
    path = _names.fs_path(seg.name)
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | (os.O_RDONLY if seg.readonly else os.O_RDWR))
    except PermissionError:
        try:
            fd = os.open(path, flags | os.O_RDONLY)
        except OSError:
            return None
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if (st.st_dev, st.st_ino) != seg.identity[:2]:
        os.close(fd)          # the name now holds another object
        return None
    return fd


def reduce_in_flight(arr: ndarray) -> tuple:
    """multiprocessing's reducer: :func:`reduce_ndarray`, plus, for a
    temporary, a descriptor of its memory for the receiver.

    The descriptor is dup()ed into multiprocessing's resource sharer, which
    hands it to the first process that unpickles the handle; so the memory
    outlives its name for as long as the message is in flight.  (A message
    that is never unpickled keeps its dup until this process exits.)
    """
    from multiprocessing import context as mp_context
    from multiprocessing import reduction as mp_reduction
    rv = reduce_ndarray(arr)
    if rv[0] is not rebuild_ndarray or not mp_reduction.HAVE_SEND_HANDLE:
        return rv
    seg = segment_of(arr)
    if (seg is None or not seg.meta.temporary
            or mp_context.get_spawning_popen() is not None):
        # Process arguments are pickled while the parent holds them.
        return rv
    fd = _fd_of(seg)
    if fd is None:
        return rv
    try:
        dup = mp_reduction.DupFd(fd)
    except Exception:
        return rv
    finally:
        os.close(fd)
    return rebuild_in_flight, (dup,) + rv[1]


def rebuild_in_flight(dup: Any, name: str, token: str | None, boot: str | None,
                      offset: int, shape: tuple, strides: tuple,
                      dtype: np.dtype | None, writeable: bool,
                      where: int | None = None) -> ndarray:
    """Unpickle what :func:`reduce_in_flight` made: map the descriptor that
    came with the handle (the name may be gone), or fall back to the name."""
    try:
        fd = dup.detach()
    except Exception:          # the sender is gone, or this is a second load
        fd = -1
    if fd < 0:
        return rebuild_ndarray(name, token, boot, offset, shape, strides, dtype,
                               writeable, where)
    try:
        seg = _cached(name, token)
        if seg is None or (seg.readonly and writeable):
            try:
                seg = attach_fd_segment(name, fd, ro=not writeable)
            except PermissionError:
                seg = attach_fd_segment(name, fd, ro=True)
            _check_token(seg, name, token)
            _remember(seg)
            if _keep_fd(seg, fd):
                fd = -1
        return _checked_view(seg, offset, shape, strides, dtype, writeable)
    finally:
        if fd >= 0:
            os.close(fd)


# ---------------------------------------------------------------- share()

# (name, serial) of each owned segment whose finalizer has not finished:
# its name is not an orphan to sweep (see owners_pending).  Changed only by
# single set operations, atomic: finalizers run anywhere, inside locks too.
_pending: set[tuple[str, int]] = set()
_serials = itertools.count()


def _release(name: str, pid: int, unregister: Any, discard: Any = _names.discard,
             getpid: Any = os.getpid, serial: int = -1,
             pending: set = _pending) -> None:
    """Finalizer of an owned segment: unlink it and tell the tracker.

    Bound arguments only: finalizers may run at interpreter shutdown.  A
    forked child inherits the finalizer but must not act on it.
    """
    try:
        if getpid() == pid:
            discard(name, unregister=unregister)
    finally:
        pending.discard((name, serial))


def owners_pending() -> set[str]:
    """The names of the segments this process owns that it has not released
    yet (released: unlinked, or handed on, and dropped from the tracker),
    whether or not the segment object still lives."""
    return {name for name, _ in list(_pending)}


# Segment -> (finalizer, pid) for the segments this process owns.  own() is
# idempotent: a second finalizer would unregister the name a second time, and
# the resource tracker answers that with a KeyError traceback on stderr.
_owned: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_owned_lock = threading.Lock()


def _tracker_lock() -> Any:
    """The standard resource tracker's lock (None if it has none, or nobody
    imported the tracker: then nobody can hold its lock)."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    return getattr(getattr(tracker, "_resource_tracker", None), "_lock", None)


def _before_fork() -> None:
    # No thread may hold the tracker's lock across a fork: a child would
    # inherit it held, and hang at its first register() (Python up to 3.13
    # does not reset it).  Taking it here waits for a call in progress.
    lock = _tracker_lock()
    if lock is not None:
        lock.acquire()


def _after_fork_in_parent() -> None:
    lock = _tracker_lock()
    if lock is not None:
        lock.release()


def _after_fork_in_child() -> None:
    global _owned_lock
    _owned_lock = threading.Lock()     # another thread may have held it
    _after_fork_in_parent()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class _Unmapped:
    """A marker a segment holds until it is unmapped (``Segment.after_unmap``)."""

    __slots__ = ("__weakref__",)


def own(seg: Segment, registered: bool = False,
        release: Any = None) -> weakref.finalize:
    """Make this process the owner of ``seg``: unlink it when it dies here.

    ``registered`` says the tracker already knows the name (this process or
    a worker registered it before creating it).  ``release``, if given, is
    called instead of unlinking, as ``release(name, unregister=...)``, once
    this process has unmapped the segment and dropped any lock on it (not
    merely once the segment object dies: its weak references die before
    the unmap).  Returns the finalizer; calling it releases the segment at
    once.  Owning a segment this process already owns returns the existing
    finalizer.
    """
    pid = os.getpid()
    with _owned_lock:
        entry = _owned.get(seg)
        if entry is not None and entry[0].alive and entry[1] == pid:
            return entry[0]
        tracker = _names.tracker()
        if not registered:
            tracker.register(_names.shm_path(seg.name), _names.TRACKER_TYPE)
        watched: Any = seg
        how: Any = _names.discard
        if release is not None:
            watched = seg.after_unmap = _Unmapped()
            how = release
        serial = next(_serials)
        _pending.add((seg.name, serial))
        fin = weakref.finalize(watched, _release, seg.name, pid, tracker.unregister, how,
                               os.getpid, serial)
        _owned[seg] = (fin, pid)
        return fin


def owned_here(seg: Segment) -> bool:
    """Whether this process owns ``seg`` (will unlink its name)."""
    entry = _owned.get(seg)
    return entry is not None and entry[0].alive and entry[1] == os.getpid()


def share_segment(array: np.ndarray, owner: int | None = None,
                  name: str | None = None, refillable: bool = False) -> Segment:
    """Copy ``array`` into a new temporary segment registered with the tracker.

    The name is registered *before* the segment exists, so a kill at any
    point leaves nothing the tracker does not know about.
    """
    # The C core write()s the bytes in: one copy, no zero-fill, no faults.
    # Without bytes (empty arrays) there is nothing to copy.
    src, order, data = segment_contents(array)
    name = _names.generate(owner, refillable) if name is None else name
    path = _names.shm_path(name)
    tracker = _names.tracker()
    tracker.register(path, _names.TRACKER_TYPE)
    try:
        return create_segment(name, src.shape, src.dtype, order=order,
                              temporary=True, owner=owner, data=data)
    except BaseException:
        tracker.unregister(path, _names.TRACKER_TYPE)
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
    """Register the reducer in :mod:`copyreg`, which every pickler on the
    machine consults (idempotent).  multiprocessing's own pickler gets the
    variant that keeps temporaries alive in flight from
    :func:`register_in_flight`, once multiprocessing.reduction is imported
    (``sharedarray._hooks`` sees to it, so ``import sharedarray`` alone does
    not load multiprocessing)."""
    copyreg.pickle(ndarray, reduce_ndarray)


def register_in_flight(mp_reduction: Any) -> None:
    """Give multiprocessing's pickler :func:`reduce_in_flight` (idempotent)."""
    mp_reduction.ForkingPickler.register(ndarray, reduce_in_flight)


init_reductions()
