"""numpy arrays in POSIX shared memory.

``create``/``attach``/``delete``/``list`` manage named arrays; shared arrays
pickle as small handles (``by_value`` turns that off); ``share`` makes a
process-owned temporary; ``ProcessPoolExecutor`` moves arrays to and from
workers through shared memory.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .core import (
    MS_ASYNC,
    MS_INVALIDATE,
    MS_SYNC,
    ArrayInfo,
    Segment,
    attach,
    create,
    delete,
    exists,
    from_array,
    list,
    ndarray,
)
from .reduction import ForeignHostError, StaleHandleError, by_value, share

if TYPE_CHECKING:
    from .pool import ProcessPoolExecutor

__all__ = [
    "ArrayInfo", "ForeignHostError", "MS_ASYNC", "MS_INVALIDATE", "MS_SYNC",
    "ProcessPoolExecutor",
    "Segment", "StaleHandleError", "attach", "by_value", "create", "delete",
    "exists", "from_array", "list", "ndarray", "share",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The executor (and cloudpickle, concurrent.futures, ...) loads on first
    # use: a third of the import time, which create/attach users never need.
    if name == "ProcessPoolExecutor":
        from .pool import ProcessPoolExecutor
        globals()[name] = ProcessPoolExecutor
        return ProcessPoolExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> Iterable[str]:
    return sorted(set(globals()) | set(__all__))


# Dask and Ray integrations: active once the engine is imported too (see _hooks).
from ._hooks import install as _install_hooks  # noqa: E402
from ._hooks import to_dask  # noqa: E402

__all__ += ["to_dask"]
_install_hooks()
