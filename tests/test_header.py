"""The .npy header codec: the C core's preamble check and the Python codec
give the same answers, on valid headers and on a fuzz corpus of broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharedarray import _ext, _header


def _both(data: bytes) -> tuple:
    """(result or error type) of the C check and of the Python twin."""
    out = []
    for split in (lambda d: _ext.preamble(d, "x"), lambda d: _header.split(d, "x")):
        try:
            out.append(split(data))
        except ValueError:
            out.append(ValueError)
    return tuple(out)


def _valid(dt: np.dtype, shape: tuple, fortran: bool = False) -> bytes:
    return _header.encode(_header.header_dict(dt, shape, fortran),
                          _header.comment("0123456789abcdef", 1, False,
                                          _header.aligned_flags(dt)))


@pytest.mark.parametrize("dt", ["<f8", "|u1", "<U3", [("a", "<i4"), ("b", "|S2")],
                                np.dtype([("a", "u1"), ("b", "<f8")], align=True)])
def test_encode_then_decode(dt):
    dt = np.dtype(dt)
    data = _valid(dt, (2, 3), True) + bytes(8)
    c, py = _both(data)
    assert c == py
    text, offset, version = c
    assert offset % _header.ALIGN == 0
    meta = _header.decode(text, offset, "x", version)
    assert meta.dtype == dt and repr(meta.dtype) == repr(dt)
    assert meta.shape == (2, 3) and meta.fortran and meta.token == "0123456789abcdef"
    assert meta.pid_ns == _header.PID_NS and meta.shm_dev == _header.SHM_DEV


@pytest.mark.parametrize("dt", ["<f8", [("é", "<i4")], [(f"f{i}", "<i4") for i in range(3000)]])
@pytest.mark.parametrize("temporary", [False, True])
def test_encode_new_is_encode_of_comment(dt, temporary, monkeypatch):
    # create's cached pieces give the bytes encode() gives (also for utf-8
    # and version-2 headers), and stay right when the time grows a digit.
    dt = np.dtype(dt)
    head = _header.header_dict(dt, (2, 3), False)
    aligned = _header.aligned_flags(dt)
    for now in (1234.5678, 1234.9991, 12345678.9, 12345679.5):
        monkeypatch.setattr(_header.time, "time", lambda now=now: now)
        for token in ("0123456789abcdef", "fedcba9876543210"):
            expect = _header.encode(head, _header.comment(token, 42, temporary, aligned,
                                                          int(now * 1000)))
            assert _header.encode_new(head, token, 42, temporary, aligned) == expect
    with pytest.raises(ValueError):
        _header.encode_new(head, "abc", 42, temporary, aligned)


def test_numpy_reads_what_we_write():
    import io
    data = _valid(np.dtype("<i2"), (3,)) + np.arange(3, dtype="<i2").tobytes()
    assert np.load(io.BytesIO(data)).tolist() == [0, 1, 2]


def _mutations() -> st.SearchStrategy[bytes]:
    base = st.sampled_from([_valid(np.dtype("<f8"), (4,)) + bytes(32),
                            _valid(np.dtype("<U2"), (1,)),
                            b"\x93NUMPY\x02\x00" + (20).to_bytes(4, "little") + b"{}" + b" " * 18,
                            b"\x93NUMPY\x03\x00" + (8).to_bytes(4, "little") + b"\xc3\xa9   \n\0 "])

    @st.composite
    def mutated(draw):
        data = bytearray(draw(base))
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["byte", "cut", "length", "version"]))
            if kind == "byte" and data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[draw(st.integers(0, len(data))):]
            elif kind == "length" and len(data) >= 12:
                n = draw(st.sampled_from([0, 1, 2, 4]))
                value = draw(st.one_of(st.integers(0, 1 << 32 - 1),
                                       st.just(_header.MAX_HEADER),
                                       st.just(_header.MAX_HEADER + 1)))
                data[8:8 + n] = value.to_bytes(4, "little")[:n]
            elif kind == "version" and len(data) >= 8:
                data[6] = draw(st.integers(0, 4))
                data[7] = draw(st.sampled_from([0, 0, 1]))
        return bytes(data)
    return st.one_of(mutated(), st.binary(max_size=64))


@settings(max_examples=1000, deadline=None)
@given(_mutations())
def test_c_and_python_agree_on_any_preamble(data):
    c, py = _both(data)
    assert c == py


def test_length_over_the_limit_is_refused_by_both():
    data = b"\x93NUMPY\x02\x00" + (_header.MAX_HEADER + 1).to_bytes(4, "little")
    data += b" " * (_header.MAX_HEADER + 8)
    assert _both(data) == (ValueError, ValueError)
    with pytest.raises(ValueError, match="limit"):
        _ext.preamble(data, "x")
