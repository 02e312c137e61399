"""Shared arrays in Ray: stored by value in Ray's object store.

Activated by :mod:`sharedarray._hooks` in every process that has imported both
this library and Ray (the driver, and each worker once a task or object that
refers to this library is unpickled there); nothing to call.

Ray keeps what ``ray.put`` and task arguments and results hold for as long as
an ``ObjectRef`` lives, possibly on other nodes, and it gives no hook when a
reference dies.  A handle would outlive its segment (``share()``'d arrays
are unlinked when the owner drops them) and mean nothing on another node.  So
a shared array enters Ray as its data: one copy into Ray's object store,
which is itself shared memory on each node, and from which ``ray.get`` and
tasks on that node read numpy arrays in place (read-only, as Ray gives every
numpy array).  Ray ships it to other nodes like any other object.  The
README's "Moving to a cluster" gives the cost measured against a handle.
"""

from __future__ import annotations

import numpy as np

from .core import ndarray

__all__ = ["register", "to_value", "from_value"]


def to_value(x: ndarray) -> np.ndarray:
    """Ray serializer: the array's data as a plain numpy array.

    Ray pickles it with protocol 5, so a contiguous array goes into the
    object store without an intermediate copy.
    """
    return x.view(np.ndarray)


def from_value(value: np.ndarray) -> np.ndarray:
    """Ray deserializer: the numpy array Ray rebuilt (in its object store).

    Named in every object that held a shared array, so unpickling one imports
    this library - and activates the integration - in that worker.
    """
    return value


def register() -> None:
    """Register with Ray (idempotent; valid for this process)."""
    import ray.util
    ray.util.register_serializer(ndarray, serializer=to_value, deserializer=from_value)
