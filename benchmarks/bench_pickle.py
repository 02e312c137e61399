"""Pickling: handles vs data, and passing arrays to the standard ProcessPoolExecutor.

1. `pickle.loads(pickle.dumps(a, protocol=5))` of a `sharedarray.ndarray` (a
   handle; the array stays alive, so the attach cache is hit) against the same
   round trip of a plain ndarray holding the same data (protocol 5, in-band:
   the data is copied into the pickle and out again).
2. The standard `concurrent.futures.ProcessPoolExecutor(2)`, with nothing of
   ours but the copyreg reducer, called as `f(a)` where `f` reads three
   elements: a 1 KiB and a 1 GiB `sharedarray.ndarray` (handles), and the same
   data as plain ndarrays (pickled by value through the call queue).  One call
   in flight at a time; the pool is started and warmed before any array
   exists.  The worker attaches the segment on every call (its attachment dies
   with the argument), and that cost is part of the call.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sharedarray as sa  # noqa: E402

import _util as U  # noqa: E402

PICKLE_SIZES = [U.MiB, 16 * U.MiB, 256 * U.MiB, U.GiB]


def read3(a: np.ndarray) -> float:
    """The task: touch three elements (transfer cost only)."""
    return float(a[0]) + float(a[len(a) // 2]) + float(a[-1])


def _noop(x):
    return x


def _filled(name: str, nbytes: int) -> sa.ndarray:
    a = sa.create(name, nbytes // 8, np.float64)
    a[:] = 1.5            # touch every page: a real, populated array
    return a


# ------------------------------------------------------------------ 1. pickle

def bench_pickle_roundtrip(quick: bool) -> tuple[list, dict]:
    """Handle round trips (all sizes interleaved), then data round trips."""
    hb = 50                       # handle round trips per batch: ~1 ms, see bench_core
    hr = 31 if quick else 101
    repeats = ({U.MiB: 7, 16 * U.MiB: 5, 256 * U.MiB: 2} if quick else
               {U.MiB: 21, 16 * U.MiB: 11, 256 * U.MiB: 5, U.GiB: 3})
    names = {n: U.new_name("-pk") for n in PICKLE_SIZES}
    arrays: dict[int, sa.ndarray] = {}
    handle: dict[int, U.Stats] = {}
    hsize: dict[int, int] = {}
    data: dict[int, U.Stats] = {}
    dsize: dict[int, int] = {}
    try:
        U.progress("pickle: handle round trips")
        for n in PICKLE_SIZES:
            arrays[n] = _filled(names[n], n)
            hsize[n] = len(pickle.dumps(arrays[n], protocol=5))

        cpu: dict[int, list[float]] = {n: [] for n in PICKLE_SIZES}

        def handle_trial(n, a):
            def trial():
                c0 = U.clock()
                for _ in range(hb):
                    pickle.loads(pickle.dumps(a, protocol=5))
                c1 = U.clock()
                d = U.deltas({"rt": (c0, c1)}, hb)
                cpu[n].append(d["rt cpu"])
                return d["rt"]
            return trial

        raw = U.interleave({n: handle_trial(n, a) for n, a in arrays.items()}, hr)
        handle = U.stats(raw)
        handle_cpu = {n: U.Stats(v[-hr:]) for n, v in cpu.items()}
        for n in PICKLE_SIZES:
            if n not in repeats:
                continue
            U.progress(f"pickle: data round trip {U.fmt_bytes(n)}")
            plain = np.array(arrays[n].view(np.ndarray))   # same data, private memory
            del arrays[n]                                  # free memory for the copies
            # protocol 5 in-band: header (size-independent) + the data
            dsize[n] = len(pickle.dumps(plain[:1024], protocol=5)) - 8192 + plain.nbytes

            def data_trial(plain: np.ndarray = plain) -> float:
                t0 = time.perf_counter()
                b = pickle.dumps(plain, protocol=5)
                out = pickle.loads(b)
                t1 = time.perf_counter()
                del b, out
                return t1 - t0

            big = n >= 256 * U.MiB
            if big:
                U.warm_memory(2 * n)
            data[n] = U.Stats(U.interleave({"data": data_trial}, repeats[n],
                                           warmup=0 if big else 1)["data"])
            del plain, data_trial
    finally:
        arrays.clear()
        for name in names.values():
            try:
                sa.delete(name)
            except FileNotFoundError:
                pass
    rows = [(n, handle[n], data.get(n), hsize[n], dsize.get(n), handle_cpu[n])
            for n in PICKLE_SIZES]
    out = {U.fmt_bytes(n): {"handle": dict(handle[n]), "handle_bytes": hsize[n],
                            "handle_cpu": dict(handle_cpu[n]),
                            "data": dict(data[n]) if n in data else None,
                            "data_bytes": dsize.get(n)} for n in PICKLE_SIZES}
    return rows, out


# ------------------------------------------------------------------ 2. executor

def bench_executor(quick: bool) -> dict:
    """{case: Stats} for calls through a standard ProcessPoolExecutor(2)."""
    n_calls = 40 if quick else 150
    n_plain_big = 2 if quick else 3        # ~4 s each at 1 GiB on a quiet machine
    small_name, big_name = U.new_name("-ex1k"), U.new_name("-ex1g")
    out: dict[str, U.Stats] = {}
    with cf.ProcessPoolExecutor(2) as ex:
        # start and warm both workers before any array exists
        list(ex.map(_noop, range(64)))
        small = big = None
        try:
            small = _filled(small_name, U.KiB)
            big = _filled(big_name, U.GiB)
            expect = read3(big)

            def call(arr):
                def trial():
                    t0 = time.perf_counter()
                    r = ex.submit(read3, arr).result()
                    t1 = time.perf_counter()
                    assert r == expect, (r, expect)
                    return t1 - t0
                return trial

            U.progress("executor: shared 1 KiB / 1 GiB")
            raw = U.interleave({"shared 1 KiB": call(small), "shared 1 GiB": call(big)},
                               repeats=n_calls, warmup=5)
            U.progress("executor: plain 1 KiB")
            plain_small = np.array(small.view(np.ndarray))
            raw.update(U.interleave({"plain 1 KiB": call(plain_small)},
                                    repeats=n_calls, warmup=5))
            # quick: 256 MiB by value, scaled ×4 (by-value cost is linear in size)
            plain_n = U.GiB // 4 if quick else U.GiB
            U.progress(f"executor: plain {U.fmt_bytes(plain_n)}")
            plain_big = np.array(big.view(np.ndarray)[:plain_n // 8])
            U.warm_memory(2 * plain_n)
            t = U.interleave({"plain": call(plain_big)}, repeats=n_plain_big,
                             warmup=0)["plain"]
            raw["plain 1 GiB"] = [x * U.GiB / plain_n for x in t]
            del plain_big
            out = U.stats(raw)
        finally:
            for n in (small_name, big_name):
                try:
                    sa.delete(n)
                except FileNotFoundError:
                    pass
    return out


# ------------------------------------------------------------------ run

def run(quick: bool) -> dict:
    rows, pdata = bench_pickle_roundtrip(quick)
    ex = bench_executor(quick)

    t1 = U.Table("pickle.dumps + pickle.loads round trip (protocol 5), median (min)",
                 ["array", "handle (sharedarray.ndarray)", "handle, CPU time",
                  "data (plain ndarray, in-band)", "data / handle", "handle pickle size",
                  "data pickle size"],
                 notes=["The handle round trip re-attaches through the per-process "
                        "attach cache (the array is alive), so its cost does not "
                        "depend on the size.",
                        "Handle round trips of the four sizes are interleaved; data "
                        "round trips run afterwards (256 MiB and more from warm, "
                        "pre-touched memory, and only a few times; 1 GiB not in "
                        "--quick runs)."])
    targets = []
    for nbytes, h, d, hsize, dsize, hc in rows:
        t1.add(U.fmt_bytes(nbytes), U.fmt_med_min(h), U.fmt_med_min(hc),
               U.fmt_med_min(d) if d else "not run (quick)",
               U.fmt_ratio(U.ratio(d.median, h.median)) if d else "–", f"{hsize} B",
               f"{dsize:,} B" if dsize else "–")
        targets.append(U.target(
            f"handle round trip of a {U.fmt_bytes(nbytes)} array ≤ 20 µs (median)",
            f"{U.fmt_time(h.median)} (min {U.fmt_time(h.min)}; CPU time "
            f"{U.fmt_time(hc.median)})", h.median <= 20e-6))

    t2 = U.Table("Standard ProcessPoolExecutor(2): one call f(a) reading 3 elements, "
                 "median (min)",
                 ["argument", "per call", "vs shared 1 KiB", "calls"],
                 notes=["Sequential calls (one in flight), pool warmed before the "
                        "arrays exist; the worker attaches the segment on every call.",
                        "plain = the same data as an ordinary numpy.ndarray: the "
                        "executor pickles it (1 GiB travels through a pipe)."]
                 + (["--quick: 'plain 1 GiB' is a 256 MiB call scaled ×4 (the "
                     "by-value cost is linear in the size); the full run measures "
                     "1 GiB."] if quick else []))
    base = ex["shared 1 KiB"].median
    for case in ("shared 1 KiB", "shared 1 GiB", "plain 1 KiB", "plain 1 GiB"):
        s = ex[case]
        t2.add(case, U.fmt_med_min(s), U.fmt_ratio(U.ratio(s.median, base)), s["n"])
    r_big = U.ratio(ex["shared 1 GiB"].median, base)
    targets.append(U.target("executor call with a 1 GiB sharedarray.ndarray within 1.5× "
                            "of the 1 KiB call",
                            f"{U.fmt_time(ex['shared 1 GiB'].median)} vs "
                            f"{U.fmt_time(base)} = {U.fmt_ratio(r_big)}", r_big <= 1.5))
    speed = U.ratio(ex["plain 1 GiB"].median, ex["shared 1 GiB"].median)
    targets.append(U.target("1 GiB sharedarray.ndarray call ≥ 1000× faster than the same "
                            "data as a plain ndarray"
                            + (" [quick: plain call at 256 MiB ×4]" if quick else ""),
                            f"{U.fmt_time(ex['plain 1 GiB'].median)} / "
                            f"{U.fmt_time(ex['shared 1 GiB'].median)} = {U.fmt_ratio(speed)}",
                            speed >= 1000))

    groups = [U.fmt_bytes(r[0]) for r in rows]
    plots = [{"file": "pickle.png", "title": "Pickling shared arrays (median, log scale)",
              "panels": [
                  U.panel("pickle round trip", groups,
                          {"handle": [r[1].median for r in rows],
                           "data (protocol 5)": [r[2].median if r[2] else None
                                                 for r in rows]}),
                  U.panel("ProcessPoolExecutor(2) call", ["1 KiB", "1 GiB"],
                          {"sharedarray.ndarray": [ex["shared 1 KiB"].median,
                                                   ex["shared 1 GiB"].median],
                           "plain ndarray": [ex["plain 1 KiB"].median,
                                             ex["plain 1 GiB"].median]}),
              ]}]
    return {
        "title": "Pickling: handles vs data; the standard ProcessPoolExecutor",
        "description": (__doc__ or "").split("\n\n", 1)[1].strip(),
        "versions": {},
        "tables": [t1.as_dict(), t2.as_dict()],
        "targets": targets,
        "plots": plots,
        "data": {"pickle": pdata, "executor": {k: dict(v) for k, v in ex.items()}},
    }


if __name__ == "__main__":
    U.main(run)
