"""Names, paths and the formats of generated names (private).

The one place that knows how a user's name maps to an object (POSIX shm or
a file), what the names this library generates look like (``sa-<pid>-...``
for temporaries, ``.sa-tmp-<pid>-<token>`` for the staging file of a create
where the kernel has no ``O_TMPFILE``), which machine, ``/dev/shm`` and pid
namespace this process lives in, and how a temporary is unlinked and
dropped from the resource tracker.
"""

from __future__ import annotations

import os
import random
import re
import time
from typing import Any, NamedTuple

from . import _ext

SHM_DIR = "/dev/shm"
NAME_MAX = 255                 # Linux NAME_MAX for one path component
GENERATED_PREFIX = "sa-"       # names made by share() and the executor
MAX_GENERATED_NAME = 30        # macOS: 31 including the leading '/'
TRACKER_TYPE = "shared_memory"  # the stdlib resource tracker shm_unlink()s these
FILE_SCHEME = "file://"
SHM_SCHEME = "shm://"

# ``sa-<pid>-<hex>``: share()'s names; the executor's input copies end in
# REFILLABLE_SUFFIX, its results are ``sa-<pid>-<pool hex>x<hex>-r`` and the
# results it keeps for reuse ``sa-<pid>-<pool hex>xs<size hex><slot>-r``.
GENERATED_RE = re.compile(r"sa-(\d+)-[0-9a-f]+(?:xs?[0-9a-f]+)?(?:-r)?\Z")
REFILLABLE_SUFFIX = "-r"       # temporaries that may be rewritten in place
RESULT_TAIL = 7 + len(REFILLABLE_SUFFIX)   # what result_name() adds to the prefix
# ``.sa-tmp-<pid of the creating process>-<token of the header>``
STAGING_RE = re.compile(r"\.sa-tmp-(\d+)-([0-9a-f]{16})\Z")


def _read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:  # not Linux: best effort, stable for this boot
        return format(int(time.time() - time.monotonic()), "032x")


def _stat_field(path: str, field: str) -> int:
    try:
        return int(getattr(os.stat(path), field))
    except OSError:
        return 0


BOOT_ID: str = _read_boot_id()
# The device of the tmpfs behind /dev/shm: two containers on one kernel
# share the boot id but (unless started with --ipc=host) not this.
SHM_DEV: int = _stat_field(SHM_DIR, "st_dev")
# The pid namespace: a pid means the same process only inside one of them.
PID_NS: int = _stat_field("/proc/self/ns/pid", "st_ino")


class Path(NamedTuple):
    """Where a name lives."""

    kind: int      # _ext.KIND_SHM or _ext.KIND_FILE
    canon: str     # one spelling per object: "x" for shm://x, file:///abs/path
    path: str      # what the C core opens: "/name" for shm, a path for files
    fspath: str    # the same object as a file-system path (Linux)
    dir: str
    refillable: bool = False   # an executor input copy (see is_refillable)


_cache: dict[str, Path] = {}


def parse(name: Any) -> Path:
    """Map a user name to where it lives; ``ValueError`` names the rule broken.

    A relative ``file://`` name means the current directory at each call,
    so only shm names and absolute paths are cached.
    """
    try:
        return _cache[name]
    except (KeyError, TypeError):
        pass
    if not isinstance(name, str):
        raise TypeError(f"array names are str, not {type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"invalid name {name!r}: it contains a NUL byte")
    try:
        name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"invalid name {name!r}: it is not valid UTF-8 "
                         f"(a lone surrogate)") from None
    if name.startswith(FILE_SCHEME):
        path = name[len(FILE_SCHEME):]
        if not path:
            raise ValueError(f"invalid name {name!r}: file:// needs a path")
        cacheable = os.path.isabs(path)
        path = os.path.abspath(path)
        parsed = Path(_ext.KIND_FILE, FILE_SCHEME + path, path, path,
                      os.path.dirname(path))
    else:
        if "://" in name:
            scheme = name.split("://", 1)[0]
            if scheme + "://" != SHM_SCHEME:
                raise ValueError(f"invalid name {name!r}: unknown scheme "
                                 f"{scheme!r} (use shm:// or file://)")
            base = name[len(SHM_SCHEME):]
        else:
            base = name
        if not base:
            raise ValueError(f"invalid name {name!r}: it is empty")
        if "/" in base:
            raise ValueError(f"invalid name {name!r}: shared memory names "
                             f"cannot contain '/' (use file:// for paths)")
        if base in (".", ".."):
            raise ValueError(f"invalid name {name!r}: '.' and '..' are not names")
        if len(base.encode()) > NAME_MAX:
            raise ValueError(f"invalid name {name!r}: longer than {NAME_MAX} bytes")
        cacheable = True
        parsed = Path(_ext.KIND_SHM, base, shm_path(base), SHM_DIR + "/" + base,
                      SHM_DIR, base.startswith(GENERATED_PREFIX)
                      and base.endswith(REFILLABLE_SUFFIX))
    if cacheable:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[name] = parsed
    return parsed


def is_file(canon: str) -> bool:
    """Whether a canonical segment name is a ``file://`` one."""
    return canon.startswith(FILE_SCHEME)


def shm_path(name: str) -> str:
    """The argument of ``shm_open`` for the shm name ``name``."""
    return "/" + name


def fs_path(canon: str) -> str:
    """The file-system path of a segment, from its canonical name."""
    if is_file(canon):
        return canon[len(FILE_SCHEME):]
    return f"{SHM_DIR}/{canon}"


def generated_prefix(pid: int) -> str:
    """The start of every name generated for owner ``pid``."""
    return f"{GENERATED_PREFIX}{pid}-"


def generate(pid: int | None = None, refillable: bool = False) -> str:
    """A fresh name for a temporary: prefix, owner pid, random token.

    ``refillable`` names mark the executor's input copies and results, the
    only segments ever rewritten in place (``core.lock_exclusive``): every
    process that maps one holds a shared flock on it while it does (the
    parent's own mapping of a result excepted: see ``pool``).
    """
    name = (generated_prefix(os.getpid() if pid is None else pid)
            + f"{random.getrandbits(48):012x}")
    if refillable:
        name += REFILLABLE_SUFFIX
    assert len(name) <= MAX_GENERATED_NAME
    return name


def is_refillable(p: Path) -> bool:
    """Whether ``p`` names an executor input copy (see :func:`generate`)."""
    return p.refillable


def pool_prefix(pid: int, tag: int) -> str:
    """The start of the result names of one executor."""
    return f"{generated_prefix(pid)}{tag:04x}x"


def result_name(prefix: str) -> str:
    """A fresh (refillable) name for a result of the executor ``prefix``."""
    return f"{prefix}{random.getrandbits(28):07x}{REFILLABLE_SUFFIX}"


def result_prefix(name: str) -> str:
    """The executor prefix of a :func:`result_name`."""
    return name[:-RESULT_TAIL]


def spare_prefix(prefix: str) -> str:
    """The start of every :func:`spare_name` of the executor ``prefix``, and
    of no result name (those go on in hexadecimal digits)."""
    return prefix + "s"


def spare_name(prefix: str, size: int, slot: int) -> str | None:
    """The name of a released result of ``size`` bytes kept for reuse by the
    executor ``prefix``, in ``slot`` (a digit); None when it would be too
    long (objects of 1 TiB and more with a 7-digit pid).  A worker finds
    the spares of its result's size by these names."""
    name = f"{spare_prefix(prefix)}{size:x}{slot}{REFILLABLE_SUFFIX}"
    return name if len(name) <= MAX_GENERATED_NAME else None


def staging_path(dir: str, token: str, pid: int | None = None) -> str:
    """The staging file of a create with header token ``token`` made by
    process ``pid`` (default: this one)."""
    return f"{dir}/.sa-tmp-{os.getpid() if pid is None else pid}-{token}"


def tracker() -> Any:
    """The standard library's resource tracker module (imported on first use:
    most programs that only create and attach arrays never need it)."""
    from multiprocessing import resource_tracker
    return resource_tracker


def sweep(name: str) -> None:
    """Unlink the temporary ``name`` that nobody owns, and drop it from the
    resource tracker only if this did unlink it: when the name is gone
    already, whoever removed it had the right to, and drops it."""
    try:
        _ext.unlink(name, "/" + name, _ext.KIND_SHM)
    except OSError:
        return
    try:
        tracker().unregister("/" + name, TRACKER_TYPE)
    except Exception:
        pass


def discard(name: str, unlink: Any = _ext.unlink, unregister: Any = None) -> None:
    """Unlink the temporary ``name`` and drop it from the resource tracker.

    Errors are ignored: the name may be gone already (deleted by hand, or
    by the tracker).  Finalizers, which may run at interpreter shutdown,
    bind ``unregister`` when they are made.
    """
    if unregister is None:
        unregister = tracker().unregister
    path = "/" + name
    try:
        unlink(name, path, _ext.KIND_SHM)
    except OSError:
        pass
    try:
        unregister(path, TRACKER_TYPE)
    except Exception:
        pass
