"""Shared arrays in ``dask.distributed`` and ``dask.array``.

Activated by :mod:`sharedarray._hooks` in every process that has imported both
this library and Dask; nothing to call.  What it does:

Where a shared array may travel as a handle
    Every Dask comm starts with a handshake in which each side sends a dict
    (``Comm.handshake_info``); Dask hands the peer's dict to serializers as
    ``context["recipient"]``.  We add ``{"sharedarray": {"boot", "shm"}}`` to
    it: the boot id and the identity of the tmpfs mounted on ``/dev/shm``
    (its device number: another container, or a private mount namespace, has
    another one even on the same kernel).  A recipient that announces the same
    pair maps the same segments; one that announces another pair cannot; one
    that announces nothing (a process without this integration, e.g. a worker
    where the package is not installed) is unknown.

Messages (``distributed.protocol.dumps``, wrapped)
    To a recipient on another host or /dev/shm, a message pickles shared
    arrays by value (:func:`sharedarray.by_value`).  Otherwise they pickle as
    handles whose rebuilding never raises: :func:`attach_or_defer` returns an
    :class:`UnreachableArray` when the segment cannot be attached (deleted
    meanwhile, foreign, stale), so the message - a task's ``run_spec``, a
    scatter - still arrives, the worker's comm stays up, and the task that
    uses the array fails with the original error.

``dask_serialize`` / ``dask_deserialize`` for :class:`sharedarray.ndarray`
    Dask's own numpy serializer would match the subclass and send the data
    (scatter, task results, worker-to-worker transfers).  Ours sends the
    handle (~200 bytes) unless the recipient is known to be elsewhere, and
    then the data through Dask's numpy serializer (zero-copy frames; the
    receiver gets a plain numpy array).  Without a context (a direct call of
    ``distributed.protocol.serialize``) it sends the handle, as pickle does.

Scatter through the scheduler (``Scheduler.scatter``, wrapped)
    The scheduler forwards scattered data unopened, so the client's handle
    (made for the scheduler) could reach a worker elsewhere: the scheduler
    opens our handles and lets the forwarding serialize them per worker.

Spilling (``distributed.spill``, wrapped)
    Spilling is storage: shared arrays spill by value, so a spilled array
    survives its segment (a worker-owned ``share()`` is unlinked when the
    worker drops it).  The small :func:`sizeof` makes that rare.

``dask.sizeof`` (:func:`sizeof`) and ``dask.array`` (:func:`to_dask`).
"""

from __future__ import annotations

import copy
import pickle
import sys
from typing import Any

import numpy as np

from ._names import BOOT_ID, SHM_DEV
from .core import ndarray, segment_of
from .reduction import (
    by_value,
    handle_hook,
    rebuild_ndarray,
    reduce_ndarray,
)

__all__ = ["IDENTITY", "UnreachableArray", "activate", "attach_or_defer",
           "recipient_shares_shm", "register_sizeof", "sizeof", "to_dask"]


#: What this process announces in its Dask handshakes: the machine and the
#: /dev/shm it maps (as handles carry them).
IDENTITY: dict[str, str | None] = {"boot": BOOT_ID, "shm": f"{SHM_DEV:x}" if SHM_DEV else None}
_KEY = "sharedarray"


def recipient_shares_shm(context: Any) -> bool | None:
    """True/False if Dask's serialization ``context`` says whether the
    recipient maps our /dev/shm; None when it does not say."""
    if not context:
        return None
    recipient = context.get("recipient")
    if not isinstance(recipient, dict):
        return None
    theirs = recipient.get(_KEY)
    if not isinstance(theirs, dict):
        return None
    return (IDENTITY["shm"] is not None and theirs.get("boot") == IDENTITY["boot"]
            and theirs.get("shm") == IDENTITY["shm"])


# ---------------------------------------------------------------- handles that never raise

class UnreachableArray:
    """Stands in for a shared array whose segment could not be attached here.

    Made by :func:`attach_or_defer` while Dask deserializes a message, so
    that the message (and the worker's comm) survives; any use of it as an
    array raises the error that attaching raised (``FileNotFoundError``,
    :class:`sharedarray.ForeignHostError`, :class:`sharedarray.StaleHandleError`),
    which fails the task that uses it.  Pickled again, it is the handle again
    (another process may be able to attach it).
    """

    __slots__ = ("error", "handle")

    def __init__(self, error: BaseException, handle: tuple) -> None:
        self.error = error
        self.handle = handle

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        exc = copy.copy(self.error)
        raise exc.with_traceback(None) from None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        self._raise()

    def __repr__(self) -> str:
        return f"<UnreachableArray {self.handle[0]!r}: {self.error}>"

    def __reduce__(self) -> tuple:
        return attach_or_defer, self.handle

    __array__ = __array_function__ = __array_ufunc__ = _raise
    __len__ = __iter__ = __getitem__ = __setitem__ = __contains__ = _raise
    __bool__ = __int__ = __float__ = __index__ = _raise
    __array_interface__ = property(_raise)
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _raise
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _raise
    __mod__ = __pow__ = __matmul__ = __rmatmul__ = __neg__ = __abs__ = _raise
    __lt__ = __le__ = __gt__ = __ge__ = _raise
    __and__ = __or__ = __xor__ = __invert__ = _raise


def attach_or_defer(*handle: Any) -> Any:
    """:func:`sharedarray.reduction.rebuild_ndarray`, but a failure to attach
    gives an :class:`UnreachableArray` instead of an exception."""
    try:
        return rebuild_ndarray(*handle)
    except Exception as exc:    # whatever it is, it must not break the comm
        return UnreachableArray(exc, handle)


def _defer_hook(arr: Any, rv: tuple) -> tuple:
    return attach_or_defer, rv[1]


# ---------------------------------------------------------------- Dask's comms

_patched: set[str] = set()


def _patch_handshake() -> None:
    from distributed.comm.core import Comm
    if getattr(Comm.handshake_info, "_sharedarray", False):
        return
    original = Comm.handshake_info

    def handshake_info(self: Any) -> dict[str, Any]:
        info = original(self)
        info[_KEY] = dict(IDENTITY)
        return info

    handshake_info._sharedarray = True          # type: ignore[attr-defined]
    handshake_info.__wrapped__ = original       # type: ignore[attr-defined]
    handshake_info.__doc__ = original.__doc__
    Comm.handshake_info = handshake_info        # type: ignore[method-assign]


def _wrap_dumps() -> None:
    import distributed.protocol as protocol
    original = protocol.dumps
    if getattr(original, "_sharedarray", False):
        return

    def dumps(msg: Any, serializers: Any = None, on_error: str = "message",
              context: Any = None, frame_split_size: Any = None) -> list:
        if not context:
            return original(msg, serializers, on_error, context, frame_split_size)
        if recipient_shares_shm(context) is False:
            with by_value():
                return original(msg, serializers, on_error, context, frame_split_size)
        token = handle_hook.set(_defer_hook)
        try:
            return original(msg, serializers, on_error, context, frame_split_size)
        finally:
            handle_hook.reset(token)

    dumps._sharedarray = True                   # type: ignore[attr-defined]
    dumps.__wrapped__ = original                # type: ignore[attr-defined]
    dumps.__doc__ = original.__doc__
    protocol.dumps = dumps


def _register_serializers() -> None:
    from distributed.protocol.serialize import dask_deserialize, dask_serialize
    dask_serialize.register(ndarray)(serialize_ndarray)
    dask_deserialize.register(ndarray)(deserialize_ndarray)


def serialize_ndarray(x: ndarray, context: Any = None) -> tuple[dict, list]:
    """``dask_serialize`` for shared arrays: a handle or the data (see above)."""
    rv = reduce_ndarray(x)      # honours by_value() and memory not in a segment
    if rv[0] in (rebuild_ndarray, attach_or_defer) and \
            recipient_shares_shm(context) is not False:
        return {"handle": True}, [pickle.dumps(rv[1], protocol=4)]
    from distributed.protocol.numpy import serialize_numpy_ndarray
    header, frames = serialize_numpy_ndarray(np.asarray(x).view(np.ndarray), context)
    return {"handle": False, "numpy": header}, frames


def deserialize_ndarray(header: dict, frames: list) -> Any:
    if header.get("handle"):
        return attach_or_defer(*pickle.loads(frames[0]))
    from distributed.protocol.numpy import deserialize_numpy_ndarray
    return deserialize_numpy_ndarray(header["numpy"], frames)


def patch_spill() -> None:
    """Spilled shared arrays are written by value (spilling is storage)."""
    import distributed.spill as spill
    original = spill.serialize_bytelist
    if getattr(original, "_sharedarray", False):
        return

    def serialize_bytelist(x: Any, *args: Any, **kwargs: Any) -> Any:
        with by_value():
            return original(x, *args, **kwargs)

    serialize_bytelist._sharedarray = True      # type: ignore[attr-defined]
    serialize_bytelist.__wrapped__ = original   # type: ignore[attr-defined]
    spill.serialize_bytelist = serialize_bytelist


def patch_scheduler() -> None:
    """A scheduler forwards what ``Client.scatter`` sends it to workers
    without opening it; a handle made for the scheduler may be going to a
    worker on another host.  Open our handles there, so that the forwarding
    serializes each for its own worker."""
    from dask.utils import typename
    from distributed.protocol.serialize import Serialized, merge_and_deserialize, to_serialize
    from distributed.scheduler import Scheduler
    original = Scheduler.scatter
    if getattr(original, "_sharedarray", False):
        return
    ours = typename(ndarray)

    def reopen(value: Any) -> Any:
        header = getattr(value, "header", None)
        if (isinstance(value, Serialized) and isinstance(header, dict)
                and header.get("type") == ours
                and (header.get("sub-header") or {}).get("handle")):
            return to_serialize(merge_and_deserialize(header, value.frames))
        return value

    async def scatter(self: Any, *args: Any, **kwargs: Any) -> Any:
        data = kwargs.get("data")
        if isinstance(data, dict):
            kwargs["data"] = {k: reopen(v) for k, v in data.items()}
        return await original(self, *args, **kwargs)

    scatter._sharedarray = True                 # type: ignore[attr-defined]
    scatter.__wrapped__ = original              # type: ignore[attr-defined]
    scatter.__doc__ = original.__doc__
    Scheduler.scatter = scatter                 # type: ignore[method-assign]


def activate() -> None:
    """Everything for ``distributed`` (idempotent)."""
    _register_serializers()
    _patch_handshake()
    _wrap_dumps()
    if "distributed.spill" in sys.modules:
        patch_spill()
    if "distributed.scheduler" in sys.modules:
        patch_scheduler()


# ---------------------------------------------------------------- dask.sizeof

def sizeof(x: ndarray) -> int:
    """What a shared array costs the process that holds it.

    Dask adds these sizes up as the worker's "managed memory", spills to disk
    when that passes its thresholds, and weighs transfers by them.  The data
    of a shared array is not in the worker's private memory: it is in
    /dev/shm, paid once per machine however many processes map it, and it
    stays there whether or not this worker holds the array, so spilling it
    would free nothing (and would write all of it to disk).  Moving it to
    a worker on this machine costs a handle, not ``nbytes``.  What holding it
    does cost this process is the array object and the page tables of the
    mapping: 8 bytes for each 4 KiB page, ``nbytes / 512`` at most.  (The
    pages it touches still count in its RSS, as "unmanaged" memory.)
    """
    if segment_of(x) is None:       # a subclass instance on private memory
        return int(x.nbytes) + sys.getsizeof(x)
    return sys.getsizeof(x) + int(x.nbytes) // 512


def register_sizeof(dispatch: Any) -> None:
    dispatch.register(ndarray)(sizeof)


# ---------------------------------------------------------------- dask.array

def to_dask(array: Any, chunks: Any = "auto", *, name: Any = None) -> Any:
    """See :func:`sharedarray._hooks.to_dask`."""
    import dask.array as da
    from dask.array.core import getter, graph_from_arraylike, normalize_chunks
    from dask.base import tokenize

    if segment_of(array) is None:
        raise TypeError("to_dask() takes a shared array (sharedarray.ndarray "
                        "whose memory is a segment); use dask.array.from_array "
                        "for others")
    chunks = normalize_chunks(chunks, array.shape, dtype=array.dtype)
    if name is None:
        # The handle identifies the memory; the contents may change in place,
        # as with any numpy array given to dask.
        name = "sharedarray-" + tokenize(pickle.dumps(array), chunks)
    # inline_array: each chunk task holds the array itself (a handle when
    # pickled) and slices it with getter; asarray=False keeps the views
    # shared, so they travel between workers as handles too.
    dsk = graph_from_arraylike(array, chunks, array.shape, name, getitem=getter,
                               asarray=False, dtype=array.dtype, inline_array=True)
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    return da.Array(dsk, name, chunks, meta=meta, dtype=array.dtype)
