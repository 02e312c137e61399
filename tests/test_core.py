"""The core layer: names, create/attach/delete/list/exists/from_array, the
.npy segment layout, dtypes, the ndarray subclass and the segment object.

Also the error behaviour the core owns (bad names, shapes and dtypes; corrupt
segments).  Fault injection (corrupt-segment fuzzing, races, ENOSPC) lives in
``test_faults_core.py``.

Hypothesis example counts scale with ``SA_HYPOTHESIS_EXAMPLES`` (default 100),
so that slow runs (valgrind) can use fewer.
"""

from __future__ import annotations

import copy
import errno
import gc
import io
import json
import math
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sharedarray as sa

from conftest import SHM, private_shm_prefix, run_python

EXAMPLES = int(os.environ.get("SA_HYPOTHESIS_EXAMPLES", "100"))
HYPO = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
PAGE = 4096
NP_LOAD_HEADER_LIMIT = 10000       # numpy.load's default max_header_size
NUMPY2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"
MAXDIMS = 64 if NUMPY2 else 32


# ---------------------------------------------------------------- helpers

def leaves(arr: np.ndarray) -> list:
    """The bytes of every field of ``arr`` in logical order, padding excluded.

    Structured dtypes are walked recursively (sub-array fields expand into
    the shape), so two arrays compare equal exactly when every value is
    bit-identical, NaN payloads, byte order and all.
    """
    if arr.dtype.names is not None:
        out = []
        for name in arr.dtype.names:
            out.append(name)
            out.extend(leaves(arr[name]))
        return out
    return [arr.dtype.str, arr.shape, np.ascontiguousarray(arr).tobytes()]


def same_dtype(a: np.dtype, b: np.dtype) -> bool:
    """Equal as numpy compares them *and* field by field (offsets, titles)."""
    return (a == b and a.itemsize == b.itemsize and a.str == b.str
            and a.fields == b.fields and a.names == b.names
            and a.shape == b.shape)


def assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    assert same_dtype(got.dtype, want.dtype), (got.dtype, want.dtype)
    assert got.shape == want.shape
    assert leaves(got) == leaves(want)


def umask() -> int:
    """This process's umask, read without changing it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)        # pragma: no cover - not Linux
    os.umask(old)
    return old


def mapping_perms(addr: int) -> str:
    """The permission field of the mapping starting at ``addr``."""
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            if int(span.split("-")[0], 16) == addr:
                return perms
    raise AssertionError(f"no mapping at {addr:#x}")


def header_length(path: str) -> int:
    from sharedarray._header import read_preamble
    with open(path, "rb") as f:
        pre = f.read(12)
    return read_preamble(pre, os.path.getsize(path), path)[2]


def safe_delete(name: str) -> None:
    try:
        sa.delete(name)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- the README

README_EXAMPLE = '''\
import numpy as np
import sharedarray as sa

# Create an array in shared memory
a = sa.create("test1", 10)

# Attach it as a different array. This can be done from another
# python interpreter as long as it runs on the same computer.
b = sa.attach("test1")

# See how they are actually sharing the same memory block
a[0] = 42
print(b[0])

# Destroying a does not affect b.
del a
print(b[0])

# See how "test1" is still present in shared memory even though we
# destroyed the array a.
sa.list()

# Now destroy the array "test1" from memory.
sa.delete("test1")

# The array b is not affected, but once you destroy it then the
# data are lost.
print(b[0])
'''

# Feeds a program to an interactive console line by line, as a user at the
# prompt would type the README: expression statements such as `sa.list()`
# echo their value.
CONSOLE = '''\
import code, sys
console = code.InteractiveConsole()
for line in sys.argv[1].splitlines():
    console.push(line)
console.push("")
'''


def test_readme_example_verbatim():
    """The old library's README example, run verbatim (name "test1" and all) in a fresh
    interpreter inside a private, empty /dev/shm, so it cannot collide with
    anything.  42.0 is printed three times, list() shows "test1" while it
    exists, and nothing is left behind."""
    prefix = private_shm_prefix()
    script = ('mount -t tmpfs -o size=16m tmpfs /dev/shm && '
              '"$0" -c "$1" && echo ---- && "$0" -c "$2" "$1" && echo ---- && '
              'ls -A /dev/shm')
    proc = subprocess.run(prefix + ["sh", "-c", script, sys.executable,
                                    README_EXAMPLE, CONSOLE],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    as_script, interactive, left = proc.stdout.split("----\n")
    assert as_script == "42.0\n42.0\n42.0\n", proc.stdout
    lines = interactive.splitlines()
    assert lines[:2] == ["42.0", "42.0"] and lines[-1] == "42.0", interactive
    listing = "\n".join(lines[2:-1])
    assert "name='test1'" in listing and "dtype('float64')" in listing \
        and "shape=(10,)" in listing and "nbytes=80" in listing, listing
    assert listing.startswith("[ArrayInfo(") and listing.count("ArrayInfo(") == 1
    assert left == "", f"left in /dev/shm: {left!r}"


def test_readme_example_unique_name(shm_name):
    """The same example on the real /dev/shm, with "test1" replaced by a unique
    name (the only change), as a user running it next to others would."""
    code = README_EXAMPLE.replace('"test1"', repr(shm_name))
    code = code.replace("sa.list()", "print([i.name for i in sa.list()"
                        f" if i.name == {shm_name!r}])")
    proc = run_python(code)
    assert proc.stdout == f"42.0\n42.0\n[{shm_name!r}]\n42.0\n"
    assert not sa.exists(shm_name)


# ---------------------------------------------------------------- cross-interpreter

def test_create_here_attach_there(shm_name):
    a = sa.create(shm_name, (3, 4), np.int32)
    try:
        a[:] = np.arange(12).reshape(3, 4)
        code = textwrap.dedent(f"""
            import numpy as np, sharedarray as sa
            b = sa.attach({shm_name!r})
            assert type(b) is sa.ndarray and b.dtype == np.int32 and b.shape == (3, 4)
            assert (b == np.arange(12).reshape(3, 4)).all(), b
            b *= -1
            b.segment.msync()
            print("ok")
        """)
        assert run_python(code).stdout == "ok\n"
        assert (a == -np.arange(12).reshape(3, 4)).all()
    finally:
        sa.delete(shm_name)


def test_create_there_attach_here(shm_name):
    code = textwrap.dedent(f"""
        import numpy as np, sharedarray as sa
        a = sa.from_array({shm_name!r}, np.asfortranarray(
            np.arange(20, dtype='>f4').reshape(4, 5)))
        print(a.segment.size)
    """)
    run_python(code)                 # the creator exits; the name stays
    try:
        assert sa.exists(shm_name)
        b = sa.attach(shm_name)
        want = np.arange(20, dtype=">f4").reshape(4, 5)
        assert b.dtype == np.dtype(">f4") and b.flags.f_contiguous
        assert (b == want).all()
        b[0, 0] = 99
        check = textwrap.dedent(f"""
            import sharedarray as sa
            c = sa.attach({shm_name!r}, ro=True)
            assert c[0, 0] == 99 and c[3, 4] == 19, c
            sa.delete({shm_name!r})
            print("deleted")
        """)
        assert run_python(check).stdout == "deleted\n"
        assert not sa.exists(shm_name)
        assert b[0, 0] == 99 and b[3, 4] == 19       # still mapped here
    finally:
        safe_delete(shm_name)


# ---------------------------------------------------------------- dtypes (hypothesis)

_UNITS = ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as"]


def _time_dtypes(kind: str) -> st.SearchStrategy:
    unit = st.sampled_from(_UNITS)
    step = st.sampled_from(["", "", "2", "25", "1000"])
    return st.one_of(
        st.builds(lambda e, n, u: np.dtype(f"{e}{kind}8[{n}{u}]"),
                  st.sampled_from("<>"), step, unit),
        st.sampled_from([np.dtype(f"<{kind}8"), np.dtype(f">{kind}8")]),  # generic unit
    )


SCALARS = st.one_of(
    st.just(np.dtype(bool)),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64, 128)),
    hnp.complex_number_dtypes(endianness="?", sizes=(64, 128, 256)),
    _time_dtypes("M"),
    _time_dtypes("m"),
    hnp.byte_string_dtypes(min_len=1, max_len=9),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=5),
    st.integers(1, 12).map(lambda n: np.dtype(f"V{n}")),
)

FIELD_NAMES = st.one_of(
    st.sampled_from(["a", "b", "x", "y", "f0", "f1", "value", "name with space",
                     "quote'd", 'dq"', "é", "ünï", "π", "日本", "🙂"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
            min_size=1, max_size=4),
)


@st.composite
def structured(draw, children: st.SearchStrategy) -> np.dtype:
    """Structured dtypes: plain, align=True, explicit offsets (gaps and a
    larger itemsize) or titles; fields may be sub-arrays of nested dtypes."""
    n = draw(st.integers(1, 4))
    names = draw(st.lists(FIELD_NAMES, min_size=n, max_size=n, unique=True))
    formats = []
    for _ in names:
        base = draw(children)
        sub = draw(st.none() | hnp.array_shapes(min_dims=1, max_dims=2, max_side=3))
        formats.append(base if sub is None else np.dtype((base, sub)))
    spec: dict = {"names": names, "formats": formats}
    style = draw(st.sampled_from(["plain", "align", "offsets", "titles"]))
    if style == "titles":
        spec["titles"] = draw(st.lists(FIELD_NAMES, min_size=n, max_size=n, unique=True)
                              .filter(lambda t: not set(t) & set(names)))
    if style == "offsets":
        offsets, pos = [], 0
        for f in formats:
            pos += draw(st.integers(0, 9))
            offsets.append(pos)
            pos += f.itemsize
        spec["offsets"] = offsets
        spec["itemsize"] = pos + draw(st.integers(0, 9))
    return np.dtype(spec, align=style == "align")


DTYPES = st.one_of(
    SCALARS,
    st.recursive(SCALARS, structured, max_leaves=8),
    hnp.nested_dtypes(SCALARS, max_leaves=6),      # hypothesis' own: titles, sub-arrays
).filter(lambda d: d.itemsize <= 2048)

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def _make(dt: np.dtype, shape: tuple, order: str, seed: int | None) -> np.ndarray:
    """An array of arbitrary bit patterns (NaN payloads, NaT, padding...), or
    of zero bytes for ``seed=None`` (numpy.zeros would turn a generic '>M8'
    into '<M8')."""
    n = math.prod(shape)
    if dt.itemsize == 0:
        return np.zeros(shape, dt, order=order)
    raw = (bytes(n * dt.itemsize) if seed is None
           else np.random.default_rng(seed).bytes(n * dt.itemsize))
    x = np.frombuffer(raw, dt, count=n).reshape(shape)
    if dt.names is None and dt.kind == "b":
        x = x.view(np.uint8).astype(bool)            # bools are 0 or 1
    # A copy in zeroed memory: numpy copies structured arrays field by field,
    # so x.copy() would leave padding uninitialised (valgrind sees it written).
    out = np.ndarray(shape, x.dtype, buffer=bytearray(n * dt.itemsize), order=order)
    out[...] = x
    return out


def _check_layout(arr: sa.ndarray, name: str) -> None:
    seg = arr.segment
    assert seg is not None and seg.name == name
    data_offset = arr.ctypes.data - seg.addr
    assert data_offset % PAGE == 0 and data_offset >= PAGE     # page-aligned data
    assert seg.size == data_offset + arr.nbytes


@HYPO
@given(dt=DTYPES, shape=SHAPES, order=st.sampled_from("CF"),
       seed=st.integers(0, 2**32 - 1))
def test_dtype_shape_order_round_trip(name_factory, tmp_path, dt, shape, order, seed):
    """from_array -> attach -> np.load, create -> attach, np.save -> attach
    'file://': dtype (byte order, units, fields, offsets, titles), shape,
    order and every bit of the data survive."""
    x = _make(dt, shape, order, seed)
    fortran_only = x.flags.f_contiguous and not x.flags.c_contiguous
    n1, n2 = name_factory(), name_factory()
    try:
        a = sa.from_array(n1, x)
        assert type(a) is sa.ndarray
        assert_same_array(a, x)
        assert a.flags.writeable and a.flags.f_contiguous == x.flags.f_contiguous \
            and a.flags.c_contiguous == x.flags.c_contiguous
        _check_layout(a, n1)

        b = sa.attach(n1)
        assert_same_array(b, x)
        assert b.flags.f_contiguous == x.flags.f_contiguous
        assert b.flags.c_contiguous == x.flags.c_contiguous
        _check_layout(b, n1)
        assert b.ctypes.data != a.ctypes.data        # a second mapping, same memory
        if a.nbytes:
            raw = a.view(np.ndarray).reshape(-1).view(np.uint8) if a.flags.c_contiguous \
                else a.view(np.ndarray).T.reshape(-1).view(np.uint8)
            raw[0] ^= 0xFF
            assert leaves(b) == leaves(a)
            raw[0] ^= 0xFF

        path = str(SHM / n1)
        loaded = (np.load(path) if header_length(path) <= NP_LOAD_HEADER_LIMIT
                  else np.load(path, max_header_size=1 << 20))
        assert_same_array(loaded, x)
        assert loaded.flags.f_contiguous == x.flags.f_contiguous

        c = sa.create(n2, shape, dt, order=order)
        assert same_dtype(c.dtype, dt) and c.shape == shape
        z = sa.attach(n2, ro=True)
        assert not z.flags.writeable and z.shape == shape
        assert leaves(z) == leaves(_make(dt, shape, order, seed=None))
        start = z.ctypes.data - z.segment.addr        # every byte, padding too
        assert bytes(memoryview(z.segment)[start:start + z.nbytes]) == bytes(z.nbytes)
        if fortran_only:
            assert c.flags.f_contiguous and z.flags.f_contiguous

        f = tmp_path / "x.npy"
        with warnings.catch_warnings():
            # Non-ASCII field names: numpy says format 3.0 needs numpy >= 1.17.
            warnings.filterwarnings("ignore", "Stored array in format 3.0", UserWarning)
            np.save(f, x)
        m = sa.attach("file://" + str(f))
        assert_same_array(m, x)
        assert m.tobytes("A") == x.tobytes("A")       # raw memory, padding as written
        assert m.flags.f_contiguous == x.flags.f_contiguous
        assert m.segment.name == "file://" + str(f)
        del a, b, c, z, m, loaded
    finally:
        safe_delete(n1)
        safe_delete(n2)


@HYPO
@given(dt=DTYPES, shape=SHAPES, seed=st.integers(0, 2**32 - 1))
def test_views_of_shared_arrays(name_factory, dt, shape, seed):
    """Slices, transposes, field views: sharedarray.ndarray on the same segment."""
    x = _make(dt, shape, "C", seed)
    name = name_factory()
    try:
        a = sa.from_array(name, x)
        views = [a[...], a.T]
        if a.ndim:
            views += [a[::-1], a[1:], a[..., ::2]]
        if dt.names:
            views.append(a[dt.names[0]])
        for v in views:
            assert type(v) is sa.ndarray
            assert v.segment is a.segment
        assert leaves(a.T) == leaves(x.T)
        if a.ndim:
            assert leaves(a[::-1]) == leaves(x[::-1])
    finally:
        sa.delete(name)


# ---------------------------------------------------------------- object dtypes

_OBJECT_LEAF = st.sampled_from([
    np.dtype(object),
    np.dtype((object, (2,))),
    np.dtype([("o", object)]),
])


@st.composite
def object_dtypes(draw) -> np.dtype:
    """A dtype with a Python object somewhere: at the top, in a field, in a
    nested structure, in a sub-array field."""
    inner = draw(_OBJECT_LEAF)
    for _ in range(draw(st.integers(0, 3))):
        other = draw(DTYPES)
        fields = [("f", other), ("obj", inner)]
        if draw(st.booleans()):
            fields.reverse()
        sub = draw(st.none() | hnp.array_shapes(min_dims=1, max_dims=1, max_side=2))
        inner = np.dtype([(n, d) if (sub is None or n == "f") else (n, d, sub)
                          for n, d in fields], align=draw(st.booleans()))
    return inner


def _object_dtype_examples() -> list:
    out = [np.dtype(object), np.dtype([("a", "i4"), ("b", "O")]),
           np.dtype([("a", [("x", "f8"), ("o", "O")])]), np.dtype(("O", (3,))),
           np.dtype([("a", "O", (2, 2))])]
    if NUMPY2:
        out.append(np.dtypes.StringDType())       # holds heap pointers too
    return out


@pytest.mark.parametrize("dt", _object_dtype_examples(), ids=str)
def test_object_dtypes_refused(shm_name, tmp_path, dt):
    with pytest.raises((TypeError, ValueError), match="object|Object|pickle"):
        sa.create(shm_name, 3, dt)
    with pytest.raises((TypeError, ValueError)):
        sa.from_array(shm_name, np.empty(3, dt))
    f = tmp_path / "o.npy"
    with pytest.raises((TypeError, ValueError)):
        sa.create("file://" + str(f), 3, dt)
    assert not sa.exists(shm_name) and not f.exists()
    assert os.listdir(tmp_path) == []


@HYPO
@given(dt=object_dtypes(), shape=SHAPES)
def test_object_dtypes_anywhere_refused(name_factory, dt, shape):
    assert dt.hasobject
    name = name_factory()
    with pytest.raises((TypeError, ValueError)):
        sa.create(name, shape, dt)
    with pytest.raises((TypeError, ValueError)):
        sa.from_array(name, np.empty(shape, dt))
    assert not sa.exists(name)


def test_object_npy_file_not_attached(tmp_path):
    f = tmp_path / "obj.npy"
    np.save(f, np.array([{"a": 1}, None, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        sa.attach("file://" + str(f))
    g = tmp_path / "rec.npy"
    np.save(g, np.zeros(2, [("a", "i4"), ("b", "O")]), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        sa.attach("file://" + str(g), ro=True)


# ---------------------------------------------------------------- shapes, 0-d, empty, ndim

@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (0, 0, 7), (1,) * MAXDIMS,
                                   (2,) + (1,) * (MAXDIMS - 1)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_special_shapes(shm_name, shape, order):
    a = sa.create(shm_name, shape, np.float32, order=order)
    try:
        assert a.shape == shape and a.dtype == np.float32
        b = sa.attach(shm_name)
        assert b.shape == shape and b.size == math.prod(shape)
        if b.size:
            a.reshape(-1)[-1] = 7
            assert b.reshape(-1)[-1] == 7
        assert np.load(SHM / shm_name).shape == shape
        assert [i.shape for i in sa.list() if i.name == shm_name] == [shape]
    finally:
        sa.delete(shm_name)


def test_shape_like_numpy_zeros(shm_name):
    for shape, want in [(5, (5,)), (np.int16(4), (4,)), ([2, 3], (2, 3)),
                        ((np.uint8(2), 3), (2, 3)), (range(2, 4), (2, 3))]:
        a = sa.create(shm_name, shape)
        assert a.shape == want == np.zeros(shape).shape and a.dtype == np.float64
        del a
        sa.delete(shm_name)
    a = sa.create(shm_name, (2,), ("i2", (3, 4)))     # sub-array dtype expands, as numpy
    assert a.shape == np.zeros(2, ("i2", (3, 4))).shape == (2, 3, 4)
    assert a.dtype == np.int16
    sa.delete(shm_name)


def test_too_many_dimensions(shm_name):
    with pytest.raises(ValueError, match="dimension"):
        sa.create(shm_name, (1,) * (MAXDIMS + 1))
    assert not sa.exists(shm_name)


def test_from_array_keeps_order_and_values(shm_name):
    src = np.arange(24, dtype="<i8").reshape(2, 3, 4)
    for x in [src, np.asfortranarray(src), src[:, ::2, 1:], src.T, src[..., ::-1]]:
        a = sa.from_array(shm_name, x)
        assert (a == x).all() and a.dtype == x.dtype and a.shape == x.shape
        f_only = x.flags.f_contiguous and not x.flags.c_contiguous
        assert a.flags.f_contiguous if f_only else a.flags.c_contiguous
        del a
        sa.delete(shm_name)
    a = sa.from_array(shm_name, [[1, 2], [3, 4]])            # any array-like
    assert a.dtype == np.array([[1, 2]]).dtype and (a == [[1, 2], [3, 4]]).all()
    b = sa.from_array(shm_name + "-2", a[:, ::-1])           # from a shared view
    assert (b == [[2, 1], [4, 3]]).all() and b.segment is not a.segment
    sa.delete(shm_name)
    sa.delete(shm_name + "-2")


# ---------------------------------------------------------------- file:// names

def test_file_scheme(tmp_path):
    path = tmp_path / "arr.npy"
    name = "file://" + str(path)
    a = sa.create(name, (4, 2), "<u2", order="F")
    a[:] = [[1, 2], [3, 4], [5, 6], [7, 8]]
    a.segment.msync()
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (np.load(path) == a).all() and np.load(path).flags.f_contiguous
    with pytest.raises(FileExistsError):
        sa.create(name, 1)
    assert sa.exists(name) and not sa.exists("file://" + str(tmp_path / "nope.npy"))
    b = sa.attach(name, ro=True)
    assert (b == a).all() and not b.flags.writeable
    rel = os.path.relpath(path)
    assert (sa.attach("file://" + rel) == a).all()           # relative paths work too
    sa.delete(name)
    assert not path.exists() and (b == a).all()
    with pytest.raises(FileNotFoundError):
        sa.delete(name)
    with pytest.raises(FileNotFoundError):
        sa.attach(name)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_attach_numpy_written_versions(tmp_path, version):
    """Any .npy numpy writes attaches, whatever its version and alignment."""
    x = np.arange(15, dtype=">i4").reshape(3, 5)
    for arr in (x, np.asfortranarray(x)):
        f = tmp_path / "v.npy"
        with open(f, "wb") as fp:
            np.lib.format.write_array(fp, arr, version=version)
        m = sa.attach("file://" + str(f))
        assert_same_array(m, arr)
        assert m.flags.f_contiguous == arr.flags.f_contiguous
        m[0, 0] = -1                                       # writes reach the file
        m.segment.msync()
        del m
        assert np.load(f)[0, 0] == -1


def test_attach_npy_in_dev_shm(shm_name):
    """A valid .npy made elsewhere attaches by shm name but is not list()ed."""
    x = np.linspace(0, 1, 7)
    with open(SHM / shm_name, "wb") as fp:
        np.save(fp, x)
    try:
        a = sa.attach(shm_name)
        assert (a == x).all() and type(a) is sa.ndarray
        assert shm_name not in [i.name for i in sa.list()]
        assert sa.exists(shm_name)
    finally:
        sa.delete(shm_name)


# ---------------------------------------------------------------- errors

def test_create_existing_name(shm_name):
    a = sa.create(shm_name, 4, np.int64)
    a[:] = 5
    try:
        for call in (lambda: sa.create(shm_name, 4, np.int64),
                     lambda: sa.create("shm://" + shm_name, 100),
                     lambda: sa.from_array(shm_name, np.zeros(3))):
            with pytest.raises(FileExistsError) as info:
                call()
            assert shm_name in str(info.value)
        assert (sa.attach(shm_name) == 5).all()           # not clobbered
    finally:
        sa.delete(shm_name)


def test_missing_name(shm_name):
    for call in (lambda: sa.attach(shm_name), lambda: sa.attach(shm_name, ro=True),
                 lambda: sa.delete(shm_name), lambda: sa.attach("shm://" + shm_name),
                 lambda: sa.delete("shm://" + shm_name)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert shm_name in str(info.value)
    assert sa.exists(shm_name) is False


BAD_NAMES = [
    ("", "empty"),
    ("shm://", "empty"),
    ("/", "'/'"),
    ("a/b", "'/'"),
    ("/leading", "'/'"),
    ("shm://a/b", "'/'"),
    ("nul\0byte", "NUL"),
    ("file://with\0nul", "NUL"),
    ("x" * 256, "longer"),
    ("ftp://x", "scheme"),
    ("http://host/x", "scheme"),
    ("file://", "path"),
    (".", "'\\.'"),
    ("..", "'\\.'"),
]


@pytest.mark.parametrize("bad, rule", BAD_NAMES, ids=lambda v: repr(v)[:20])
def test_bad_names(bad, rule):
    calls = [lambda: sa.create(bad, 3), lambda: sa.attach(bad),
             lambda: sa.attach(bad, ro=True), lambda: sa.delete(bad),
             lambda: sa.exists(bad), lambda: sa.from_array(bad, np.zeros(2))]
    for call in calls:
        with pytest.raises(ValueError, match=rule) as info:
            call()
        assert "name" in str(info.value)


def test_non_string_name():
    for bad in (None, 3, b"bytes", Path("x")):
        with pytest.raises(TypeError):
            sa.create(bad, 3)
        with pytest.raises(TypeError):
            sa.attach(bad)


def test_longest_name(name_factory):
    """255 bytes (NAME_MAX) is a valid name; one more byte is not."""
    base = name_factory()
    name = base + "x" * (255 - len(base))
    a = sa.create(name, 2)
    try:
        assert sa.attach(name).shape == (2,) and sa.exists(name)
    finally:
        sa.delete(name)
    with pytest.raises(ValueError, match="longer"):
        sa.create(name + "x", 2)
    del a


@pytest.mark.parametrize("shape", [-1, (-1,), (3, -2), (0, -1)])
def test_negative_shape(shm_name, shape):
    with pytest.raises(ValueError, match="negative"):
        sa.create(shm_name, shape)
    assert not sa.exists(shm_name)


@pytest.mark.parametrize("shape", [1.5, (2.0,), "3", (None,), [[2]]])
def test_non_integer_shape(shm_name, shape):
    with pytest.raises(TypeError):
        sa.create(shm_name, shape)
    assert not sa.exists(shm_name)


def test_bad_order_and_dtype(shm_name):
    with pytest.raises(ValueError, match="order"):
        sa.create(shm_name, 3, order="K")
    with pytest.raises(TypeError):
        sa.create(shm_name, 3, "not a dtype")
    assert not sa.exists(shm_name)


def test_out_of_order_fields(shm_name):
    """Overlapping or out-of-order fields have no .npy description (numpy.save
    refuses them the same way): a clean ValueError, nothing created."""
    dt = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i4"], "offsets": [4, 0]})
    with pytest.raises(ValueError):
        sa.create(shm_name, 3, dt)
    assert not sa.exists(shm_name)


def _write(name: str, data: bytes) -> None:
    fd = os.open(SHM / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_corrupt_segments(shm_name):
    """A few representative corruptions (the fuzzer in test_faults_core.py
    generates thousands): ValueError naming the array, nothing unlinked."""
    good = np.lib.format.magic(1, 0)
    buf = io.BytesIO()
    np.save(buf, np.arange(100.0))
    valid = buf.getvalue()
    cases = {
        "empty file": b"",
        "not npy": b"hello world, this is not an array\n" * 10,
        "magic only": b"\x93NUMPY",
        "bad version": b"\x93NUMPY\x07\x00" + valid[8:],
        "header past end": good + (60000).to_bytes(2, "little") + b"{",
        "truncated header": valid[:40],
        "truncated data": valid[:-1],
        "not a dict": good + (16).to_bytes(2, "little") + b"[1, 2, 3]      \n",
        "object dtype": valid.replace(b"'<f8'", b"'|O' "),
        "bad descr": valid.replace(b"'<f8'", b"'<q3'"),
        "shape too big": valid.replace(b"(100,)", b"(900,)"),
    }
    try:
        for what, data in cases.items():
            _write(shm_name, data)
            for ro in (False, True):
                with pytest.raises(ValueError) as info:
                    sa.attach(shm_name, ro=ro)
                assert shm_name in str(info.value), (what, info.value)
            assert sa.exists(shm_name)              # attach never unlinks
            assert shm_name not in [i.name for i in sa.list()]
    finally:
        os.unlink(SHM / shm_name)


def test_non_regular_files(shm_name, tmp_path):
    """A FIFO or a directory under a name is refused without blocking."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.mkfifo(SHM / shm_name)
    try:
        for name in (shm_name, "file://" + str(fifo)):
            for ro in (False, True):
                with pytest.raises(ValueError, match="regular"):
                    sa.attach(name, ro=ro)
            assert sa.exists(name)
        assert shm_name not in [i.name for i in sa.list()]
    finally:
        os.unlink(SHM / shm_name)
    with pytest.raises(OSError):
        sa.attach("file://" + str(tmp_path))
    with pytest.raises(ValueError, match="regular"):
        sa.attach("file:///dev/null", ro=True)


# ---------------------------------------------------------------- read-only

def test_readonly_attach(shm_name):
    a = sa.create(shm_name, (3, 3), np.int16)
    a[:] = 1
    try:
        r = sa.attach(shm_name, ro=True)
        assert type(r) is sa.ndarray and not r.flags.writeable
        assert r.segment.readonly and not a.segment.readonly
        assert memoryview(r.segment).readonly
        assert mapping_perms(r.segment.addr) == "r--s"    # PROT_READ mapping
        assert mapping_perms(a.segment.addr) == "rw-s"
        for write in (lambda: r.__setitem__(0, 5), lambda: r.fill(3),
                      lambda: np.add(r, 1, out=r), lambda: r[1:].__setitem__(..., 0),
                      lambda: r.T.__setitem__((0, 0), 9)):
            with pytest.raises(ValueError, match="read-only"):
                write()
        with pytest.raises(ValueError, match="WRITEABLE"):
            r.setflags(write=True)
        with pytest.raises(ValueError):
            r[1:].setflags(write=True)
        with pytest.raises(ValueError):
            np.frombuffer(r.segment, np.uint8).setflags(write=True)
        with pytest.raises(ValueError):
            r.flags.writeable = True
        assert (r == 1).all()
        a[0, 0] = 8                                     # the writer is seen
        assert r[0, 0] == 8
        cp = r.copy()                                   # a private copy is writable
        cp[:] = 0
        assert r[1, 1] == 1
    finally:
        sa.delete(shm_name)


# ---------------------------------------------------------------- modes, permissions

def test_default_mode_0600(shm_name, tmp_path):
    a = sa.create(shm_name, 1)
    try:
        assert stat.S_IMODE(os.stat(SHM / shm_name).st_mode) == 0o600
        assert os.stat(SHM / shm_name).st_uid == os.geteuid()
    finally:
        sa.delete(shm_name)
    b = sa.from_array(shm_name, np.ones(2))
    try:
        assert stat.S_IMODE(os.stat(SHM / shm_name).st_mode) == 0o600
    finally:
        sa.delete(shm_name)
    del a, b


@pytest.mark.parametrize("mode", [0o400, 0o640, 0o644, 0o660, 0o666, 0o604])
def test_mode_honoured(name_factory, tmp_path, mode):
    want = mode & ~umask()
    n1, n2 = name_factory(), name_factory()
    f = tmp_path / "m.npy"
    try:
        sa.create(n1, 2, mode=mode)
        sa.from_array(n2, np.ones(2), mode=mode)
        sa.create("file://" + str(f), 2, mode=mode)
        for p in (SHM / n1, SHM / n2, f):
            assert stat.S_IMODE(os.stat(p).st_mode) == want, oct(os.stat(p).st_mode)
    finally:
        safe_delete(n1)
        safe_delete(n2)


_AS_NOBODY = r'''
import json, os, sys, traceback
import numpy as np
import sharedarray as sa
name = sys.argv[1]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)                   # everything is imported: drop root now
out = {"uid": os.getuid()}
def attempt(key, fn):
    try:
        out[key] = ["ok", fn()]
    except BaseException as exc:
        out[key] = [type(exc).__name__, str(exc)]
attempt("attach", lambda: sa.attach(name).tolist())
attempt("attach_ro", lambda: sa.attach(name, ro=True).tolist())
attempt("exists", lambda: sa.exists(name))
attempt("listed", lambda: name in [i.name for i in sa.list()])
attempt("delete", lambda: sa.delete(name))
print(json.dumps(out))
'''


def test_other_users_segment(shm_name):
    """Root creates; a process running as `nobody` gets PermissionError for a
    0600 segment (attach, read-only attach, delete), may read a 0644 one but
    not map it writable; exists() and list() neither fail nor crash."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create as one user and attach as another")
    sticky = bool(os.stat(SHM).st_mode & stat.S_ISVTX)
    sa.from_array(shm_name, np.arange(3.0))
    try:
        out = json.loads(run_python(_AS_NOBODY, shm_name).stdout)
        assert out["uid"] == 65534
        assert out["attach"][0] == "PermissionError" and shm_name in out["attach"][1]
        assert out["attach_ro"][0] == "PermissionError"
        assert out["exists"] == ["ok", True]
        assert out["listed"] == ["ok", False]         # unreadable: skipped, no crash
        if sticky:
            assert out["delete"][0] == "PermissionError"
        assert sa.exists(shm_name)
    finally:
        safe_delete(shm_name)

    sa.from_array(shm_name, np.arange(3.0), mode=0o644)
    try:
        if umask() & 0o004:
            pytest.skip("the umask removes the read bit for others")
        out = json.loads(run_python(_AS_NOBODY, shm_name).stdout)
        assert out["attach"][0] == "PermissionError"
        assert out["attach_ro"] == ["ok", [0.0, 1.0, 2.0]]
        assert out["listed"] == ["ok", True]
        if sticky:
            assert out["delete"][0] == "PermissionError"
    finally:
        safe_delete(shm_name)


# ---------------------------------------------------------------- ndarray semantics

def test_ndarray_subclass_semantics(shm_name):
    a = sa.create(shm_name, (4, 5), np.float64)
    try:
        a[:] = np.arange(20).reshape(4, 5)
        assert isinstance(a, np.ndarray) and type(a) is sa.ndarray
        seg = a.segment
        # views and slices share memory and stay sharedarray.ndarray
        for v in (a[1:], a[:, 2], a[::2, ::-1], a.T, a.reshape(20), a.ravel(),
                  a.view(np.int64), a[...], a[None], a[1], np.transpose(a),
                  a.swapaxes(0, 1), np.split(a, 2)[1], np.asanyarray(a),
                  a.real, a[np.newaxis, :, 1:]):
            assert type(v) is sa.ndarray and v.segment is seg
            assert np.shares_memory(v, a)
        # results that do not live in shared memory are plain numpy
        results = {
            "a + 1": a + 1, "a * a": a * a, "-a": -a, "np.sqrt(a)": np.sqrt(a),
            "a.copy()": a.copy(), "a.copy('F')": a.copy("F"),
            "copy.copy(a)": copy.copy(a), "copy.deepcopy(a)": copy.deepcopy(a),
            "np.concatenate": np.concatenate([a, a]), "np.stack": np.stack([a, a]),
            "a.astype": a.astype(np.float32), "a.sum(axis=0)": a.sum(axis=0),
            "a[[0, 2]]": a[[0, 2]], "a[a > 3]": a[a > 3], "np.array(a)": np.array(a),
            "a.flatten()": a.flatten(), "a.T @ a": a.T @ a, "np.sort(a)": np.sort(a),
            "np.where": np.where(a > 3, a, 0),
            "np.copy(a)": np.copy(a), "a.cumsum()": a.cumsum(),
        }
        for what, r in results.items():
            assert type(r) is np.ndarray, what
            assert not np.shares_memory(r, a), what
            assert getattr(r, "segment", None) is None, what
        assert type(copy.copy(a)) is np.ndarray and copy.deepcopy(a)[3, 4] == 19
        # full reductions are numpy scalars
        for what, r in {"a.sum()": a.sum(), "a.max()": a.max(), "a.mean()": a.mean(),
                        "np.sum(a)": np.sum(a), "a[0, 0]": a[0, 0],
                        "a.dot(a[0]).sum()": a.dot(a[0]).sum()}.items():
            assert type(r) is np.float64, what
        assert a.sum() == 190.0 and type(a.all()) is np.bool_ and type(a.argmax()) is np.intp
        # in-place operations keep the type and the memory
        b = a
        a += 1
        a *= 2
        np.multiply(a, 1, out=a)
        assert a is b and type(a) is sa.ndarray and a.segment is seg
        assert a[3, 4] == 40.0
        other = sa.attach(shm_name)
        assert other[3, 4] == 40.0
    finally:
        sa.delete(shm_name)


def test_segment_attributes(shm_name):
    a = sa.create(shm_name, 1000, np.uint8)
    try:
        seg = a.segment
        assert isinstance(seg, sa.Segment)
        assert seg.name == shm_name and shm_name in repr(seg)
        assert isinstance(seg.addr, int) and seg.addr % PAGE == 0 and seg.addr != 0
        assert seg.size == os.stat(SHM / shm_name).st_size == PAGE + 1000
        assert a.ctypes.data == seg.addr + PAGE
        assert sa.attach("shm://" + shm_name).segment.name == shm_name
        a[:] = 7
        assert seg.msync() is None
        for flags in (sa.MS_SYNC, sa.MS_ASYNC, sa.MS_SYNC | sa.MS_INVALIDATE):
            assert seg.msync(flags) is None
            assert seg.msync(flags=flags) is None
        assert len({sa.MS_ASYNC, sa.MS_SYNC, sa.MS_INVALIDATE}) == 3
        with pytest.raises(OSError):
            seg.msync(-1)
        try:
            seg.mlock()
        except OSError as exc:                         # RLIMIT_MEMLOCK without privileges
            assert exc.errno in (errno.EPERM, errno.ENOMEM, errno.EAGAIN)
        else:
            assert seg.munlock() is None
        assert seg.populate() in (True, False)          # False: kernel < 5.14
        with pytest.raises(TypeError):
            sa.Segment()
        with pytest.raises(AttributeError):
            seg.name = "other"
        assert np.zeros(3).view(sa.ndarray).segment is None    # not shared
        assert sa.ndarray((2,)).segment is None
    finally:
        sa.delete(shm_name)


def test_refill_segment(shm_name):
    """The executor's reuse of a released copy: new contents, layout and
    token in place; anything that does not fill it exactly is refused."""
    from sharedarray.core import create_segment, refill_segment, wrap
    seg = create_segment(shm_name, (4, 6), np.float64, temporary=True)
    try:
        old = pickle.dumps(wrap(seg))
        token, size = seg.meta.token, seg.size
        new = np.asfortranarray(np.arange(48, dtype=np.int32).reshape(8, 6))
        assert refill_segment(seg, new)
        assert seg.size == size and seg.meta.token != token and seg.meta.temporary
        got = sa.attach(shm_name)                     # another mapping, from the header
        assert got.dtype == np.int32 and got.shape == (8, 6) and got.flags.f_contiguous
        assert np.array_equal(got, new)
        assert np.array_equal(np.load(SHM / shm_name), new)
        with pytest.raises(sa.StaleHandleError):
            pickle.loads(old)
        del got
        assert not refill_segment(seg, np.zeros(5))   # other size: untouched
        assert not refill_segment(seg, np.zeros(49, np.float32))
        assert np.array_equal(sa.attach(shm_name), new)
        assert not refill_segment(sa.attach(shm_name, ro=True).segment, new)
    finally:
        sa.delete(shm_name)


def test_mapping_outlives_names_and_arrays(shm_name):
    """No sequence of del / delete / gc leaves an array on unmapped memory."""
    a = sa.create(shm_name, 1 << 16, np.int32)
    a[:] = np.arange(1 << 16)
    view = a[100:200:3]
    mv = memoryview(a)[::-1]
    seg_ref = weakref.ref(a.segment)
    del a
    sa.delete(shm_name)
    gc.collect()
    assert not sa.exists(shm_name) and seg_ref() is not None
    assert (view == np.arange(100, 200, 3)).all()
    assert mv[0] == (1 << 16) - 1
    view[0] = -5                                        # still writable memory
    assert view[0] == -5
    del view
    gc.collect()
    assert seg_ref() is not None                        # the memoryview holds it
    assert mv[-1] == 0
    mv.release()
    del mv
    gc.collect()
    assert seg_ref() is None                            # unmapped when unused


def test_mapping_outlives_segment_reference(shm_name):
    """Even in a cycle collected by gc, the array keeps its segment mapped."""
    a = sa.create(shm_name, 100)
    a[:] = 3
    sa.delete(shm_name)
    holder: list = [a[10:20]]
    holder.append(holder)                               # a reference cycle
    seg_ref = weakref.ref(a.segment)
    del a
    gc.collect()
    v = holder[0]
    del holder
    gc.collect()
    assert seg_ref() is not None and (v == 3).all() and v.sum() == 30


def test_list(name_factory):
    specs = {name_factory(): ((3, 4), np.dtype("<f4")),
             name_factory(): ((), np.dtype(">i8")),
             name_factory(): ((0, 2), np.dtype([("a", "u1"), ("b", "<U3", (2,))])),
             name_factory(): ((2, 2, 2), np.dtype("<M8[ms]"))}
    try:
        for name, (shape, dt) in specs.items():
            sa.create(name, shape, dt)
        by_name = {i.name: i for i in sa.list()}
        for name, (shape, dt) in specs.items():
            info = by_name[name]
            assert info.dtype == dt and info.shape == shape and info.dims == shape
            assert info.nbytes == math.prod(shape) * dt.itemsize
            assert info.pid == os.getpid()
        names = [i.name for i in sa.list()]
        assert names == sorted(names)
    finally:
        for name in specs:
            safe_delete(name)
    listed = {i.name for i in sa.list()}
    assert not listed & set(specs)


def test_list_skips_foreign_files(name_factory):
    """Foreign objects in /dev/shm are skipped and never crash list()."""
    junk, plain, trunc, empty, fifo, folder, mine = (name_factory() for _ in range(7))
    made = []
    os.mkdir(SHM / folder)
    try:
        _write(junk, os.urandom(5000))
        made.append(junk)
        with open(SHM / plain, "wb") as f:
            np.save(f, np.arange(10))
        made.append(plain)
        sa.create(trunc, 1000)
        made.append(trunc)
        os.truncate(SHM / trunc, 100)                   # ours, but truncated
        _write(empty, b"")
        made.append(empty)
        os.mkfifo(SHM / fifo)
        made.append(fifo)
        sa.create(mine, 5)
        made.append(mine)
        names = {i.name for i in sa.list()}
        assert mine in names
        assert not names & {junk, plain, trunc, empty, fifo, folder}
        assert all(isinstance(i, sa.ArrayInfo) for i in sa.list())
    finally:
        for n in made:
            os.unlink(SHM / n)
        os.rmdir(SHM / folder)


def test_exists(shm_name, tmp_path):
    assert sa.exists(shm_name) is False
    sa.create(shm_name, 1)
    assert sa.exists(shm_name) is True and sa.exists("shm://" + shm_name) is True
    sa.delete(shm_name)
    assert sa.exists(shm_name) is False
    f = tmp_path / "e.npy"
    assert sa.exists("file://" + str(f)) is False
    f.write_bytes(b"anything")
    assert sa.exists("file://" + str(f)) is True         # whatever it holds


def test_delete_keeps_attachments_and_frees_name(shm_name):
    a = sa.create(shm_name, 10, np.int8)
    a[:] = 1
    sa.delete(shm_name)
    b = sa.create(shm_name, 10, np.int8)                # the name is free again
    try:
        assert (a == 1).all() and (b == 0).all()
        b[:] = 2
        assert (a == 1).all()                            # a different object
        assert (sa.attach(shm_name) == 2).all()
    finally:
        sa.delete(shm_name)


# ================================================ names, modes, limits, dtypes

def test_relative_file_name_means_the_current_directory(tmp_path, monkeypatch):
    """A relative file:// name is resolved against the cwd of each call."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    monkeypatch.chdir(one)
    sa.from_array("file://data.npy", np.arange(3))
    assert sa.attach("file://data.npy").tolist() == [0, 1, 2]
    monkeypatch.chdir(two)
    assert not sa.exists("file://data.npy")
    with pytest.raises(FileNotFoundError):
        sa.attach("file://data.npy")
    with pytest.raises(FileNotFoundError):
        sa.delete("file://data.npy")
    assert (one / "data.npy").exists()
    a = sa.create("file://data.npy", 2, "u1")
    assert a.segment.name == "file://" + str(two / "data.npy")
    assert sa.attach("file://data.npy").tolist() == [0, 0]
    sa.delete("file://data.npy")
    assert (one / "data.npy").exists() and not (two / "data.npy").exists()


@pytest.mark.parametrize("mode", [-1, 2 ** 32, 0o4777, 0o2700, 0o1777, 0o1000,
                                  True, False, 1.5, "600", None])
def test_mode_outside_permission_bits_is_refused(shm_name, mode):
    with pytest.raises(ValueError, match="mode"):
        sa.create(shm_name, 3, mode=mode)
    with pytest.raises(ValueError, match="mode"):
        sa.from_array(shm_name, np.ones(3), mode=mode)
    assert not sa.exists(shm_name)


@pytest.mark.parametrize("mode", [0, 0o400, 0o640, 0o777, np.int32(0o600)])
def test_mode_permission_bits_are_accepted(shm_name, mode):
    sa.create(shm_name, 3, mode=mode)
    try:
        st_mode = os.stat(SHM / shm_name).st_mode
        assert stat.S_IMODE(st_mode) == int(mode) & ~umask()
    finally:
        sa.delete(shm_name)


_RSS_AFTER_ATTACH = textwrap.dedent("""
    import resource, sys
    import sharedarray as sa
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        sa.attach(sys.argv[1])
    except ValueError as exc:
        print(type(exc).__name__, exc)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) // 1024)
""")


def test_attach_refuses_a_long_header_before_reading_it(tmp_path):
    """A header length over the limit is refused from the preamble alone: the
    claimed header is never copied (a claim of 256 MiB costs no memory)."""
    path = tmp_path / "claims.npy"
    claimed = 256 << 20
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x02\x00" + claimed.to_bytes(4, "little"))
        f.write(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }")
        f.truncate(12 + claimed + 8)          # sparse: the claim fits the file
    out = run_python(_RSS_AFTER_ATTACH, f"file://{path}").stdout.splitlines()
    assert out[0].startswith("ValueError") and "limit" in out[0], out
    assert int(out[1]) < 64, f"attach grew the process by {out[1]} MiB"


def _wide_dtype(header_bytes: int) -> np.dtype:
    """A structured dtype whose descr takes about ``header_bytes``."""
    width = 2000                               # long names: few fields
    n = header_bytes // (width + 16)
    return np.dtype([(f"{i:0{width}d}", "u1") for i in range(n)])


def test_one_header_limit_for_create_attach_handles_and_list(shm_name):
    """What create writes, attach, handles and list() all read; over the
    limit, create refuses with a clear error and leaves nothing behind."""
    from sharedarray import _ext
    from sharedarray._header import MAX_HEADER
    assert MAX_HEADER == _ext.MAX_HEADER
    big = _wide_dtype(MAX_HEADER + 50_000)
    with pytest.raises(ValueError, match="limit"):
        sa.create(shm_name, 2, big)
    with pytest.raises(ValueError, match="limit"):
        sa.share(np.zeros(2, big))
    assert not sa.exists(shm_name)
    fits = _wide_dtype(MAX_HEADER - 50_000)
    a = sa.create(shm_name, 2, fits)
    try:
        assert header_length(str(SHM / shm_name)) > 10_000   # np.load's default
        a[1][5] = 7
        b = sa.attach(shm_name)
        assert b.dtype == fits and b[1][5] == 7
        c = pickle.loads(pickle.dumps(b))
        assert c.dtype == fits and c[1][5] == 7
        assert [i.dtype == fits for i in sa.list() if i.name == shm_name] == [True]
        loaded = np.load(SHM / shm_name, max_header_size=MAX_HEADER)
        assert loaded[1][5] == 7
    finally:
        sa.delete(shm_name)


ALIGNED_DTYPES = [
    np.dtype([("a", "u1"), ("b", "<f8")], align=True),
    np.dtype([("a", "u1"), ("b", [("c", "u1"), ("d", "<i4")])], align=True),
    np.dtype([("a", "u1"), ("b", np.dtype([("c", "u1"), ("d", "<i8")]))],
             align=True),
    np.dtype([("x", "u1"), ("y", np.dtype([("c", "u1"), ("d", "<i4")], align=True),
                            (2,))]),
    np.dtype({"names": ["p", "q"], "formats": ["u1", "<i2"],
              "titles": ["first", "second"]}, align=True),
    np.dtype([("a", "u1"), ("b", "<f4", (3,))], align=True),
]


@pytest.mark.parametrize("dt", ALIGNED_DTYPES, ids=repr)
def test_aligned_structs_attach_with_their_flag(shm_name, dt):
    a = sa.from_array(shm_name, np.zeros(3, dt))
    try:
        for got in (sa.attach(shm_name).dtype, sa.attach(shm_name, ro=True).dtype,
                    a.dtype, pickle.loads(pickle.dumps(a)).dtype):
            assert got == dt and repr(got) == repr(dt)
            assert got.isalignedstruct == dt.isalignedstruct
        out = run_python("import sharedarray as sa, sys; "
                         "print(repr(sa.attach(sys.argv[1]).dtype))", shm_name)
        assert out.stdout.strip() == repr(dt)
    finally:
        sa.delete(shm_name)


@pytest.mark.parametrize("descr", ["'|S-1'", "'|V-8'", "'<U-1'",
                                   "[('a', '|S-1')]", "'|S99999999999999999999'"])
def test_negative_or_overflowing_itemsize_is_refused(shm_name, descr):
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}".encode()
    body = text + b" " * (4096 - 10 - len(text) - 1) + b"\n"
    with open(SHM / shm_name, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body)
        f.write(bytes(64))
    try:
        with pytest.raises(ValueError):
            sa.attach(shm_name)
    finally:
        os.unlink(SHM / shm_name)


def test_empty_structured_dtype_written_by_numpy_attaches(tmp_path):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(4, np.dtype([])))
    a = sa.attach(f"file://{path}")
    assert a.dtype == np.dtype([]) and a.dtype.itemsize == 0 and a.shape == (4,)


def test_reductions_are_numpy_scalars(shm_name):
    """On numpy 1.x as on 2.x: full reductions are scalars, not 0-d arrays."""
    a = sa.from_array(shm_name, np.arange(6.0).reshape(2, 3))
    try:
        for r in (a.sum(), np.max(a), a.mean(), a.std(), np.add.reduce(a, axis=None),
                  a.min(), a[0].prod(), np.sum(a), a.any(), np.median(a)):
            assert isinstance(r, np.generic), type(r)
            hash(r)
        assert float(a.mean()) == 2.5
        assert type(a.sum(axis=0)) is np.ndarray
        assert type(np.add(a[0, 0], 1)) is not sa.ndarray
    finally:
        sa.delete(shm_name)


# ================================================================ clear errors

def test_unencodable_name_is_a_value_error():
    for name in ("\udc80", "file://\udc80.npy", "shm://x\udcff"):
        with pytest.raises(ValueError, match="invalid name"):
            sa.create(name, 3)
        with pytest.raises(ValueError, match="invalid name"):
            sa.attach(name)


@pytest.mark.parametrize("ro", [False, True])
def test_attaching_a_directory_says_so(shm_name, tmp_path, ro):
    os.mkdir(SHM / shm_name)
    try:
        for name in (shm_name, f"file://{tmp_path}"):
            with pytest.raises((OSError, ValueError), match="directory|not a regular file") as e:
                sa.attach(name, ro=ro)
            assert getattr(e.value, "errno", None) != errno.EINVAL
    finally:
        os.rmdir(SHM / shm_name)


def test_full_shm_error_for_share_does_not_suggest_file_names(shm_name, monkeypatch):
    from sharedarray import _ext

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_ext, "create", full)
    with pytest.raises(OSError) as e:
        sa.share(np.ones(1000))
    assert e.value.errno == errno.ENOSPC
    assert "file://" not in str(e.value) and "--shm-size" in str(e.value)
    with pytest.raises(OSError) as e:
        sa.create(shm_name, 1000)
    assert "file://" in str(e.value)


def test_a_full_dev_shm_asks_the_space_keepers_once(shm_name, tmp_path, monkeypatch):
    """ENOSPC in /dev/shm: every registered keeper of reusable segments is
    asked to free space (one that fails counts as freeing nothing) and the
    creation is tried once more, only if one did.  A file on disk is not
    helped by unlinking shared memory: no keeper is asked."""
    from sharedarray import _ext
    from sharedarray import core as sa_core

    real = _ext.create
    calls: list[str] = []

    def full_once(*args, **kwargs):
        calls.append("create")
        if calls.count("create") == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    def broken() -> bool:
        calls.append("broken")
        raise RuntimeError("a keeper with a bug")

    freed = [True]

    def keeper() -> bool:
        calls.append("keeper")
        return freed[0]

    monkeypatch.setattr(sa_core, "_space_keepers", [broken, keeper])
    monkeypatch.setattr(_ext, "create", full_once)
    arr = sa.create(shm_name, 10)
    assert calls == ["create", "broken", "keeper", "create"]
    assert arr.shape == (10,) and not arr.any()
    del arr
    sa.delete(shm_name)

    calls.clear()
    freed[0] = False                      # nothing to free: the error at once
    with pytest.raises(OSError) as e:
        sa.create(shm_name, 10)
    assert e.value.errno == errno.ENOSPC and "--shm-size" in str(e.value)
    assert calls == ["create", "broken", "keeper"] and not sa.exists(shm_name)

    calls.clear()
    on_disk = f"file://{tmp_path}/x"
    with pytest.raises(OSError) as e:
        sa.create(on_disk, 10)
    assert e.value.errno == errno.ENOSPC and calls == ["create"]


# ---------------------------------------------------------------- refillable copies: the lock

def _refillable_name() -> str:
    from sharedarray import _names
    return _names.generate(refillable=True)


def test_every_mapping_of_a_refillable_copy_holds_a_shared_lock() -> None:
    """What the executor's reuse rule stands on: while any process maps a
    refillable copy, nobody gets the exclusive lock; once none does, the
    lock is granted."""
    from sharedarray import _names
    from sharedarray.core import lock_exclusive
    name = _refillable_name()
    sa.from_array(name, np.arange(10.0))      # the creator's mapping holds none
    try:
        fd = lock_exclusive(name)
        assert fd is not None
        os.close(fd)
        a = sa.attach(name, ro=True)
        assert lock_exclusive(name) is None
        v = a[2:5]
        del a
        assert lock_exclusive(name) is None   # a view keeps the mapping
        del v
        fd = lock_exclusive(name)
        assert fd is not None
        os.close(fd)
        # Another process: held while it maps the copy, released when it exits.
        code = ("import sys, sharedarray as sa; a = sa.attach(sys.argv[1]); "
                "print(float(a.sum()), flush=True); sys.stdin.read()")
        proc = subprocess.Popen([sys.executable, "-c", code, name], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "45.0"
        assert lock_exclusive(name) is None
        proc.stdin.close()
        assert proc.wait(60) == 0
        fd = lock_exclusive(name)
        assert fd is not None
        os.close(fd)
        assert not _names.is_refillable(_names.parse("sa-1-00ab"))
        with pytest.raises(ValueError):
            lock_exclusive("sa-1-00ab")
    finally:
        sa.delete(name)


def test_after_unmap_is_released_once_the_mapping_and_its_lock_are_gone() -> None:
    """``Segment.after_unmap`` dies after the segment's unmap and the release
    of its shared lock: a finalizer on it may hand the object on (the
    executor's released results), while finalizers on the segment itself run
    while it is still mapped."""
    import weakref

    from sharedarray.core import attach_segment, lock_exclusive
    name = _refillable_name()
    sa.from_array(name, np.arange(10.0))
    try:
        seg = attach_segment(name)
        assert seg.after_unmap is None
        seen: dict = {}

        def probe(key: str) -> None:
            fd = lock_exclusive(name)
            seen[key] = fd is not None
            if fd is not None:
                os.close(fd)

        class Marker:
            pass

        marker = Marker()
        seg.after_unmap = marker
        assert seg.after_unmap is marker
        weakref.finalize(seg, probe, "segment")
        weakref.finalize(marker, probe, "after_unmap")
        del marker
        assert not seen                      # held by the segment
        del seg
        assert seen == {"segment": False, "after_unmap": True}
        seg = attach_segment(name)
        seg.after_unmap = 1
        seg.after_unmap = None
        assert seg.after_unmap is None
    finally:
        sa.delete(name)


def test_rename_noreplace_never_replaces() -> None:
    from sharedarray import _ext
    a, b = (f"/dev/shm/{_refillable_name()}" for _ in range(2))
    open(a, "w").close()
    open(b, "w").close()
    try:
        with pytest.raises(FileExistsError):
            _ext.rename_noreplace(a, b)
        os.unlink(b)
        _ext.rename_noreplace(a, b)
        assert os.path.exists(b) and not os.path.exists(a)
        with pytest.raises(FileNotFoundError):
            _ext.rename_noreplace(a, b + "x")
    finally:
        for p in (a, b):
            if os.path.exists(p):
                os.unlink(p)


def test_attach_waits_for_a_refill_then_sees_the_new_identity() -> None:
    """An attach that starts while the copy is being rewritten (the exclusive
    lock is held) waits, then reads the header as it is after the refill."""
    import threading

    from sharedarray.core import attach_segment, lock_exclusive
    name = _refillable_name()
    sa.from_array(name, np.arange(10.0))
    try:
        fd = lock_exclusive(name)
        got: list = []
        t = threading.Thread(target=lambda: got.append(attach_segment(name, ro=True)))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not got           # blocked on the lock
        os.close(fd)
        t.join(60)
        assert len(got) == 1 and got[0].meta.shape == (10,)
    finally:
        sa.delete(name)


def test_same_bytes_compares_every_byte() -> None:
    from sharedarray import _ext
    a = np.zeros(1 << 16)
    b = a.copy()
    assert _ext.same_bytes(a, b) and _ext.same_bytes(a, a)
    b[-1] = -0.0                                 # == 0.0, other bytes
    assert not _ext.same_bytes(a, b)
    assert not _ext.same_bytes(a, b[:-1])         # other lengths
    with pytest.raises(TypeError):
        _ext.same_bytes(a, "not a buffer")


def test_start_time_identifies_a_process() -> None:
    from sharedarray import _ext
    mine = _ext.start_time(os.getpid())
    assert mine > 0 and _ext.start_time(os.getpid()) == mine
    assert _ext.start_time(2 ** 22 + 12345) == 0   # beyond pid_max: no such process


# ---------------------------------------------------------------- the header cache

def test_attach_reuses_the_validated_header_of_the_same_object(shm_name: str) -> None:
    from sharedarray import _ext
    _ext.forget()
    a = sa.create(shm_name, (2, 3), np.int16)
    first, second = sa.attach(shm_name), sa.attach(shm_name, ro=True)
    assert second.segment.meta is first.segment.meta        # read once
    assert second.shape == (2, 3) and second.dtype == np.int16
    assert not second.flags.writeable and first.flags.writeable
    # The same name made again is another object: its own header.
    sa.delete(shm_name)
    b = sa.create(shm_name, (3, 2), np.float32)
    try:
        c = sa.attach(shm_name)
        assert c.shape == (3, 2) and c.dtype == np.float32
        assert c.segment.meta.token == b.segment.meta.token != a.segment.meta.token
    finally:
        sa.delete(shm_name)


def test_a_header_rewritten_in_place_is_read_again(shm_name: str) -> None:
    # A header rewritten in place (np.save over an existing name) changes
    # the file's times, which are part of the cache key.
    from sharedarray import _ext
    _ext.forget()
    path = SHM / shm_name
    a = sa.create(shm_name, 16, np.uint8)
    try:
        assert sa.attach(shm_name).shape == (16,)
        os.utime(path, ns=(1, 1))
        assert sa.attach(shm_name).shape == (16,)
        data = bytearray(path.read_bytes())
        new = sa.create(shm_name + "-b", (4, 4), np.uint8)
        data[:4096] = (SHM / (shm_name + "-b")).read_bytes()[:4096]
        sa.delete(shm_name + "-b")
        with open(path, "r+b") as f:
            f.write(bytes(data[:4096]))
        os.utime(path, ns=(2, 2))
        b = sa.attach(shm_name)
        assert b.shape == (4, 4) and b.segment.meta.token == new.segment.meta.token
    finally:
        sa.delete(shm_name)
    del a


def test_foreign_headers_are_not_cached(shm_name: str) -> None:
    # A .npy this library did not write may change in place without its
    # times changing (a write through a mapping): attach reads it each time.
    path = SHM / shm_name
    np.save(path.open("wb"), np.zeros(8, np.uint8))
    try:
        assert sa.attach(shm_name).shape == (8,)
        st0 = os.stat(path)
        data = bytearray(path.read_bytes())
        text = data[10:data.index(b"}") + 1]
        new = text.replace(b"(8,)", b"(2, 4)")    # the padding after it shrinks
        data[10:10 + len(new)] = new
        with open(path, "r+b") as f:
            f.write(bytes(data))
        os.utime(path, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        assert sa.attach(shm_name).shape == (2, 4)
    finally:
        os.unlink(path)


def test_refillable_headers_are_not_cached() -> None:
    from sharedarray import _names, core
    name = _names.generate(refillable=True)
    seg = core.create_segment(name, 4, np.int64, temporary=True)
    try:
        b = sa.attach(name)
        assert b.shape == (4,)
        del b
        assert core.refill_segment(seg, np.arange(8, dtype=np.int32))
        c = sa.attach(name)
        assert c.shape == (8,) and c.dtype == np.int32 and c.tolist() == list(range(8))
        assert c.segment.meta.token == seg.meta.token
        del c
    finally:
        sa.delete(name)
