"""Helpers shared by the ``bench_*.py`` modules (not a benchmark itself).

The module interface that ``run.py`` expects
--------------------------------------------
A benchmark is a file ``benchmarks/bench_<name>.py`` with one function::

    def run(quick: bool) -> dict

returning (everything JSON-serialisable)::

    {
      "title": "Create, attach, detach, delete",       # section heading
      "description": "one paragraph (optional)",
      "versions": {"SharedArray": "3.2.4"},             # peers it imported
      "tables": [Table(...).as_dict(), ...],            # rendered as Markdown
      "targets": [target(...), ...],                    # stated goals, met or not
      "plots": [{"file": "core.png", "title": ..., "panels": [panel(...), ...]}],
      "data": {...},                                    # raw numbers, free form
    }

``run.py`` runs each module in its own interpreter, writes what ``run``
returns to ``benchmarks/results/<name>.json`` and renders every module's
tables, targets and plots into ``benchmarks/results.md``.

Fairness rules every module follows: variants are interleaved (round-robin
over repeats, order rotated), big allocations are preceded by a warm-up so the
VM's balloon has handed the pages back (see :func:`warm_memory`),
medians *and* minima are reported, and every segment a benchmark makes carries
``PREFIX`` (the pid) and is removed in ``finally`` - :func:`cleanup` sweeps
whatever an exception left behind.
"""

from __future__ import annotations

import atexit
import gc
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

SHM = "/dev/shm"
PREFIX = f"sab-{os.getpid()}-"          # every segment a benchmark makes
_counter = itertools.count()

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


_t0 = time.perf_counter()


def progress(msg: str) -> None:
    """A progress line on stderr with the seconds since import."""
    print(f"  [{time.perf_counter() - _t0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def new_name(tag: str = "") -> str:
    """A unique segment name owned by this process (``sab-<pid>-<n><tag>``)."""
    return f"{PREFIX}{next(_counter)}{tag}"


def leftovers() -> list[str]:
    """Names in /dev/shm that this process made and did not remove."""
    try:
        return sorted(n for n in os.listdir(SHM) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def cleanup() -> list[str]:
    """Unlink every segment of this process still in /dev/shm; return their names."""
    left = leftovers()
    for n in left:
        try:
            os.unlink(os.path.join(SHM, n))
        except FileNotFoundError:
            pass
    return left


atexit.register(cleanup)


# ------------------------------------------------------------------ timing

def interleave(trials: dict[str, Callable[[], float]], repeats: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Run ``trials`` round-robin ``repeats`` times; each call returns seconds.

    The order rotates every round so no variant always follows the same one
    (page reuse, cache state and the neighbours' load are spread evenly).
    ``warmup`` rounds are run first and discarded.
    """
    names = list(trials)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t = trials[n]()
            if r >= warmup:
                out[n].append(t)
    return out


def batch(op: Callable[[], Any], n: int) -> float:
    """Seconds per call of ``op`` over ``n`` back-to-back calls, GC off."""
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            op()
        return (time.perf_counter() - t0) / n
    finally:
        if gc_was:
            gc.enable()


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU is this process's user+sys time, which the
    neighbours' load does not inflate the way it inflates wall time."""
    return time.perf_counter(), time.process_time()


def deltas(spans: dict[str, tuple], n: int = 1) -> dict[str, float]:
    """``{op: (clock0, clock1)}`` -> ``{op: wall/n, op + " cpu": cpu/n}``."""
    out = {}
    for op, (a, b) in spans.items():
        out[op] = (b[0] - a[0]) / n
        out[op + " cpu"] = (b[1] - a[1]) / n
    return out


class Stats(dict):
    """median / min / max / n of a list of seconds (a dict, so it serialises)."""

    def __init__(self, samples: Sequence[float]):
        s = sorted(samples)
        super().__init__(median=statistics.median(s) if s else None,
                         min=s[0] if s else None, max=s[-1] if s else None,
                         n=len(s), samples=list(samples))

    @property
    def median(self) -> float:
        return self["median"]

    @property
    def min(self) -> float:
        return self["min"]


def stats(samples: dict[str, list[float]]) -> dict[str, Stats]:
    return {k: Stats(v) for k, v in samples.items()}


def warm_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of private memory so the host backs it again.

    This VM returns idle free pages to the host within seconds and re-faulting
    them costs ~2.5 s/GiB (measured here); call this right before a trial
    that allocates ``nbytes`` fresh.
    """
    import numpy as np
    a = np.empty(nbytes, np.uint8)
    a[::4096] = 1
    del a


# ------------------------------------------------------------------ formatting

def fmt_time(s: float | None) -> str:
    """Seconds as a short human string in µs, ms or s (3 significant digits)."""
    if s is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if s >= scale or unit == "ns":
            v = s / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return str(s)


def fmt_med_min(st: Stats | None) -> str:
    """``median (min)`` of a Stats."""
    if st is None or st.median is None:
        return "–"
    return f"{fmt_time(st.median)} ({fmt_time(st.min)})"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:,.0f}×"
    return f"{x:.2f}×"


def fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


class Table:
    """A results table; ``as_dict()`` is what ``run.py`` renders.

    Cells are strings (already formatted), numbers (rendered with 3
    significant digits) or booleans (rendered as yes / **no**).
    """

    def __init__(self, title: str, columns: Sequence[str],
                 notes: Iterable[str] = ()):
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[Any]] = []
        self.notes = list(notes)

    def add(self, *cells: Any) -> None:
        assert len(cells) == len(self.columns), (cells, self.columns)
        self.rows.append(list(cells))

    def as_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": self.rows,
                "notes": self.notes}


def target(text: str, measured: str, met: bool | None) -> dict:
    """One stated target: what it asks, what we measured, met or not
    (``None``: could not be measured, e.g. the peer is not installed)."""
    return {"target": text, "measured": measured, "met": met}


def panel(title: str, groups: Sequence[str], series: dict[str, Sequence[float | None]],
          ylabel: str = "seconds", log: bool = True) -> dict:
    """One grouped-bar subplot: ``series[label][i]`` is the bar for ``groups[i]``."""
    return {"title": title, "groups": list(groups),
            "series": {k: list(v) for k, v in series.items()},
            "ylabel": ylabel, "log": log}


def line_panel(title: str, xs: Sequence[int], series: dict[str, Sequence[float | None]],
               ylabel: str = "seconds per call", xlabel: str = "array size") -> dict:
    """One log-log subplot: ``series[label][i]`` is the time at ``xs[i]`` bytes."""
    return {"kind": "lines", "title": title, "xs": list(xs),
            "series": {k: list(v) for k, v in series.items()},
            "ylabel": ylabel, "xlabel": xlabel}


def main(run: Callable[[bool], dict]) -> None:
    """Run one benchmark module by itself (``--quick`` for the short run):
    print its tables and targets as markdown, then remove what it left."""
    out = run("--quick" in sys.argv)
    for tb in out["tables"]:
        print(f"\n### {tb['title']}\n")
        print("| " + " | ".join(tb["columns"]) + " |")
        print("|" + "---|" * len(tb["columns"]))
        for r in tb["rows"]:
            print("| " + " | ".join(str(c) for c in r) + " |")
        for n in tb["notes"]:
            print(f"\n{n}")
    print("\n### targets\n")
    for tg in out["targets"]:
        met = {True: "met", False: "NOT met", None: "n/a"}[tg["met"]]
        print(f"- {tg['target']}: {tg['measured']} -> {met}")
    left = cleanup()
    if left:
        print("left behind (now removed):", left, file=sys.stderr)


def peer_version(dist: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None
