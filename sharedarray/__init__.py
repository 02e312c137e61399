"""numpy arrays in POSIX shared memory.

``create``/``attach``/``delete``/``list`` manage named arrays; shared arrays
pickle as small handles (``by_value`` turns that off); ``share`` makes a
process-owned temporary; ``ProcessPoolExecutor`` moves arrays to and from
workers through shared memory.
"""

from .core import (MS_ASYNC, MS_INVALIDATE, MS_SYNC, ArrayInfo, Segment, attach,
                   create, delete, exists, from_array, list, ndarray)
from .pool import ProcessPoolExecutor
from .reduction import ForeignHostError, StaleHandleError, by_value, share

__all__ = [
    "ArrayInfo", "ForeignHostError", "MS_ASYNC", "MS_INVALIDATE", "MS_SYNC",
    "ProcessPoolExecutor",
    "Segment", "StaleHandleError", "attach", "by_value", "create", "delete",
    "exists", "from_array", "list", "ndarray", "share",
]
__version__ = "0.1.0"

# Dask and Ray integrations: active once the engine is imported too (see _hooks).
from ._hooks import install as _install_hooks, to_dask  # noqa: E402
__all__ += ["to_dask"]
_install_hooks()
