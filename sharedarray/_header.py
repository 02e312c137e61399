"""The ``.npy`` header codec (private).

Every header this library reads or writes goes through here: the preamble
(magic, version, header length), the header's dict, and the comment after
it that carries what the library needs (``np.load`` ignores it)::

    #sharedarray:2:<token>:<pid>:<boot id>:<ms>:<temporary>:<shm dev>:<pid ns>:<aligned>

``token`` is random per segment (a name deleted and created again gets a
new one); ``pid``, ``pid ns`` name the creator in its pid namespace; ``boot
id`` and ``shm dev`` (the device of the ``/dev/shm`` it was made in) say
where; ``aligned`` is one ``0``/``1`` per structured dtype in the dtype (in
preorder) saying whether it was made with ``align=True``, which a ``.npy``
descr cannot express (empty when none is).

The C core checks the preamble on the attach path itself (``_ext.attach``,
with the same limit, :data:`MAX_HEADER`); :func:`split` is its Python twin,
and the tests hold the two to the same answers.
"""

from __future__ import annotations

import ast
import re
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, cast

import numpy as np

from . import _ext
from ._names import BOOT_ID, PID_NS, SHM_DEV

MAGIC = b"\x93NUMPY"
ALIGN = 4096                       # data starts on a page boundary
# The largest header (the length field of the preamble) that create
# writes and attach, handles and list() read: the C core's limit.
MAX_HEADER: int = _ext.MAX_HEADER
# np.load's default max_header_size: larger headers need that argument.
NPY_LOAD_LIMIT = 10000
MAXDIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32
_STRIP = b" \n\0"                  # the padding after a header's text
_META_RE = re.compile(
    rb"#sharedarray:(?:1:([0-9a-f]{16}):(\d+):([0-9a-f]{32}):(\d+):([01])"
    rb"|2:([0-9a-f]{16}):(\d+):([0-9a-f]{32}):(\d+):([01]):(\d+):(\d+):([01]*))$")


class Meta(NamedTuple):
    """What a segment's header says; stored on ``Segment.meta``."""

    dtype: np.dtype
    shape: tuple
    fortran: bool
    offset: int           # where the data starts
    nbytes: int
    token: str | None     # None for a .npy this library did not write
    pid: int
    boot: str | None
    created: float
    temporary: bool
    shm_dev: int = 0      # the /dev/shm it was made in (0: unknown)
    pid_ns: int = 0       # the creator's pid namespace (0: unknown)
    digest: int = 0       # CRC-32 of the header text (identifies a plain .npy's layout)


# ---------------------------------------------------------------- preamble

def preamble_length(version: int) -> int:
    """Bytes before the header text: magic, version, length field."""
    return 10 if version == 1 else 12


def read_preamble(pre: bytes, size: int, name: str) -> tuple[int, int, int]:
    """Check the first (up to 12) bytes of an object of ``size`` bytes.

    Returns ``(version, start, hlen)``: the header text is the ``hlen``
    bytes from ``start``.  ``ValueError`` as the C core raises it.
    """
    if size < 10 or len(pre) < 10 or pre[:6] != MAGIC:
        raise ValueError(f"{name!r} is not a .npy array (bad magic or too "
                         f"short: {size} bytes)")
    if pre[6] not in (1, 2, 3) or pre[7] != 0:
        raise ValueError(f"{name!r}: unsupported .npy version {pre[6]}.{pre[7]}")
    version = pre[6]
    start = preamble_length(version)
    if size < start or len(pre) < start:
        raise ValueError(f"{name!r}: truncated .npy preamble")
    hlen = int.from_bytes(pre[8:start], "little")
    if hlen > MAX_HEADER:
        raise ValueError(f"{name!r}: .npy header length {hlen} is over the "
                         f"limit of {MAX_HEADER} bytes")
    if hlen > size - start:
        raise ValueError(f"{name!r}: header length {hlen} runs past the end "
                         f"of the {size}-byte object")
    return version, start, hlen


def split(data: bytes, name: str) -> tuple[bytes, int, int]:
    """``(header_text, data_offset, version)`` of a whole object's bytes,
    as ``_ext.attach`` (``_ext.preamble``) gives them."""
    version, start, hlen = read_preamble(data[:12], len(data), name)
    return data[start:start + hlen].rstrip(_STRIP), start + hlen, version


# ---------------------------------------------------------------- dtypes

def _structs(dt: np.dtype) -> Iterator[np.dtype]:
    """The structured dtypes in ``dt``, in preorder."""
    if dt.subdtype is not None:
        yield from _structs(dt.subdtype[0])
    elif dt.names is not None:
        yield dt
        for n in dt.names:
            yield from _structs(_fields(dt)[n][0])


def _fields(dt: np.dtype) -> Mapping[str, tuple[Any, ...]]:
    """A structured dtype's fields: (dtype, offset[, title]) by name."""
    return cast("Mapping[str, tuple[Any, ...]]", dt.fields)


def aligned_flags(dt: np.dtype) -> str:
    """One ``0``/``1`` per structured dtype (preorder): made with align=True?
    Empty when none is."""
    flags = "".join("1" if d.isalignedstruct else "0" for d in _structs(dt))
    return flags if "1" in flags else ""


def _realign(dt: np.dtype, flags: Iterator[str]) -> np.dtype:
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return np.dtype((_realign(base, flags), shape))
    if dt.names is None:
        return dt
    aligned = next(flags) == "1"
    names = list(dt.names)
    fields = [_fields(dt)[n] for n in names]
    spec: dict[str, Any] = {"names": names,
                  "formats": [_realign(f[0], flags) for f in fields],
                  "offsets": [f[1] for f in fields],
                  "itemsize": dt.itemsize}
    if any(len(f) > 2 for f in fields):
        spec["titles"] = [f[2] if len(f) > 2 else None for f in fields]
    return np.dtype(cast(Any, spec), align=aligned)


def with_aligned_flags(dt: np.dtype, flags: str) -> np.dtype:
    """``dt`` with the aligned flags that :func:`aligned_flags` recorded."""
    if not flags:
        return dt
    it = iter(flags)
    out = _realign(dt, it)
    if next(it, None) is not None:
        raise ValueError("more aligned flags than structured dtypes")
    return out


def check_dtype(dt: np.dtype, what: str) -> None:
    """``ValueError`` unless ``dt`` can describe shared bytes: no Python
    objects, no negative itemsize (numpy 1.x parses ``'S-1'``), fields
    inside their struct."""
    if dt.hasobject:
        raise ValueError(f"{what}: dtype {dt} holds Python objects; it cannot "
                         f"be mapped")
    _check_sizes(dt, what)


def _check_sizes(dt: np.dtype, what: str) -> None:
    if dt.itemsize < 0 or dt.itemsize > 1 << 62:
        raise ValueError(f"{what}: dtype with itemsize {dt.itemsize} is invalid")
    if dt.subdtype is not None:
        _check_sizes(dt.subdtype[0], what)
    elif dt.names is not None:
        for n in dt.names:
            sub, off = _fields(dt)[n][:2]
            _check_sizes(sub, what)
            if off < 0 or off + sub.itemsize > dt.itemsize:
                raise ValueError(f"{what}: field {n!r} lies outside its "
                                 f"{dt.itemsize}-byte struct")


# ---------------------------------------------------------------- encode

def header_dict(dt: np.dtype, shape: tuple, fortran: bool) -> str:
    """The header's dict, as numpy writes it."""
    descr = np.lib.format.dtype_to_descr(dt)
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }} "


COMMENT_START = "#sharedarray:2:"
TOKEN_LEN = 16                     # hex digits of a token


def comment(token: str, pid: int, temporary: bool, aligned: str = "",
            ms: int | None = None) -> str:
    """The library's comment after the dict (see the module docstring);
    ``ms``: the creation time (default: now)."""
    if ms is None:
        ms = int(time.time() * 1000)
    return (f"{COMMENT_START}{token}:{pid:d}:{BOOT_ID}:{ms:d}:{int(temporary):d}:"
            f"{SHM_DEV:d}:{PID_NS:d}:{aligned}")


def encode(head: str, meta: str, name: str = "") -> bytes:
    """The .npy preamble + header, padded so that data starts on a page.

    ``ValueError`` when the header would be over :data:`MAX_HEADER`.
    """
    text = head + meta
    try:
        body = text.encode("latin1")
        version = 1
    except UnicodeEncodeError:
        body = text.encode("utf8")
        version = 3
    pre = preamble_length(version)
    total = -(-(pre + len(body) + 1) // ALIGN) * ALIGN
    if version == 1 and total - 10 > 0xFFFF:
        version, pre = 2, 12
    hlen = total - pre
    if hlen > MAX_HEADER:
        raise ValueError(
            f"cannot create {name!r}: its .npy header would take {hlen:,} bytes, "
            f"over the limit of {MAX_HEADER:,} (a dtype with very many fields); "
            f"use fewer fields, e.g. one sub-array field instead of many scalars")
    body = body + b" " * (hlen - len(body) - 1) + b"\n"
    return MAGIC + bytes([version, 0]) + hlen.to_bytes(
        2 if version == 1 else 4, "little") + body


# (head, pid, temporary, aligned, digits of the time) -> the bytes of a
# header before its token, between token and time, and after the time.
# The token and the time have a fixed length for one key, so the padding
# does too: create's header is three cached pieces and two fields.
_pieces: dict[tuple, tuple[bytes, bytes, bytes]] = {}


def _split_header(head: str, pid: int, temporary: bool, aligned: str,
                  digits: int, name: str) -> tuple[bytes, bytes, bytes]:
    token, ms = "0" * TOKEN_LEN, int("1" * digits)
    text = comment(token, pid, temporary, aligned, ms)
    header = encode(head, text, name)
    end = len(header.rstrip(b" \n"))        # the comment is the last text
    at = end - len(text)                     # ASCII: one byte per character
    if header[at:end] != text.encode():
        raise AssertionError("header template: comment not where expected")
    tok = at + len(COMMENT_START)
    ms_at = tok + TOKEN_LEN + len(f":{pid:d}:{BOOT_ID}:")
    return header[:tok], header[tok + TOKEN_LEN:ms_at], header[ms_at + digits:]


def encode_new(head: str, token: str, pid: int, temporary: bool,
               aligned: str = "", name: str = "") -> bytes:
    """``encode(head, comment(token, pid, temporary, aligned))`` for a
    segment made now, from cached pieces (create's hot path).  ``token``
    is :data:`TOKEN_LEN` hex digits."""
    ms = b"%d" % int(time.time() * 1000)
    key = (head, pid, temporary, aligned, len(ms))
    try:
        before, middle, after = _pieces[key]
    except KeyError:
        before, middle, after = _split_header(head, pid, temporary, aligned,
                                              len(ms), name)
        if len(_pieces) > 256:
            _pieces.clear()
        _pieces[key] = (before, middle, after)
    if len(token) != TOKEN_LEN:
        raise ValueError(f"a token is {TOKEN_LEN} hex digits, not {token!r}")
    return b"".join((before, token.encode("ascii"), middle, ms, after))


# ---------------------------------------------------------------- decode

_cache: dict[bytes, Meta] = {}


def decode(text: bytes, data_offset: int, name: str, version: int = 1) -> Meta:
    """Validate a header's text (as :func:`split` gives it); ``ValueError``
    for anything malformed."""
    meta = _cache.get(text)
    if meta is not None and meta.offset == data_offset:
        return meta
    if len(text) > MAX_HEADER:
        raise ValueError(f"{name!r}: .npy header of {len(text)} bytes is over "
                         f"the limit of {MAX_HEADER} bytes")
    try:
        d = ast.literal_eval(text.decode("utf8" if version >= 3 else "latin1"))
    except Exception as exc:  # SyntaxError, ValueError, MemoryError, RecursionError
        raise ValueError(f"{name!r}: corrupt .npy header ({type(exc).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{name!r}: .npy header lacks descr/fortran_order/shape")
    shape, fortran = d["shape"], d["fortran_order"]
    if (not isinstance(shape, tuple)
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError(f"{name!r}: bad shape {shape!r} in .npy header")
    if not isinstance(fortran, bool):
        raise ValueError(f"{name!r}: bad fortran_order {fortran!r} in .npy header")
    if len(shape) > MAXDIMS:
        raise ValueError(f"{name!r}: {len(shape)} dimensions in .npy header")
    try:
        dt = np.lib.format.descr_to_dtype(d["descr"])
    except Exception as exc:
        raise ValueError(f"{name!r}: bad dtype in .npy header: {exc}") from None
    check_dtype(dt, repr(name))
    m = _META_RE.search(text)
    if m:
        g = m.groups()
        if g[0] is not None:        # version 1 of the comment
            token, pid, boot, ms, flags = g[:5]
            dev = ns = b"0"
        else:
            token, pid, boot, ms, flags, dev, ns, aligned = g[5:]
            try:
                dt = with_aligned_flags(dt, aligned.decode())
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{name!r}: corrupt aligned flags in the "
                                 f"header ({exc})") from None
    nbytes = dt.itemsize
    for n in shape:
        nbytes *= n
    if m:
        meta = Meta(dt, shape, fortran, data_offset, nbytes, token.decode(),
                    int(pid), boot.decode(), int(ms) / 1000, flags == b"1",
                    int(dev), int(ns))
    else:
        meta = Meta(dt, shape, fortran, data_offset, nbytes, None, 0, None, 0.0,
                    False, 0, 0, zlib.crc32(text))
    if len(_cache) > 1024:
        _cache.clear()
    _cache[text] = meta
    return meta
