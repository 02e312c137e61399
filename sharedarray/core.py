"""Named numpy arrays in POSIX shared memory or in files.

This is the Python side of the core: it turns names into paths, dtypes and
shapes into ``.npy`` headers and back, and segments (``sharedarray._ext``)
into :class:`ndarray` objects.

Segment layout
--------------
Every segment is a valid ``.npy`` file::

    +--------------------------------------------+  offset 0
    | \\x93NUMPY, version, header length          |
    | {'descr': ..., 'fortran_order': ..., ...}  |
    | #sharedarray:2:<token>:<pid>:<boot>:...    |  a Python comment: np.load
    | spaces ... '\\n'                            |  ignores it
    +--------------------------------------------+  4096 (or a multiple)
    | data                                       |
    +--------------------------------------------+

so ``np.load('/dev/shm/NAME')`` reads it.  The comment carries a random token
that identifies this very segment (a name deleted and created again gets a new
one), the owner's pid and pid namespace, the boot id, the ``/dev/shm`` it was
made in and the creation time (the codec: :mod:`sharedarray._header`).
"""

from __future__ import annotations

import errno
import fcntl
import operator
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from . import _ext, _header, _names
from ._ext import MS_ASYNC, MS_INVALIDATE, MS_SYNC, Segment
from ._header import Meta
from ._names import SHM_DIR

__all__ = [
    "ndarray", "create", "attach", "delete", "exists", "from_array", "list",
    "ArrayInfo", "Segment", "MS_ASYNC", "MS_SYNC", "MS_INVALIDATE",
]

_builtin_list = list
_NUMPY2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


class ArrayInfo(NamedTuple):
    """One entry of :func:`list`: an array this library created."""

    name: str
    dtype: np.dtype
    shape: tuple
    nbytes: int
    pid: int
    created: float
    temporary: bool
    token: str
    pid_ns: int = 0       # the creator's pid namespace (0: unknown)

    @property
    def dims(self) -> tuple:
        """The shape (the name the old SharedArray library used)."""
        return self.shape


def lock_exclusive(name: str) -> int | None:
    """An fd holding an exclusive flock on the refillable temporary ``name``,
    or None when some process maps it (or it is gone).

    Every mapping of a refillable name holds a shared flock from before it
    reads the header until it is unmapped (``_ext.attach(..., lock=True)``),
    so while the returned fd is open, no process maps the object and none
    can start to: the kernel, not a count, says the contents are unused.
    Close the fd to release it.
    """
    p = _names.parse(name)
    if not _names.is_refillable(p):
        raise ValueError(f"{name!r} is not a refillable temporary")
    try:
        fd = os.open(p.fspath, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


# ---------------------------------------------------------------- headers

def _layout(shape: Any, dtype: Any, order: str) -> tuple[np.dtype, tuple, bool]:
    """Normalise create()'s arguments the way numpy.zeros does."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects, which cannot live "
                        f"in shared memory")
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    if dt.subdtype is not None:          # ('f8', (2, 3)) appends its shape
        shape = shape + dt.shape
        dt = dt.base
    if len(shape) > _header.MAXDIMS:
        raise ValueError(f"{len(shape)} dimensions is more than numpy allows")
    if order not in ("C", "F"):
        raise ValueError(f"order must be 'C' or 'F', not {order!r}")
    return dt, shape, order == "F"


def _check_mode(mode: Any) -> int:
    """Permission bits: an int in 0..0o777 (no setuid, setgid or sticky bit)."""
    if type(mode) is int and 0 <= mode <= 0o777:
        return mode
    if type(mode) is bool or not isinstance(mode, (int, np.integer)):
        raise ValueError(f"mode must be an int of permission bits (0..0o777), "
                         f"not {mode!r}")
    mode = int(mode)
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode {mode:#o} is outside 0..0o777: only permission "
                         f"bits are allowed")
    return mode


# create() pre-faults shm segments of at least this many bytes in one call
# (MADV_POPULATE_WRITE): for large arrays that is cheaper than a fault per
# page at the first write.  Below it, the call and the page-table teardown
# it causes at unmap cost more than the faults a first write takes (which
# an array never written pays not at all): a 10-element create+delete
# takes ~30% less time without it, create+fill up to 1 MiB no more.
POPULATE_MIN = 1 << 20

# create()'s (shape, dtype, order) -> normalised layout and header dict text
_layout_cache: dict[tuple, tuple] = {}

# Callables that unlink shared memory this process keeps only for reuse (the
# executor's released copies and results); each says whether it freed any.
_space_keepers: _builtin_list[Callable[[], bool]] = []


def keep_space_for_reuse(release: Callable[[], bool]) -> None:
    """Register ``release``: called when a segment in /dev/shm cannot be
    created for want of space, to unlink what this process keeps only for
    reuse, before the creation is tried once more."""
    _space_keepers.append(release)


def _free_kept_space() -> bool:
    """Unlink the segments kept for reuse; whether any was.  A keeper that
    fails frees nothing: the creation then reports the lack of space."""
    freed = False
    for release in _space_keepers:
        try:
            freed |= release()
        except Exception:
            pass
    return freed


# ---------------------------------------------------------------- ndarray

class ndarray(np.ndarray):
    """A numpy array whose memory is a shared segment.

    Views and slices stay ``sharedarray.ndarray`` and share the memory; results
    that do not live in shared memory (``a + 1``, ``a.copy()``,
    ``copy.copy(a)``) are plain ``numpy.ndarray`` and full reductions are numpy
    scalars.  ``arr.segment`` is the :class:`Segment` that owns the mapping.

    Lifecycle: the mapping lives as long as any array or view on it.  The name
    is independent: :func:`delete` removes it, and arrays already attached stay
    valid.  Pickling sends a small handle, not the data (see
    :func:`sharedarray.by_value`).
    """

    def __array_wrap__(self, obj: np.ndarray, context: Any = None,
                       return_scalar: bool = False) -> Any:
        if return_scalar:
            return obj[()]
        if segment_of(obj) is None:        # new memory: a plain array
            if not _NUMPY2 and obj.ndim == 0:
                # numpy 1.x has no return_scalar and would hand back a 0-d
                # array; plain numpy 1.x gives a scalar there (reductions,
                # ufuncs of 0-d arrays), and so do we.
                return obj[()]
            return obj if type(obj) is np.ndarray else obj.view(np.ndarray)
        return obj if type(obj) is ndarray else obj.view(ndarray)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return _plain_if_private(super().__array_function__(func, types, args, kwargs))

    def copy(self, order: str = "C") -> np.ndarray:  # type: ignore[override]
        """A private (non-shared) copy, as a plain ``numpy.ndarray``."""
        return np.array(self.view(np.ndarray), order=order, copy=True)

    def __copy__(self) -> np.ndarray:
        return self.view(np.ndarray).copy(order="K")

    def __deepcopy__(self, memo: Any = None) -> np.ndarray:
        return self.view(np.ndarray).copy(order="K")

    def astype(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        """As ``numpy.ndarray.astype``; a new array is plain numpy."""
        return _plain_if_private(super().astype(*args, **kwargs))

    def __getitem__(self, key: Any, _getitem: Any = np.ndarray.__getitem__) -> Any:
        result = _getitem(self, key)
        # Fancy and boolean indexing copy, and numpy makes the copy our
        # subclass without calling __array_wrap__.  The base of a view of
        # shared memory is this class or the Segment (a quick test first).
        if (type(result) is ndarray and type(result.base) is not ndarray
                and segment_of(result) is None):
            return result.view(np.ndarray)
        return result

    @property
    def flat(self) -> np.flatiter:  # type: ignore[override]
        """As ``numpy.ndarray.flat``; what indexing it copies is plain numpy."""
        return self.view(np.ndarray).flat

    @flat.setter
    def flat(self, value: Any) -> None:
        np.ndarray.flat.__set__(self, value)  # type: ignore[attr-defined]

    @property
    def segment(self) -> Segment | None:
        """The segment holding this array's memory, or None if not shared."""
        return segment_of(self)


def _plain_copies(name: str) -> Any:
    """Wrap ``numpy.ndarray.<name>`` so that a copy it returns is plain numpy."""
    method = getattr(np.ndarray, name)

    def wrapper(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        return _plain_if_private(method(self, *args, **kwargs))

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


# Methods that can return a new (private) array of the subclass without going
# through __array_wrap__; the views they return stay sharedarray.ndarray.
for _name in ("take", "repeat", "compress", "reshape", "ravel", "flatten",
              "argsort", "argpartition", "byteswap", "dot", "choose",
              "searchsorted", "nonzero"):
    setattr(ndarray, _name, _plain_copies(_name))
del _name


def segment_of(arr: Any) -> Segment | None:
    """The :class:`Segment` whose memory ``arr`` uses, or None.

    Follows the base chain through arrays, memoryviews and objects that
    export an array interface with a ``base`` (``as_strided`` makes those).
    """
    base = arr
    for _ in range(64):
        if type(base) is Segment:
            return base
        if type(base) is memoryview:
            base = base.obj
        elif isinstance(base, np.ndarray) or hasattr(base, "__array_interface__"):
            base = getattr(base, "base", None)
        else:
            return None
    return None


def _plain_if_private(result: Any) -> Any:
    if type(result) is ndarray:
        return result if segment_of(result) is not None else result.view(np.ndarray)
    if type(result) in (tuple, _builtin_list):
        return type(result)(_plain_if_private(r) for r in result)
    return result


def view(seg: Segment, offset: int, shape: tuple, strides: tuple | None,
         dtype: np.dtype, fortran: bool = False, writeable: bool = True) -> ndarray:
    """An :class:`ndarray` over ``seg`` whose base is ``seg`` itself."""
    # numpy keeps the Segment as the array's base (and, as for any buffer
    # object, drops its buffer export at once).  That reference is enough: a
    # Segment unmaps only when it dies.  One numpy call, not frombuffer's two
    # objects, on the path of every attach and every unpickled handle.
    arr = np.ndarray.__new__(ndarray, shape, dtype, seg, offset, strides,
                             "F" if fortran else "C")
    if not writeable and arr.flags.writeable:
        arr.flags.writeable = False
    return arr


_new_array = np.ndarray.__new__


def wrap(seg: Segment, writeable: bool = True) -> ndarray:
    """The whole array a segment holds."""
    m = seg.meta
    return view(seg, m.offset, m.shape, None, m.dtype, m.fortran, writeable)


# ---------------------------------------------------------------- create / attach

def _no_space(exc: OSError, name: str, p: _names.Path, size: int,
              temporary: bool = False) -> OSError:
    try:
        st = os.statvfs(p.dir)
        free = st.f_bavail * st.f_frsize
        where = f"{p.dir} has {free:,} bytes free"
    except OSError:
        where = f"{p.dir} is full"
    if p.kind != _ext.KIND_SHM:
        hint = "free space on that file system"
    elif temporary:      # share() and the executor cannot take a file:// name
        hint = "mount a larger /dev/shm (docker run --shm-size=...)"
    else:
        hint = "mount a larger /dev/shm (docker run --shm-size=...) or use a file:// name"
    return OSError(errno.ENOSPC, f"cannot create {name!r}: the array needs "
                   f"{size:,} bytes but {where}; {hint}", name)


def storage_order(src: np.ndarray) -> str:
    """The order a segment keeps a copy of ``src`` in: "F" only for arrays
    that are Fortran- and not C-contiguous."""
    return "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"


def segment_contents(array: Any) -> tuple[np.ndarray, str, memoryview | None]:
    """``array`` as numpy, its :func:`storage_order`, and its bytes in that
    order for ``create_segment(data=...)`` (a view when contiguous; None
    when there are none)."""
    src = np.asarray(array)
    order = storage_order(src)
    data = None
    if src.size and src.dtype.itemsize and not src.dtype.hasobject:
        data = memoryview(src.ravel(order=order).view(np.uint8))
    return src, order, data


def create_segment(name: str, shape: Any, dtype: Any = float, *, order: str = "C",
                   mode: int = 0o600, temporary: bool = False,
                   owner: int | None = None, data: Any = None) -> Segment:
    """Create a segment (the mechanism behind :func:`create`).

    ``data``, if given, is a bytes-like object with the array's bytes in the
    segment's order; it is copied in before the name appears, so no other
    process can attach the array before it holds its contents.
    """
    p = _names.parse(name)
    mode = _check_mode(mode)
    key = (shape, dtype, order)
    try:
        dt, shape, fortran, nbytes, head, aligned = _layout_cache[key]
    except (KeyError, TypeError):     # new, or unhashable (a list shape)
        dt, shape, fortran = _layout(shape, dtype, order)
        nbytes = dt.itemsize
        for n in shape:
            nbytes *= n
        head = _header.header_dict(dt, shape, fortran)
        aligned = _header.aligned_flags(dt)
        # Structured dtypes compare equal across align/metadata: not cached.
        if dt.names is None and dt.metadata is None and not isinstance(dtype, np.dtype):
            try:
                if len(_layout_cache) > 256:
                    _layout_cache.clear()
                _layout_cache[key] = (dt, shape, fortran, nbytes, head, aligned)
            except TypeError:
                pass
    token = f"{random.getrandbits(64):016x}"
    me = os.getpid()
    pid = me if owner is None else owner
    header = _header.encode_new(head, token, pid, temporary, aligned, name)
    size = len(header) + nbytes
    if size > sys.maxsize:
        raise ValueError(f"cannot create {name!r}: {nbytes} bytes is too large")
    tmp = _names.staging_path(p.dir, token, me)
    shm = p.kind == _ext.KIND_SHM
    for attempt in (0, 1):
        try:
            # Pre-fault large shm segments (fallocate already allocated the
            # pages); never a file on disk, where populating would read the
            # whole file in.
            seg = _ext.create(p.canon, p.path, p.kind, size, header, mode,
                              shm and size >= POPULATE_MIN,
                              p.fspath, p.dir, tmp, data)
            break
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if not (attempt == 0 and shm and _free_kept_space()):
                raise _no_space(exc, name, p, size, temporary) from None
    seg.meta = Meta(dt, shape, fortran, len(header), nbytes, token, pid,
                    _names.BOOT_ID, time.time(), temporary, _names.SHM_DEV,
                    _names.PID_NS)
    return seg


def temporary_header(dt: np.dtype, shape: tuple, fortran: bool, pid: int,
                     name: str) -> tuple[bytes, str]:
    """The header of a temporary owned by ``pid`` holding ``dt``/``shape``
    in that order, with a new token, and the token (``ValueError`` for a
    header over the limit)."""
    token = f"{random.getrandbits(64):016x}"
    return _header.encode_new(_header.header_dict(dt, shape, fortran), token, pid,
                              True, _header.aligned_flags(dt), name), token


def refill_segment(seg: Segment, array: np.ndarray, populate: bool = True) -> bool:
    """Make the temporary ``seg`` hold a copy of ``array`` instead, in place.

    The segment keeps its name and size and gets a new token, so a handle
    to its old contents raises ``StaleHandleError`` rather than show the new
    ones.  Returns False, changing nothing, unless the new header and data
    fill the segment exactly.  The caller guarantees that no process maps
    the old contents any more: this overwrites them.  ``populate=False``
    says this process's mapping already has every page (an earlier refill).
    """
    src = np.asarray(array)
    fortran, dt, shape = storage_order(src) == "F", src.dtype, src.shape
    if seg.readonly or seg.meta is None or dt.hasobject:
        return False
    try:
        header, token = temporary_header(dt, shape, fortran, seg.meta.pid, seg.name)
    except ValueError:
        return False
    if len(header) + src.nbytes != seg.size:
        return False
    # The new header first: from now on, a handle to the old contents
    # attaching this name fails on the token instead of reading new data.
    view(seg, 0, (len(header),), None, np.dtype(np.uint8))[...] = \
        np.frombuffer(header, np.uint8)
    # One madvise maps the pages; a fault per page costs several times
    # the copy itself on a virtual machine.
    if populate:
        seg.populate()
    np.copyto(view(seg, len(header), shape, None, dt, fortran), src, casting="no")
    seg.meta = Meta(dt, shape, fortran, len(header), src.nbytes, token,
                    seg.meta.pid, _names.BOOT_ID, time.time(), True,
                    _names.SHM_DEV, _names.PID_NS)
    return True


def attach_segment(name: str, ro: bool = False, lock: bool | None = None) -> Segment:
    """Map an existing segment and validate its header (behind :func:`attach`).

    A refillable temporary's mapping holds a shared flock (see
    :func:`lock_exclusive`); ``lock=False`` maps one without it, for a
    process that rewrites it only by handing it on once it no longer maps
    it (the executor's parent and its results).
    """
    p = _names.parse(name)
    refillable = p.refillable
    try:
        seg, text, offset, version = _ext.attach(p.canon, p.path, p.kind, ro, False,
                                                 refillable if lock is None else lock)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EISDIR) and os.path.isdir(p.fspath):
            # shm_open reports a directory as EINVAL
            raise IsADirectoryError(errno.EISDIR, f"{name!r} is a directory, "
                                    f"not an array", name) from None
        raise
    if text is None:         # validated at an earlier attach of this object
        return seg
    seg = _checked(seg, text, offset, version, name)
    # Headers this library writes never change once published, except a
    # refillable temporary's (rewritten under the flock, never cached):
    # the C core may skip reading this object's header from now on.  Not
    # for headers written by others (np.save may rewrite one in place) or
    # for files (their timestamps may be too coarse to tell writes apart).
    if seg.meta.token is not None and not refillable and p.kind == _ext.KIND_SHM:
        _ext.remember(seg)
    return seg


def attach_fd_segment(name: str, fd: int, ro: bool = False) -> Segment:
    """Map the object behind the open ``fd`` (its name may be gone) and
    validate its header; ``name`` is its canonical name.  ``fd`` stays open.
    A refillable temporary's mapping holds a shared flock, as with
    :func:`attach_segment`."""
    seg, text, offset, version = _ext.attach_fd(name, fd, ro,
                                                _names.is_refillable(_names.parse(name)))
    return _checked(seg, text, offset, version, name)


def _checked(seg: Segment, text: bytes, offset: int, version: int,
             name: str) -> Segment:
    meta = _header.decode(text, offset, name, version)
    if offset + meta.nbytes > seg.size:
        raise ValueError(f"{name!r} is truncated or corrupt: its header describes "
                         f"{meta.nbytes:,} bytes of data at offset {offset} but the "
                         f"object holds {seg.size:,} bytes")
    seg.meta = meta
    return seg


def create(name: str, shape: Any, dtype: Any = float, *, order: str = "C",
           mode: int = 0o600) -> ndarray:
    """Create a new zero-filled array in shared memory.

    Parameters
    ----------
    name : str
        ``"name"`` or ``"shm://name"`` for POSIX shared memory, ``"file://path"``
        for a file.
    shape, dtype, order
        As for ``numpy.zeros``.
    mode : int
        Permission bits of the new object (umask applies).

    Returns
    -------
    ndarray
        The new array, writable.

    Raises
    ------
    FileExistsError
        The name exists.
    OSError
        ``errno.ENOSPC`` when the space cannot be reserved; nothing is left behind.
    ValueError, TypeError
        A bad name, shape or dtype (object dtypes are refused).
    """
    return wrap(create_segment(name, shape, dtype, order=order, mode=mode))


def attach(name: str, ro: bool = False) -> ndarray:
    """Map an existing array.

    Parameters
    ----------
    name : str
        As for :func:`create`; any ``.npy`` without Python objects attaches.
    ro : bool
        Map read-only: writes raise numpy's read-only ``ValueError``.

    Raises
    ------
    FileNotFoundError
        No such name.
    PermissionError
        The object's permissions forbid it.
    ValueError
        The object is not a valid ``.npy`` array, or is truncated or corrupt.
    """
    seg = attach_segment(name, ro)
    m = seg.meta
    # view()'s one numpy call, inline: this is the hot path.  A read-only
    # segment exports a read-only buffer, so numpy makes the array read-only.
    return _new_array(ndarray, m.shape, m.dtype, seg, m.offset, None,
                      "F" if m.fortran else "C")


def delete(name: str) -> None:
    """Remove a name.  Attached arrays stay valid; ``FileNotFoundError`` if absent."""
    p = _names.parse(name)
    _ext.unlink(name, p.path, p.kind)


def exists(name: str) -> bool:
    """Whether ``name`` exists (whatever it holds)."""
    p = _names.parse(name)
    try:
        _ext.stat(name, p.path, p.kind)
    except FileNotFoundError:
        return False
    except OSError:       # EACCES, ELOOP (a symlink): the name is taken
        return True
    return True


def from_array(name: str, array: Any, *, mode: int = 0o600) -> ndarray:
    """Create ``name`` holding a copy of ``array`` (dtype, shape and C/F order kept)."""
    # The C core writes the bytes in before publishing the name, so attaching
    # processes never see the zeros that a copy after create() would show.
    src, order, data = segment_contents(array)
    return wrap(create_segment(name, src.shape, src.dtype, order=order, mode=mode,
                               data=data))


def read_meta(path: str, name: str, complete: bool = True) -> Meta | None:
    """What the header of the object at ``path`` says, if it is an array
    this library made (None otherwise: foreign, corrupt, unreadable, or -
    unless ``complete`` is False - shorter than its header says)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        version, start, hlen = _header.read_preamble(os.pread(fd, 12, 0), size, name)
        text = os.pread(fd, hlen, start)
        m = _header.decode(text.rstrip(b" \n\0"), start + hlen, name, version)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if m.token is None or (complete and m.offset + m.nbytes > size):
        return None
    return m


def _read_info(path: str, name: str) -> ArrayInfo | None:
    """An :class:`ArrayInfo` if ``path`` holds an array this library made."""
    m = read_meta(path, name)
    if m is None or m.token is None:
        return None
    return ArrayInfo(name, m.dtype, m.shape, m.nbytes, m.pid, m.created,
                     m.temporary, m.token, m.pid_ns)


def list() -> _builtin_list[ArrayInfo]:  # noqa: A001 - the old library's name
    """The arrays in ``/dev/shm`` that this library created (Linux only).

    Foreign segments and anything unreadable are skipped.
    """
    if not os.path.isdir(SHM_DIR):
        raise OSError(errno.ENOSYS, "list() needs /dev/shm (Linux)")
    out = []
    with os.scandir(SHM_DIR) as it:
        for entry in it:
            if not entry.is_file(follow_symlinks=False):
                continue
            info = _read_info(entry.path, entry.name)
            if info is not None:
                out.append(info)
    out.sort(key=lambda i: i.name)
    return out
