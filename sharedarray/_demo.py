"""``python -m sharedarray demo``: k-means on data in shared memory.

The job: Lloyd's k-means on ``N`` points in ``D`` dimensions (float64, about
``--size`` bytes), split into row blocks of about 16 MiB.  Every iteration
sends every block, with the current centroids, to a worker, which assigns
each point to its nearest centroid and returns per-cluster sums and counts;
the parent combines them into new centroids.

It runs twice on the same data, in the same order of operations:

* ``sharedarray.ProcessPoolExecutor``: a block is a view of the shared
  array, so a task carries a handle of a few hundred bytes and the worker
  reads the parent's memory;
* ``concurrent.futures.ProcessPoolExecutor``: a block is a plain numpy view,
  which the standard executor pickles, sends through a pipe and unpickles in
  the worker, every iteration.

so the two results must be identical, bit for bit.  The data is made by the
workers of the first pool, writing into the shared array in place.  The
shared array is a ``share()`` temporary: it is unlinked at the end, on
errors, and by the resource tracker if the demo is killed.

The worker functions live here, in an importable module, so that the
standard executor (plain pickle) can send them by reference.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np

import sharedarray as sa

__all__ = ["make_points", "kmeans_step", "run", "Progress"]

K = 4                       # clusters
D = 4                       # dimensions of a point
SEED = 20261125
BLOCK_BYTES = 16 << 20      # one task's share of the data
CHUNK_ROWS = 16384          # rows a worker handles at once (fits in L2)
DEFAULT_ITERATIONS = 4


def make_points(block: np.ndarray, index: int, centers: np.ndarray,
                spread: float = 2.0) -> int:
    """Fill ``block`` (rows × D, written in place) with points around ``centers``.

    Each point is a random center plus uniform noise in ``[-spread, spread)``
    per coordinate.  Deterministic for a given ``index``; returns the number
    of rows written.
    """
    rng = np.random.default_rng([SEED, index])
    labels = rng.integers(len(centers), size=len(block))
    rng.random(out=block)
    block -= 0.5
    block *= 2 * spread
    block += centers[labels]
    return len(block)


def kmeans_step(block: np.ndarray, centroids: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """One k-means assignment over ``block``.

    Returns
    -------
    sums : ndarray, shape (k, d)
        Sum of the points nearest to each centroid.
    counts : ndarray, shape (k,)
        How many points are nearest to each centroid.
    inertia : float
        Sum of squared distances of the points to their nearest centroid.
    """
    k, d = centroids.shape
    sums = np.zeros((k, d))
    counts = np.zeros(k, np.int64)
    inertia = 0.0
    n = min(CHUNK_ROWS, len(block))
    acc, tmp, best = np.empty(n), np.empty(n), np.empty(n)
    labels = np.empty(n, np.intp)
    for start in range(0, len(block), CHUNK_ROWS):
        cols = np.ascontiguousarray(block[start:start + CHUNK_ROWS].T)
        m = cols.shape[1]
        a, t, b, lab = acc[:m], tmp[:m], best[:m], labels[:m]
        b.fill(np.inf)
        lab.fill(0)
        for j in range(k):
            np.subtract(cols[0], centroids[j, 0], out=a)
            a *= a
            for c in range(1, d):
                np.subtract(cols[c], centroids[j, c], out=t)
                t *= t
                a += t
            closer = a < b
            np.copyto(b, a, where=closer)
            lab[closer] = j
        counts += np.bincount(lab, minlength=k)
        for c in range(d):
            sums[:, c] += np.bincount(lab, weights=cols[c], minlength=k)
        inertia += float(b.sum())
    return sums, counts, inertia


def _worker_signals() -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (it stops the
    pools cleanly), and SIGTERM simply ends a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Progress:
    """A one-line progress bar on a terminal (stderr); silent elsewhere.

    Use as a context manager and call :meth:`advance` once per finished task.
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.label = label
        self.total = max(1, total)
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.done = 0
        self.enabled = self.stream.isatty()
        self.start = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more finished tasks; redraws at most 10 times a second."""
        self.done += n
        now = time.perf_counter()
        if now - self._last >= 0.1 or self.done >= self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        fill = int(frac * self.width)
        bar = "#" * fill + "-" * (self.width - fill)
        self.stream.write(f"\r  {self.label} [{bar}] {frac:4.0%} "
                          f"{self.done}/{self.total} tasks "
                          f"{time.perf_counter() - self.start:5.1f} s")
        self.stream.flush()

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")    # clear the bar's line
            self.stream.flush()


def _kmeans(pool: concurrent.futures.Executor, blocks: list, init: np.ndarray,
            iterations: int, progress: Progress) -> tuple[np.ndarray, np.ndarray, float]:
    """Run Lloyd's iterations, one task per block per iteration."""
    centroids = init.copy()
    counts = np.zeros(len(init), np.int64)
    inertia = 0.0
    for _ in range(iterations):
        sums = np.zeros_like(centroids)
        counts = np.zeros(len(centroids), np.int64)
        inertia = 0.0
        for s, c, i in pool.map(kmeans_step, blocks, [centroids] * len(blocks)):
            sums += s
            counts += c
            inertia += i
            progress.advance()
        nonempty = counts > 0          # an empty cluster keeps its centroid
        centroids = centroids.copy()
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
    return centroids, counts, inertia


def _timed(label: str, short: str, out: TextIO, tasks: int,
           fn: Callable[[Progress], Any]) -> tuple[Any, float]:
    """Run ``fn(progress_bar)``; print ``label`` and the time it took.
    The bar, named ``short``, stays within 80 columns."""
    line = f"  {label:<58}"
    bar = Progress(f"{short:<11}", tasks)
    # The bar redraws its line with \r: on a shared terminal it would wipe
    # the label, so then the label is printed with the result instead.
    shared_tty = bar.enabled and out.isatty()
    if not shared_tty:
        out.write(line)
        out.flush()
    t0 = time.perf_counter()
    with bar:
        value = fn(bar)
    dt = time.perf_counter() - t0
    out.write(f"{line if shared_tty else ''}{dt:6.1f} s\n")
    out.flush()
    return value, dt


def _initial_centroids(sample: np.ndarray, k: int) -> np.ndarray:
    """Farthest-point start: each next centroid is the sample point farthest
    from those chosen so far (deterministic, good for separated clusters)."""
    chosen = [sample[0]]
    dist = ((sample - sample[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        nxt = sample[int(dist.argmax())]
        chosen.append(nxt)
        dist = np.minimum(dist, ((sample - nxt) ** 2).sum(axis=1))
    return np.array(chosen)


def _split(n: int, blocks: int) -> list[tuple[int, int]]:
    step = -(-n // blocks)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def run(size: int = 1 << 30, workers: int | None = None,
        iterations: int | None = None, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit status (0 when the results agree).

    Parameters
    ----------
    size : int
        Bytes of point data (rounded to whole points).
    workers : int, optional
        Worker processes for each pool (default: the CPU count).
    iterations : int, optional
        k-means iterations (default 4).
    out : text stream, optional
        Where the report goes (default: stdout); the progress bar goes to
        stderr when that is a terminal.
    """
    out = sys.stdout if out is None else out
    workers = workers or os.cpu_count() or 1
    iterations = DEFAULT_ITERATIONS if iterations is None else iterations
    n = max(K, size // (D * 8))
    nblocks = max(-(-n * D * 8 // BLOCK_BYTES), 2 * workers)
    spans = _split(n, nblocks)
    nblocks = len(spans)
    tasks = nblocks * iterations
    rng = np.random.default_rng(SEED)
    centers = rng.uniform(-8, 8, (K, D))

    out.write(f"sharedarray demo: k-means (k={K}) on {n:,} points in {D}-D\n"
              f"  {sa.__name__} {sa.__version__}, numpy {np.__version__}, "
              f"Python {sys.version.split()[0]}, {workers} workers\n"
              f"  data: {_human(n * D * 8)} of float64 in shared memory, "
              f"{nblocks} blocks of {_human(n * D * 8 / nblocks)};\n"
              f"  {iterations} iterations, each sends every block to a worker "
              f"({tasks} tasks per run)\n\n")
    out.flush()

    points = share_name = None
    views: list = []
    # SIGTERM ends the demo through the finally clause below, like Ctrl-C.
    in_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        t0 = time.perf_counter()
        # share() of np.zeros: the zeros are calloc'd pages never written,
        # so this costs one pass of writes into the new segment.
        points = sa.share(np.zeros((n, D)))
        share_name = points.segment.name
        out.write(f"  {'making the data in ' + share_name + ' (workers fill it)':<58}")
        out.flush()
        with sa.ProcessPoolExecutor(workers, initializer=_worker_signals) as pool:
            for _ in pool.map(make_points, [points[i:j] for i, j in spans],
                              range(nblocks), [centers] * nblocks):
                pass
        out.write(f"{time.perf_counter() - t0:6.1f} s\n")
        init = _initial_centroids(points[:min(n, 20000)].view(np.ndarray), K)
        views = [points[i:j] for i, j in spans]
        handle = len(pickle.dumps(views[0]))

        def with_sharedarray(bar: Progress) -> Any:
            with sa.ProcessPoolExecutor(workers, initializer=_worker_signals) as pool:
                return _kmeans(pool, views, init, iterations, bar)

        (c1, n1, i1), t1 = _timed(
            "sharedarray.ProcessPoolExecutor (blocks as shared views)",
            "sharedarray", out, tasks, with_sharedarray)

        plain = [v.view(np.ndarray) for v in views]     # pickled by value

        def with_stdlib(bar: Progress, plain: list = plain) -> Any:
            with concurrent.futures.ProcessPoolExecutor(
                    workers, initializer=_worker_signals) as pool:
                return _kmeans(pool, plain, init, iterations, bar)

        (c2, n2, i2), t2 = _timed(
            "concurrent.futures.ProcessPoolExecutor (blocks pickled)",
            "standard", out, tasks, with_stdlib)
        del plain

        out.write(f"\n  speed-up: {t2 / t1:.1f}x  (data sent to workers: "
                  f"{_human(handle * tasks)} of handles vs "
                  f"{_human(n * D * 8 * iterations)} pickled)\n")
        agree = (np.array_equal(c1, c2) and np.array_equal(n1, n2)
                 and (i1 == i2 or math.isclose(i1, i2, rel_tol=1e-12)))
        if agree:
            out.write(f"  results agree: identical centroids and cluster sizes "
                      f"(inertia {i1:.6g})\n")
        else:
            out.write(f"  results DIFFER: max centroid difference "
                      f"{np.abs(c1 - c2).max():.3g}, counts {n1} vs {n2}, "
                      f"inertia {i1!r} vs {i2!r}\n")
        if n >= 100 * K:               # enough points for the clusters to show
            err = max(np.sqrt(((c1 - c) ** 2).sum(axis=1)).min() for c in centers)
            out.write(f"  every true cluster center was found within {err:.3f}\n")
        out.flush()
        return 0 if agree else 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old_term)
        views.clear()
        points = None
        if share_name is not None:
            try:
                sa.delete(share_name)
            except FileNotFoundError:
                pass          # already released with its last reference


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
