"""Core operations side by side: sharedarray vs SharedArray 3.2.4 vs SharedMemory.

What each operation covers (the same for every library; the loop around it is
the same Python code, so its overhead cancels in the ratios):

- **create**: `create(name, shape)` returning an ndarray (SharedMemory:
  `SharedMemory(name, create=True, size)` + `np.ndarray(buffer=shm.buf)`).
- **attach**: `attach(name)` of an existing, filled array.
- **detach**: dropping an attached array (SharedMemory: `del arr; shm.close()`).
- **delete**: removing the name while the creator still maps it (SharedArray's
  `delete` also maps the segment to check its magic; SharedMemory: `shm.unlink()`).
- **create+delete**: the whole life of a temporary: create, delete the name,
  drop the array.
- **create+fill**: create, then `arr.fill(1.0)`: what an array really costs
  once its pages are touched (the clean-up afterwards is not timed).

Small operations are timed in batches of B back-to-back calls (per-op time =
batch time / B); 100 MiB and 1 GiB operations one at a time.  The variants are
interleaved round-robin with the order rotated every round, and right before
each 100 MiB and 1 GiB fill as much private memory is touched and freed, so
that every variant starts on pages the host backs (this VM hands idle pages
back to the host within seconds).
"""

from __future__ import annotations

import os
import sys
from multiprocessing import resource_tracker, shared_memory

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sharedarray as sa  # noqa: E402

import _util as U  # noqa: E402

try:
    import SharedArray  # the peer: SharedArray 3.2.4 (GPL, benchmark only)
except ImportError:  # pragma: no cover - reported in the results
    SharedArray = None

DT = np.float64
SIZES = {"10 el.": (10,), "100 MiB": (100 * U.MiB // 8,), "1 GiB": (U.GiB // 8,)}


# ------------------------------------------------------------------ variants

class Variant:
    """The five primitives of one library; ``obj`` is whatever create/attach return."""

    label = ""

    def create(self, name, shape):
        raise NotImplementedError

    def attach(self, name, shape):
        raise NotImplementedError

    def detach(self, obj):
        """Release an attachment (the caller drops its reference right after)."""

    def delete(self, name, obj):
        raise NotImplementedError

    def array(self, obj):
        return obj


class SharedarrayV(Variant):
    label = "sharedarray"

    def create(self, name, shape):
        return sa.create(name, shape, DT)

    def attach(self, name, shape):
        return sa.attach(name)

    def delete(self, name, obj):
        sa.delete(name)


class SharedArrayV(Variant):
    label = "SharedArray"

    def create(self, name, shape):
        return SharedArray.create(name, shape, DT)

    def attach(self, name, shape):
        return SharedArray.attach(name)

    def delete(self, name, obj):
        SharedArray.delete(name)


class SharedMemoryV(Variant):
    """The standard library, used the usual way (resource tracker on: in 3.11
    every attach registers with it too)."""

    label = "SharedMemory"

    def create(self, name, shape):
        shm = shared_memory.SharedMemory(name, create=True,
                                         size=int(np.prod(shape)) * 8)
        return [shm, np.ndarray(shape, DT, buffer=shm.buf)]

    def attach(self, name, shape):
        shm = shared_memory.SharedMemory(name)
        return [shm, np.ndarray(shape, DT, buffer=shm.buf)]

    def detach(self, obj):
        obj[1] = None       # the array first: close() refuses while it exports
        obj[0].close()

    def delete(self, name, obj):
        obj[0].unlink()

    def array(self, obj):
        return obj[1]


class NumpyV(Variant):
    """Reference floor for create+fill: private memory (numpy madvises THP)."""

    label = "numpy (private)"

    def create(self, name, shape):
        return np.empty(shape, DT)

    def delete(self, name, obj):
        pass


def variants() -> list[Variant]:
    vs: list[Variant] = [SharedarrayV()]
    if SharedArray is not None:
        vs.append(SharedArrayV())
    vs.append(SharedMemoryV())
    return vs


# ------------------------------------------------------------------ trials

def _dispose(v: Variant, names: list[str], objs: list) -> None:
    """Untimed cleanup: delete what is still there, drop every array."""
    # objs may be shorter than names: an exception stopped the creating loop.
    for n, o in zip(names, objs, strict=False):
        if isinstance(v, SharedMemoryV):
            v.detach(o)
        if os.path.exists(os.path.join(U.SHM, n)):
            if isinstance(v, SharedMemoryV):
                try:
                    o[0].unlink()
                except FileNotFoundError:
                    pass
            else:
                os.unlink(os.path.join(U.SHM, n))
    objs.clear()


def trial_create_delete(v: Variant, shape: tuple, b: int) -> dict[str, float]:
    """create ×b (timed), delete ×b with the creator's arrays alive (timed)."""
    names = [U.new_name() for _ in range(b)]
    objs: list = []
    create, delete = v.create, v.delete
    try:
        t0 = U.clock()
        for n in names:
            objs.append(create(n, shape))
        t1 = U.clock()
        for n, o in zip(names, objs, strict=True):
            delete(n, o)
        t2 = U.clock()
    finally:
        _dispose(v, names, objs)
    return U.deltas({"create": (t0, t1), "delete": (t1, t2)}, b)


def trial_attach_detach(v: Variant, name: str, shape: tuple, b: int) -> dict[str, float]:
    """attach ×b (timed), then drop the b attachments (timed)."""
    objs: list = []
    attach, detach = v.attach, v.detach
    t0 = U.clock()
    for _ in range(b):
        objs.append(attach(name, shape))
    t1 = U.clock()
    while objs:
        detach(objs.pop())
    t2 = U.clock()
    return U.deltas({"attach": (t0, t1), "detach": (t1, t2)}, b)


def trial_cycle(v: Variant, shape: tuple, b: int) -> dict[str, float]:
    """b × (create, delete the name, drop the array): a temporary's whole life."""
    names = [U.new_name() for _ in range(b)]
    create, delete, detach = v.create, v.delete, v.detach
    done = 0
    try:
        t0 = U.clock()
        for n in names:
            o = create(n, shape)
            delete(n, o)
            detach(o)
            done += 1
        del o
        t1 = U.clock()
    finally:
        for n in names[done:]:
            try:
                os.unlink(os.path.join(U.SHM, n))
            except FileNotFoundError:
                pass
    return U.deltas({"create+delete": (t0, t1)}, b)


def trial_fill(v: Variant, shape: tuple, b: int, warm: bool = False) -> dict[str, float]:
    """create + fill(1.0) ×b (timed); cleanup untimed.

    ``warm``: touch and free as much private memory right before the timed
    part, so that every variant gets pages the host backs (re-faulting pages
    the balloon handed back costs ~2.5 s/GiB here: see ``_util.warm_memory``).
    """
    names = [U.new_name() for _ in range(b)]
    objs: list = []
    create, array = v.create, v.array
    if warm:
        U.warm_memory(int(np.prod(shape)) * 8 * b)
    try:
        t0 = U.clock()
        for n in names:
            o = create(n, shape)
            array(o).fill(1.0)
            objs.append(o)
        t1 = U.clock()
    finally:
        _dispose(v, names, objs)
    return U.deltas({"create+fill": (t0, t1)}, b)


def rounds(trials: dict[str, callable], repeats: int, warmup: int = 1) -> dict:
    """``U.interleave`` for trials returning {op: seconds}: -> {op: {variant: Stats}}."""
    raw: dict[str, dict[str, list[float]]] = {}
    names = list(trials)
    for r in range(warmup + repeats):
        k = r % len(names)
        for label in names[k:] + names[:k]:
            res = trials[label]()
            if r < warmup:
                continue
            for op, t in res.items():
                raw.setdefault(op, {}).setdefault(label, []).append(t)
    return {op: U.stats(d) for op, d in raw.items()}


# ------------------------------------------------------------------ run

def run(quick: bool) -> dict:
    vs = variants()
    labels = [v.label for v in vs]
    results: dict[str, dict[str, dict]] = {}   # size -> op -> variant -> Stats
    # Small batches (~1 ms): on a loaded 2-core machine a 10 ms batch is
    # nearly always preempted, a 1 ms one mostly not, so many short batches
    # give a median that is the operation's cost rather than the neighbours'.
    small_b = 25
    small_r = 31 if quick else 101
    big_r = 5 if quick else 15
    fill100_r = 3 if quick else 9
    gib_r = 1 if quick else 7
    attach_b_big = 20 if quick else 50

    # Start SharedMemory's resource tracker before anything is timed.
    resource_tracker.ensure_running()

    # -- small and 100 MiB: create / delete / attach / detach / cycle / fill
    for size, b, r in (("10 el.", small_b, small_r), ("100 MiB", 1, big_r)):
        shape = SIZES[size]
        res: dict[str, dict] = {}
        U.progress(f"core {size}: create, delete")
        res.update(rounds({v.label: (lambda v=v, shape=shape, b=b: trial_create_delete(v, shape, b))
                           for v in vs}, r))
        # attach/detach of one existing, filled segment per library
        fixtures = {}
        try:
            for v in vs:
                n = U.new_name("-fix")
                o = v.create(n, shape)
                v.array(o).fill(1.0)
                fixtures[v.label] = (v, n, o)
            U.progress(f"core {size}: attach, detach")
            ab = b if size == "10 el." else attach_b_big
            res.update(rounds({v.label: (lambda v=v, n=fixtures[v.label][1], shape=shape, ab=ab:
                                         trial_attach_detach(v, n, shape, ab))
                               for v in vs}, r))
        finally:
            for v, n, o in fixtures.values():
                _dispose(v, [n], [o])
        U.progress(f"core {size}: create+delete")
        res.update(rounds({v.label: (lambda v=v, shape=shape, b=b: trial_cycle(v, shape, b))
                           for v in vs}, r))
        U.progress(f"core {size}: create+fill")
        fill_vs = vs + [NumpyV()]
        big = size != "10 el."
        res.update(rounds({v.label: (lambda v=v, shape=shape, b=b, big=big:
                            trial_fill(v, shape, b, warm=big))
                           for v in fill_vs}, fill100_r if big else r))
        results[size] = res

    # -- 1 GiB create+fill, warm memory, interleaved
    shape = SIZES["1 GiB"]
    U.progress("core 1 GiB: create+fill")
    results["1 GiB"] = rounds({v.label: (lambda v=v: trial_fill(v, shape, 1, warm=True))
                               for v in vs + [NumpyV()]}, gib_r, warmup=0 if quick else 1)

    U.progress("core: done")
    return report(results, labels, quick)


# ------------------------------------------------------------------ report

OPS = ["create", "attach", "detach", "delete", "create+delete", "create+fill"]


def report(results: dict, labels: list[str], quick: bool) -> dict:
    have_peer = "SharedArray" in labels
    cols = ["operation", "size"] + [f"{lb} median (min)" for lb in labels] \
        + ["numpy (private) median (min)"] \
        + ([f"{lb} / SharedArray" for lb in labels if lb != "SharedArray"]
           if have_peer else [])
    table = U.Table("Per-operation time, median (min) of the repeats", cols, notes=[
        "Ratios are medians divided by SharedArray's median: below 1 is faster.",
        "delete removes the name while the creator still maps it; the memory is "
        "freed at the last detach.",
        "sharedarray's create reserves the space (posix_fallocate) and, from 1 MiB "
        "on, pre-faults it (MADV_POPULATE_WRITE), so create of a large array costs "
        "what the others pay later at their first write (see create+fill); the "
        "reservation is how it raises ENOSPC instead of SIGBUS.",
        "sharedarray's attach reads the header with pread and leaves the mapping "
        "untouched; SharedArray reads its metadata through the mapping (a page "
        "fault, and a page-table teardown at detach).",
        "1 GiB fills vary with whether the host still backs the pages the kernel "
        "hands out (min vs median); the CPU-time table below is the steadier "
        "comparison.",
        "SharedMemory runs with its resource tracker, as users get it (Python "
        "3.11 registers every attach too).",
    ])
    cpu_cols = ["operation", "size"] + [f"{lb}" for lb in labels] \
        + ["numpy (private)"] \
        + ([f"{lb} / SharedArray" for lb in labels if lb != "SharedArray"]
           if have_peer else [])
    cpu_table = U.Table("CPU time of the benchmarking process (user+sys), median of "
                        "the same trials", cpu_cols, notes=[
        "Wall time includes waiting for a CPU while other jobs run on this 2-core "
        "machine; CPU time does not, so these ratios are the steadier ones. Work "
        "the kernel does for the process (page faults, zeroing) counts as sys time.",
    ])
    rows_for_plot: dict[str, dict[str, list]] = {}
    for size in ("10 el.", "100 MiB", "1 GiB"):
        for op in OPS:
            st = results.get(size, {}).get(op)
            if not st:
                continue
            ref = st.get("SharedArray")
            cells = [op, size] + [U.fmt_med_min(st.get(lb)) for lb in labels]
            cells.append(U.fmt_med_min(st.get("numpy (private)")))
            if have_peer:
                cells += [U.fmt_ratio(U.ratio(st[lb].median, ref.median))
                          for lb in labels if lb != "SharedArray"]
            table.add(*cells)
            rows_for_plot.setdefault(size, {})[op] = {
                lb: (st[lb].median if lb in st else None)
                for lb in labels + ["numpy (private)"]}
            cst = results[size].get(op + " cpu", {})
            cref = cst.get("SharedArray")
            cells = [op, size] + [U.fmt_time(cst[lb].median) if lb in cst else "–"
                                  for lb in labels + ["numpy (private)"]]
            if have_peer:
                cells += [U.fmt_ratio(U.ratio(cst[lb].median, cref.median))
                          if lb in cst and cref else "–"
                          for lb in labels if lb != "SharedArray"]
            cpu_table.add(*cells)

    def med(size, op, lb):
        s = results.get(size, {}).get(op, {}).get(lb)
        return s.median if s else None

    def cpu_note(size, op):
        r = U.ratio(med(size, op + " cpu", "sharedarray"), med(size, op + " cpu", "SharedArray"))
        return f" (CPU time: {U.fmt_ratio(r)})" if r is not None else ""

    targets = []
    for size in ("10 el.", "100 MiB"):
        r = U.ratio(med(size, "attach", "sharedarray"), med(size, "attach", "SharedArray"))
        targets.append(U.target(
            f"attach ({size}) ≤ 1.0× SharedArray's median",
            f"{U.fmt_time(med(size, 'attach', 'sharedarray'))} vs "
            f"{U.fmt_time(med(size, 'attach', 'SharedArray'))} = {U.fmt_ratio(r)}"
            + cpu_note(size, "attach"),
            None if r is None else r <= 1.0))
    r = U.ratio(med("10 el.", "create+delete", "sharedarray"),
                med("10 el.", "create+delete", "SharedArray"))
    targets.append(U.target(
        "create+delete of a small array (10 el.) ≤ 1.0× SharedArray's",
        f"{U.fmt_time(med('10 el.', 'create+delete', 'sharedarray'))} vs "
        f"{U.fmt_time(med('10 el.', 'create+delete', 'SharedArray'))} = {U.fmt_ratio(r)}"
        + cpu_note("10 el.", "create+delete"),
        None if r is None else r <= 1.0))
    r = U.ratio(med("1 GiB", "create+fill", "sharedarray"),
                med("1 GiB", "create+fill", "SharedArray"))
    targets.append(U.target(
        "create-then-fill of 1 GiB no slower than SharedArray's (≤ 1.0×)",
        f"{U.fmt_time(med('1 GiB', 'create+fill', 'sharedarray'))} vs "
        f"{U.fmt_time(med('1 GiB', 'create+fill', 'SharedArray'))} = {U.fmt_ratio(r)}"
        + cpu_note("1 GiB", "create+fill"),
        None if r is None else r <= 1.0))

    series_labels = labels + ["numpy (private)"]
    panels = []
    for size, title in (("10 el.", "10 elements"), ("100 MiB", "100 MiB")):
        ops = [op for op in OPS if op in rows_for_plot.get(size, {})]
        panels.append(U.panel(title, ops, {
            lb: [rows_for_plot[size][op].get(lb) for op in ops] for lb in series_labels}))
    fill_sizes = [s for s in ("10 el.", "100 MiB", "1 GiB")
                  if "create+fill" in rows_for_plot.get(s, {})]
    panels.append(U.panel("create + fill", fill_sizes, {
        lb: [rows_for_plot[s]["create+fill"].get(lb) for s in fill_sizes]
        for lb in series_labels}))

    return {
        "title": "Core operations: create, attach, detach, delete",
        "description": (__doc__ or "").split("\n\n", 1)[1].strip(),
        "versions": {"SharedArray": U.peer_version("SharedArray")
                     if SharedArray is not None else "not installed"},
        "tables": [table.as_dict(), cpu_table.as_dict()],
        "targets": targets,
        "plots": [{"file": "core.png", "title": "Core operations (median, log scale; "
                   "lower is better)", "panels": panels}],
        "data": {size: {op: {lb: dict(s) for lb, s in d.items()}
                        for op, d in res.items()} for size, res in results.items()},
        "skipped": [] if SharedArray is not None else
        ["SharedArray 3.2.4 is not installed: its column and the ratios are missing "
         "(pip install SharedArray==3.2.4)"],
    }


if __name__ == "__main__":
    U.main(run)
