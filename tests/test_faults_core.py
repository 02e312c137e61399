"""Fault injection for the core layer: thousands of corrupt segments, racing
creators and attachers, and a /dev/shm too small for the array.

Everything that could crash an interpreter (a segfault or SIGBUS while
attaching a corrupt segment, a SIGBUS while writing to a full tmpfs) runs in
a child process whose exit status the test checks, so a crash fails the test
instead of taking pytest down.

``SA_FUZZ_CASES`` sets the number of corrupt segments (default 1500) and
``SA_RACE_ITERATIONS`` the create/delete cycles of the attach race (default
300); tools/valgrind_core.sh lowers both.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import sharedarray as sa

from conftest import SHM, private_shm_prefix

FUZZ_CASES = int(os.environ.get("SA_FUZZ_CASES", "1500"))
RACE_ITERATIONS = int(os.environ.get("SA_RACE_ITERATIONS", "300"))

pytestmark = pytest.mark.fault


def _run_child(code: str, *args: str, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter; it must exit 0 (no signal) and
    print one JSON object as its last line."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"child died (exit status {proc.returncode}; negative = signal)\n"
        f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- corrupt segments

FUZZ_CHILD = r'''
import io, json, os, random, sys
import numpy as np
import sharedarray as sa

base, tmpdir, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
MAGIC = b"\x93NUMPY"


def npy(text, version=1, pad=64, hlen=None, ver_bytes=None):
    """A .npy preamble + header text (str or bytes), padded like numpy's."""
    body = text if isinstance(text, bytes) else text.encode("utf8" if version == 3 else "latin1")
    pre = 10 if version == 1 else 12
    total = -(-(pre + len(body) + 1) // pad) * pad
    body = body + b" " * (total - pre - len(body) - 1) + b"\n"
    n = len(body) if hlen is None else hlen
    size = n.to_bytes(2 if version == 1 else 4, "little")
    return MAGIC + (ver_bytes or bytes([version, 0])) + size + body


def dict_text(descr, fortran=False, shape=(3,), extra=""):
    return "{'descr': %s, 'fortran_order': %r, 'shape': %s, %s}" % (
        descr if isinstance(descr, str) else repr(descr), fortran,
        shape if isinstance(shape, str) else repr(shape), extra)


DTYPES = ["<f8", ">i4", "|u1", "<c16", "<M8[ns]", ">m8[25s]", "|S5", "<U3", "|V7", "|b1",
          "<f2", [("a", "<i4"), ("b", ">f8", (2,))],
          [("x", [("y", "<u2", (3,)), ("z", "|S2")]), ("w", "<f4")],
          {"names": ["p", "q"], "formats": ["<i2", "<f8"], "offsets": [0, 8], "itemsize": 24}]
SHAPES = [(), (1,), (3,), (2, 3), (4, 1, 2), (1,) * 10, (7, 5), (0,), (3, 0), (0, 4, 2)]


def valid(nonempty=False):
    """A valid segment: (bytes, data offset, nbytes), written by numpy or by us."""
    dt = np.dtype(rng.choice(DTYPES))
    shapes = [s for s in SHAPES if not nonempty or np.prod(s, dtype=int) > 0]
    shape = rng.choice(shapes)
    fortran = rng.random() < 0.3 and len(shape) > 1
    arr = np.zeros(shape, dt, order="F" if fortran else "C")
    if rng.random() < 0.5:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, version=rng.choice([(1, 0), (2, 0), (3, 0)]))
        data = buf.getvalue()
        offset = len(data) - arr.nbytes
    else:                                     # as this library writes it
        made = sa.create(base + "-v", shape, dt, order="F" if fortran else "C")
        offset = made.ctypes.data - made.segment.addr
        del made
        with open("/dev/shm/" + base + "-v", "rb") as f:
            data = f.read()
        sa.delete(base + "-v")
    data = bytearray(data)
    if arr.nbytes:
        data[offset:] = rng.randbytes(arr.nbytes)
    return bytes(data), offset, arr.nbytes


def g_random():
    n = rng.choice([0, 1, 5, 9, 10, 11, 64, rng.randrange(0, 9000)])
    b = rng.randbytes(n)
    if b[:1] == b"\x93":
        b = b"\x00" + b[1:]
    return b


def g_magic_random():
    v = rng.choice([1, 2, 3])
    return MAGIC + bytes([v, 0]) + rng.randbytes(rng.randrange(0, 300))


def g_truncated():
    data, offset, nbytes = valid()
    need = offset + nbytes                 # every byte below this is required
    return data[:rng.randrange(0, need)]


def g_short_data():
    data, offset, nbytes = valid(nonempty=True)
    return data[:offset + rng.randrange(0, nbytes)]


def g_shape_too_big():
    dt = rng.choice(["<f8", "|u1", "<U7", "|V3", "<c8"])
    shape = rng.choice([(10 ** 6,), (2 ** 31,), (2 ** 40, 2), (4096,), (1025, 4),
                        (2 ** 62,), (2 ** 63 - 1,), (3, 2 ** 61), (2 ** 31, 2 ** 31)])
    text = dict_text(repr(dt), False, shape)
    return npy(text, pad=rng.choice([64, 4096])) + rng.randbytes(rng.randrange(0, 4000))


def g_bad_hlen():
    text = dict_text("'<f8'", False, (4,))
    v = rng.choice([1, 2, 3])
    good = npy(text, v) + bytes(32)
    pre = 10 if v == 1 else 12
    brace = text.rindex("}")
    choice = rng.random()
    if choice < 0.4:
        hlen = rng.randrange(0, brace)            # cuts the dict before its end
    elif choice < 0.8:
        hlen = rng.randrange(len(good) - pre + 1, 0xFFFF + 1)   # past the end
    else:
        hlen = (0xFFFF if v == 1 else 0xFFFFFFFF)
    return good[:8] + hlen.to_bytes(2 if v == 1 else 4, "little") + good[pre:]


def g_bad_version():
    major, minor = rng.choice([(0, 0), (4, 0), (255, 255), (1, 1), (2, 7), (3, 1),
                               (rng.randrange(4, 256), 0), (1, rng.randrange(1, 256))])
    return npy(dict_text("'<f8'", False, (2,)), ver_bytes=bytes([major, minor])) + bytes(16)


BAD_DESCRS = ["'<i3'", "'Z8'", "'<f8x'", "'>M8[xx]'", "'<m8[3q]'", "[('a',)]", "[(1, '<i4')]",
              "[('a', '<i4', (-1,))]", "[('a', '<i4'), ('a', '<f8')]", "('<i4', (-1,))",
              "None", "3", "3.5", "b'<f8'", "'|V-3'", "'S-1'", "''", "[('a', 'Z')]",
              "[('a', [('b', 'q9')])]", "('<f8', 'x')", "[('a', '<i4', 'x')]",
              "{1: 2}", "[(('t', 'a'), '<i4'), (('t', 'b'), '<i4')]",
              "[('a', '<i4', (2 ** 40,))]", "'<U-1'", "'>c7'", "True", "[]  + 1"]
OBJECT_DESCRS = ["'|O'", "'O'", "[('a', '|O')]", "[('a', [('b', '|O')])]", "('|O', (2,))",
                 "[('a', '|O', (2,))]", "[('a', '<i4'), ('b', [('c', '<f8'), ('d', '|O')])]"]


def g_bad_descr():
    return npy(dict_text(rng.choice(BAD_DESCRS), False, rng.choice([(3,), (0,), ()]))) + bytes(64)


def g_object_descr():
    descr = rng.choice(OBJECT_DESCRS)
    return npy(dict_text(descr, False, rng.choice([(3,), (0,), ()]))) + bytes(512)


NON_DICTS = ["[1, 2]", "None", "'x'", "(1, 2)", "{1, 2}", "{}", "3", "{'descr': '<f8'}",
             "{'descr': '<f8', 'shape': (1,)}", "{'descr': '<f8', 'fortran_order': False}",
             "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}",
             "{'DESCR': '<f8', 'fortran_order': False, 'shape': (1,)}",
             "[{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}]",
             "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} garbage",
             "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}; x",
             "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)} + {}",
             "__import__('os').system('false')", "lambda: 0", "{**{}}", "f'{1}'",
             "{'descr': '<f8', 'fortran_order': False, 'shape': (1,)}\x00x",
             "{'descr': '<f8'\x00, 'fortran_order': False, 'shape': (1,)}"]


def g_non_dict():
    return npy(rng.choice(NON_DICTS)) + bytes(64)


BAD_SHAPES = ["(-1,)", "(1.5,)", "('3',)", "[3]", "(True,)", "3", "None", "(3, None)",
              "(3, -2)", "((3,),)", "(2+1j,)", "(b'3',)", "{3}", "(3, 4.0)", "(" + "1, " * 65 + ")",
              "(" + "1, " * 200 + ")"]


def g_bad_shape():
    return npy(dict_text("'<f8'", False, rng.choice(BAD_SHAPES))) + bytes(4096)


def g_bad_fortran():
    f = rng.choice(["0", "1", "'True'", "None", "[]", "2", "1.0"])
    return npy("{'descr': '<f8', 'fortran_order': %s, 'shape': (2, 2), }" % f) + bytes(64)


def g_deep():
    depth = rng.choice([50, 100, 150, 199, 200, 201, 250, 1000, 10000, 100000])
    kind = rng.randrange(6)
    if kind == 0:
        text = "[" * depth + "]" * depth
    elif kind == 1:
        text = dict_text("[" * depth + "]" * depth)
    elif kind == 2:
        text = dict_text("'<f8'", False, "(" * depth + "1," + ")" * depth)
    elif kind == 3:
        d = min(depth, 400)                   # a deeply nested, otherwise valid dtype
        descr = "'<f8'"
        for i in range(d):
            descr = "[('f%d', %s)]" % (i, descr)
        text = dict_text(descr, False, (5,))  # 40 bytes of data, none present
    elif kind == 4:
        text = "-" * depth + "1"
    else:
        text = "{'descr': " * depth + "'<f8'" + "}" * depth
    version = 1 if len(text) < 60000 else 2
    return npy(text, version)


def g_huge_numbers():
    n = rng.choice([str(10 ** 18), str(2 ** 63), str(2 ** 64 + 1), str(10 ** 100),
                    "9" * 5000, str(2 ** 70)])
    kind = rng.randrange(4)
    if kind == 0:
        shape = "(%s,)" % n
    elif kind == 1:
        shape = "(%s, 2)" % n
    elif kind == 2:                           # zero elements, one absurd dimension
        shape = "(%s, 0)" % rng.choice([str(2 ** 63), str(10 ** 100), str(2 ** 70)])
    else:
        shape = "(0, %s, %s)" % (str(2 ** 64 + 1), str(2 ** 63))
    descr = rng.choice(["'<f8'", "'|S%s'" % n, "'<U%s'" % n, "'|V%s'" % n, "'<f8'"])
    if descr != "'<f8'":
        shape = "(1,)"
    text = dict_text(descr, False, shape)
    return npy(text, 1 if len(text) < 60000 else 2) + bytes(128)


def g_bad_unicode():
    if rng.random() < 0.5:                    # v3 header that is not UTF-8
        return npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), "
                   b"'\xff\xfe': 1}", 3) + bytes(8)
    return npy(b"{'descr': '<f8', \x93\x00'fortran_order': False, 'shape': (1,)}", 1) + bytes(8)


def g_huge_header():
    text = dict_text("'<f8'", False, (1,), "'pad': '%s', " % ("x" * ((1 << 20) + 16)))
    return npy(text, 2) + bytes(8)


GENERATORS = [g_random, g_magic_random, g_truncated, g_short_data, g_shape_too_big,
              g_bad_hlen, g_bad_version, g_bad_descr, g_object_descr, g_non_dict,
              g_bad_shape, g_bad_fortran, g_deep, g_huge_numbers, g_bad_unicode]

shm_path = "/dev/shm/" + base
file_path = os.path.join(tmpdir, "corrupt.npy")
failures, by_kind, attempts = [], {}, 0
schedule = [g_huge_header] * 3 + [GENERATORS[i % len(GENERATORS)] for i in range(count)]
rng.shuffle(schedule)
for i, gen in enumerate(schedule):
    blob = gen()
    use_file = i % 4 == 0
    path = file_path if use_file else shm_path
    name = "file://" + file_path if use_file else rng.choice([base, "shm://" + base])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    by_kind[gen.__name__] = by_kind.get(gen.__name__, 0) + 1
    for ro in (False, True):
        attempts += 1
        try:
            arr = sa.attach(name, ro=ro)
        except ValueError:
            continue
        except BaseException as exc:
            failures.append([gen.__name__, ro, f"{type(exc).__name__}: {exc}"[:300],
                             blob[:300].decode("latin1")])
        else:
            failures.append([gen.__name__, ro, f"attached {arr.dtype} {arr.shape}",
                             blob[:300].decode("latin1")])
            del arr
    if i % 100 == 0 and not use_file:
        listed = [info.name for info in sa.list()]
        if base in listed:
            failures.append([gen.__name__, None, "list() shows a corrupt segment", ""])
for p in (shm_path, file_path):
    if os.path.exists(p):
        os.unlink(p)
print(json.dumps({"cases": len(schedule), "attempts": attempts, "by_kind": by_kind,
                  "failures": failures}))
'''


def test_corrupt_segments_never_crash(shm_name, tmp_path):
    """Thousands of random, truncated and malformed segments (shm and file://,
    rw and ro): attach raises ValueError every time and the interpreter that
    does it survives (no segfault, no SIGBUS, no hang)."""
    out = _run_child(FUZZ_CHILD, shm_name, str(tmp_path), "20240611", str(FUZZ_CASES))
    assert out["cases"] >= FUZZ_CASES
    assert out["attempts"] == 2 * out["cases"]
    assert len(out["by_kind"]) == 16, out["by_kind"]
    assert out["failures"] == [], "\n".join(map(repr, out["failures"][:20]))
    assert not (SHM / shm_name).exists()


# ---------------------------------------------------------------- races

CREATE_RACE = r'''
import json, os, sys
import numpy as np
import sharedarray as sa

base, rounds = sys.argv[1], int(sys.argv[2])
results = []
for rnd in range(rounds):
    name = f"{base}-{rnd}"
    r, w = os.pipe()
    pids = {}
    for ident in (1, 2):
        pid = os.fork()
        if pid == 0:
            code = 99
            try:
                os.close(w)
                os.read(r, 1)                 # both wait here, then race
                try:
                    sa.from_array(name, np.full(50000, ident, np.int32))
                    code = ident
                except FileExistsError:
                    code = 17
            finally:
                os._exit(code)
        pids[pid] = ident
    os.close(r)
    os.write(w, b"go")
    os.close(w)
    codes = sorted(os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids)
    try:
        arr = sa.attach(name)
        content = sorted(set(arr.tolist()))
        del arr
        sa.delete(name)
    except Exception as exc:
        content = repr(exc)
    results.append({"codes": codes, "content": content})
print(json.dumps(results))
'''


def test_two_creators_race(shm_name):
    """20 rounds of two processes creating one name at the same moment:
    exactly one wins, the other gets FileExistsError, and the array holds the
    winner's data (never a mix)."""
    results = _run_child(CREATE_RACE, shm_name, "20")
    assert len(results) == 20
    for rnd, res in enumerate(results):
        codes = res["codes"]
        winners = [c for c in codes if c in (1, 2)]
        assert len(winners) == 1 and codes.count(17) == 1, (rnd, res)
        assert res["content"] == winners, (rnd, res)
    for rnd in range(20):
        assert not sa.exists(f"{shm_name}-{rnd}")


ATTACH_RACE = r'''
import json, os, select, sys
import numpy as np
import sharedarray as sa

name, iterations, attachers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PATTERNS = [
    np.arange(300_000, dtype=np.int64) * 7 + 3,
    np.asfortranarray((np.arange(600 * 70, dtype=">f4") / 3).reshape(600, 70)),
    np.array([(i, -i * 0.5, b"x%d" % (i % 100)) for i in range(20_000)],
             dtype=[("i", "<u4"), ("f", ">f8"), ("s", "S4")]),
]
for p in PATTERNS:
    assert p.nbytes > 100_000


def which(a):
    for p in PATTERNS:
        if a.dtype == p.dtype and a.shape == p.shape:
            return p
    return None


done_r, done_w = os.pipe()            # closed by the creator when it is finished
os.set_blocking(done_r, False)
res_r, res_w = os.pipe()
seen_r, seen_w = os.pipe()            # an attacher's first whole array


def finished():
    try:
        return os.read(done_r, 1) == b""
    except BlockingIOError:
        return False


children = []
for c in range(attachers):
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.close(done_w)
            ok = missing = 0
            bad = []
            while True:
                try:
                    a = sa.attach(name, ro=bool(c % 2))
                except FileNotFoundError:
                    missing += 1
                    if finished():
                        break
                    continue
                except Exception as exc:
                    bad.append(f"{type(exc).__name__}: {exc}")
                    continue
                want = which(a)
                if (want is None or a.tobytes("A") != want.tobytes("A")
                        or a.flags.f_contiguous != want.flags.f_contiguous
                        or type(a) is not sa.ndarray):
                    bad.append(f"wrong or partial array {a.dtype} {a.shape}")
                else:
                    if ok == 0:
                        os.write(seen_w, b"!")
                    ok += 1
                del a
            os.write(res_w, (json.dumps({"ok": ok, "missing": missing,
                                         "bad": bad[:10], "nbad": len(bad)}) + "\n").encode())
            status = 0
        finally:
            os._exit(status)
    children.append(pid)

creator = os.fork()
if creator == 0:
    status = 99
    try:
        os.close(done_r)
        for i in range(iterations):
            sa.from_array(name, PATTERNS[i % len(PATTERNS)])
            sa.delete(name)
        # However the race went, the array stays published once until an
        # attacher has seen it whole: a loaded machine cannot make the
        # test vacuous (no attach succeeding at all).
        sa.from_array(name, PATTERNS[0])
        select.select([seen_r], [], [], 300)
        sa.delete(name)
        status = 0
    finally:
        os.close(done_w)
        os._exit(status)
os.close(done_w)
statuses = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in [creator] + children]
os.close(res_w)
with os.fdopen(res_r) as f:
    reports = [json.loads(line) for line in f]
print(json.dumps({"statuses": statuses, "reports": reports,
                  "left": os.path.exists("/dev/shm/" + name)}))
'''


def test_attach_races_create_delete(shm_name):
    """Attachers in a tight loop against a process that creates (from_array,
    with data) and deletes the same name again and again: each attach either
    finds nothing or the complete array with its exact dtype, shape, order and
    contents -- never a partial header, zeros or half-copied data."""
    out = _run_child(ATTACH_RACE, shm_name, str(RACE_ITERATIONS), "2")
    assert out["statuses"] == [0, 0, 0], out
    assert len(out["reports"]) == 2
    for rep in out["reports"]:
        assert rep["nbad"] == 0, rep["bad"]
        assert rep["missing"] > 0
    assert sum(rep["ok"] for rep in out["reports"]) > 0, out["reports"]
    assert out["left"] is False


# ---------------------------------------------------------------- ENOSPC

ENOSPC_CHILD = r'''
import errno, json, os
import numpy as np
import sharedarray as sa

def free():
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize

out = {"before": sorted(os.listdir("/dev/shm")), "free": free()}
try:
    sa.create("big", (64 << 20) // 8)            # 64 MiB of float64
except OSError as exc:
    out["big"] = {"errno": exc.errno, "msg": str(exc), "type": type(exc).__name__}
else:
    out["big"] = None
out["after_big"] = sorted(os.listdir("/dev/shm"))
try:
    sa.from_array("big2", np.ones(48 << 20, np.uint8))
except OSError as exc:
    out["big2"] = {"errno": exc.errno, "msg": str(exc)}
out["after_big2"] = sorted(os.listdir("/dev/shm"))

a = sa.create("fits", (1 << 20) // 8)            # 1 MiB: fits
a[:] = np.arange(a.size)
out["fits"] = bool((sa.attach("fits") == np.arange(a.size)).all()
                   and (np.load("/dev/shm/fits") == np.arange(a.size)).all())
del a
sa.delete("fits")

arrays, i = [], 0                                # fill it, 512 KiB at a time
while True:
    try:
        arrays.append(sa.create("fill-%d" % i, (1 << 19) // 8))
    except OSError as exc:
        out["fill_error"] = {"errno": exc.errno, "msg": str(exc), "free": free()}
        break
    i += 1
for k, arr in enumerate(arrays):                 # touch every page: no SIGBUS
    arr[:] = k + 1
out["filled"] = len(arrays)
out["fill_ok"] = all(float(arr.sum()) == (k + 1) * arr.size for k, arr in enumerate(arrays))
out["listed"] = len(sa.list())
for k in range(len(arrays)):
    sa.delete("fill-%d" % k)
del arrays
out["end"] = sorted(os.listdir("/dev/shm"))
print(json.dumps(out))
'''


def test_enospc_in_tiny_dev_shm():
    """In a private 8 MiB /dev/shm: a 64 MiB create raises OSError(ENOSPC)
    saying how much was asked for and how much is free, and leaves nothing;
    arrays that fit work, and filling the tmpfs to the brim then writing every
    page of every array does not SIGBUS (the space was reserved)."""
    prefix = private_shm_prefix()
    proc = subprocess.run(
        prefix + ["sh", "-c", 'mount -t tmpfs -o size=8m tmpfs /dev/shm && '
                  'exec "$0" -X faulthandler -c "$1"', sys.executable, ENOSPC_CHILD],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"exit status {proc.returncode} (-7 = SIGBUS)\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == []
    big = out["big"]
    assert big is not None, "a 64 MiB array was created in an 8 MiB /dev/shm"
    assert big["errno"] == errno.ENOSPC and big["type"] == "OSError"
    requested = (64 << 20) + 4096                 # data + the one-page header
    free = out["free"]
    assert free <= 8 << 20
    assert f"{requested:,}" in big["msg"] or str(requested) in big["msg"], big["msg"]
    assert f"{free:,}" in big["msg"] or str(free) in big["msg"], big["msg"]
    assert "'big'" in big["msg"]
    assert out["after_big"] == []                 # nothing left behind
    assert out["big2"]["errno"] == errno.ENOSPC and out["after_big2"] == []
    assert out["fits"] is True
    assert out["fill_error"]["errno"] == errno.ENOSPC
    assert f"{out['fill_error']['free']:,}" in out["fill_error"]["msg"] \
        or str(out["fill_error"]["free"]) in out["fill_error"]["msg"]
    assert 10 <= out["filled"] <= 16, out["filled"]   # 8 MiB / (512 KiB + a page)
    assert out["fill_ok"] is True
    assert out["listed"] == out["filled"]
    assert out["end"] == []



@pytest.mark.parametrize("args, error", [
    ((), TypeError),                                     # too few
    (("n", "/n", 0, False, False, False, 1), TypeError),  # too many
    ((1, "/n", 0, False), TypeError),                    # name not str
    (("n", b"/n", 0, False), TypeError),                 # path not str
    (("n", "/n\0x", 0, False), ValueError),              # NUL would cut the path
    (("n", "/n", 7, False), ValueError),                 # unknown kind
    (("n", "/n", "0", False), TypeError),                # kind not int
])
def test_ext_attach_rejects_bad_arguments(args: tuple, error: type) -> None:
    """The C attach parses its arguments by hand: each bad one is an error."""
    from sharedarray import _ext
    with pytest.raises(error):
        _ext.attach(*args)
