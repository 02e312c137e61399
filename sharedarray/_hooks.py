"""Activation of the Dask and Ray integrations, without importing either.

The integrations (:mod:`sharedarray._dask`, :mod:`sharedarray._ray`) must be
active in every process that has both this library and the engine imported -
the client or driver and every worker - and no call should be needed for it.
Three mechanisms, each cheap where there is nothing to do:

1. At import of :mod:`sharedarray` (:func:`install`): an engine module that is
   already fully imported gets its integration at once.
2. Otherwise a :data:`sys.meta_path` finder waits for the engine's modules
   (``dask.sizeof``, ``distributed.comm.core``, ``distributed.spill``,
   ``distributed.scheduler``, ``ray``) and registers right after each has
   finished executing.  It looks at no other name, and removes itself when
   nothing is left to wait for.
3. Dask's ``dask.sizeof`` entry point (``pyproject.toml``) names
   :func:`dask_sizeof_plugin`: ``import dask`` runs it in every Dask process
   where this package is installed, which imports :mod:`sharedarray` - and so
   (1)/(2) - early enough for a Dask worker to announce its /dev/shm in its
   comm handshakes before it has seen any shared array.  A process that has
   missed it all still activates when it unpickles the first handle from a
   Dask message (:func:`sharedarray._dask.attach_or_defer` lives in the
   integration module).

Nothing here imports Dask or Ray; this module only reacts when they are
imported by somebody else.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["install", "dask_sizeof_plugin", "to_dask"]


def _dask_comm(_mod: Any) -> None:
    from . import _dask
    _dask.activate()


def _dask_spill(_mod: Any) -> None:
    from . import _dask
    _dask.patch_spill()


def _dask_sizeof(mod: Any) -> None:
    from . import _dask
    _dask.register_sizeof(mod.sizeof)


def _dask_scheduler(_mod: Any) -> None:
    from . import _dask
    _dask.patch_scheduler()


def _ray(_mod: Any) -> None:
    from . import _ray
    _ray.register()


def _mp_reduction(mod: Any) -> None:
    from . import reduction
    reduction.register_in_flight(mod)


# module -> what to do once it has been imported (in this order).
_WATCH: dict[str, Callable[[Any], None]] = {
    "multiprocessing.reduction": _mp_reduction,
    "dask.sizeof": _dask_sizeof,
    "distributed.comm.core": _dask_comm,
    "distributed.spill": _dask_spill,
    "distributed.scheduler": _dask_scheduler,
    "ray": _ray,
}
_pending: dict[str, Callable[[Any], None]] = {}
_lock = threading.RLock()


def _initializing(mod: Any) -> bool:
    spec = getattr(mod, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _fire(name: str, mod: Any) -> None:
    with _lock:
        action = _pending.pop(name, None)
        if not _pending:
            _remove_finder()
    if action is None:
        return
    try:
        action(mod)
    except Exception as exc:    # never break the user's import of the engine
        import warnings
        warnings.warn(f"sharedarray: could not set up the integration with "
                      f"{name}: {exc!r}", RuntimeWarning, stacklevel=2)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then the integration for that module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module must see its real loader (resources, reloading).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _fire(self._name, module)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    """Waits for the modules in ``_pending``; ignores every other name."""

    _busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, fullname)
        return spec


_finder = _Finder()


def _remove_finder() -> None:
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install() -> None:
    """Activate for the engines already imported; wait for the others."""
    ready = []
    with _lock:
        for name, action in _WATCH.items():
            if name in _pending:
                continue
            mod = sys.modules.get(name)
            if mod is not None and not _initializing(mod):
                ready.append(name)
            elif mod is None:
                _pending[name] = action
            # A module being imported right now (this import runs inside it,
            # e.g. from dask.sizeof's entry point) finishes without the
            # finder; its integration comes from the entry point instead.
        if _pending and _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        for name in ready:
            _pending[name] = _WATCH[name]
    for name in ready:
        _fire(name, sys.modules[name])


def dask_sizeof_plugin(sizeof: Any) -> None:
    """The ``dask.sizeof`` entry point: registers the size of shared arrays.

    Dask calls it at the end of ``import dask.sizeof`` (which ``import dask``
    does), so merely having this package installed activates the integration
    in every Dask process.
    """
    with _lock:
        _pending.pop("dask.sizeof", None)
    from . import _dask
    _dask.register_sizeof(sizeof)


def to_dask(array: Any, chunks: Any = "auto", *, name: Any = None) -> Any:
    """A ``dask.array.Array`` over a shared array whose graph holds handles.

    ``dask.array.from_array`` copies its input first (``x.copy()``, which for a
    shared array is a private numpy array), so its graph carries the data.
    Here every chunk is a view of the shared memory: the graph pickles as a
    few hundred bytes per chunk, and workers on this machine read the
    segment in place.  Needs ``dask[array]``.
    """
    from . import _dask
    return _dask.to_dask(array, chunks, name=name)
