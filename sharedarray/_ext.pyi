"""Types of the C core (``sharedarray/ext/segment.c``).

``mypy.stubtest sharedarray._ext`` (run by ``make lint``) checks this file
against the built module; change both together.
"""

from typing import Any, Final, final

import numpy as np
from typing_extensions import Buffer

MS_ASYNC: Final[int]
MS_SYNC: Final[int]
MS_INVALIDATE: Final[int]
KIND_SHM: Final[int]
KIND_FILE: Final[int]
ATOMIC_CREATE: Final[int]

@final
class Segment:
    """One shared mapping; unmapped when the last user goes."""

    @property
    def name(self) -> str: ...
    # What the Python layer parsed from the header (``core.Meta``), None until set.
    meta: Any
    @property
    def addr(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def exports(self) -> int: ...
    def msync(self, flags: int = ...) -> None: ...
    def mlock(self) -> None: ...
    def munlock(self) -> None: ...
    def populate(self) -> bool: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...

def create(
    name: str,
    path: str,
    kind: int,
    size: int,
    header: Buffer,
    mode: int,
    populate: bool,
    fspath: str | None = ...,
    dir: str | None = ...,
    tmppath: str | None = ...,
    data: Buffer | None = ...,
) -> Segment: ...
def attach(
    name: str, path: str, kind: int, readonly: bool, populate: bool = ..., /
) -> tuple[Segment, bytes, int, int]: ...
def unlink(name: str, path: str, kind: int, /) -> None: ...
def address(obj: Buffer | np.ndarray[Any, Any], /) -> int: ...
def stat(name: str, path: str, kind: int, /) -> tuple[int, float, int, int]: ...
