"""The README's "Moving to a cluster" program on three executors.

One 256 MiB shared input (4096 x 8192 float64); the task reads one of 8 row
blocks (32 MiB) and returns two floats.  The same calls go to:

* ``sharedarray.ProcessPoolExecutor(2)``;
* ``dask.distributed``: ``client.get_executor()`` on a
  ``LocalCluster(n_workers=2, threads_per_worker=1)`` (processes);
* Ray (``ray.init(num_cpus=2)``): ``f.remote(x, ...)`` with the shared array
  itself (it enters Ray's object store by value, on every call), and with
  ``ray.put(x)`` done once and the reference passed.

Per call: one ``submit(...).result()`` at a time (median, min); per map: the
8 blocks at once.  Variants are interleaved, each executor started and warmed
before timing.  A peer that is not installed is reported as skipped.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sharedarray as sa  # noqa: E402

import _util as U  # noqa: E402

SHAPE = (4096, 8192)       # 256 MiB of float64
BLOCKS = 8


def block_stats(a: np.ndarray, i: int, n: int) -> tuple[float, float]:
    """The task of the README example: statistics of row block ``i`` of ``n``."""
    rows = a[i * len(a) // n:(i + 1) * len(a) // n]
    return float(rows.mean()), float(rows.std())


class _RayExecutor:
    """``submit`` for Ray, so that the same calls go to every engine."""

    def __init__(self, ray: Any) -> None:
        self._remote = ray.remote(block_stats)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self._remote.remote(*args).future()

    def map(self, fn: Callable, *iterables: Any) -> Any:
        return [f.result() for f in [self.submit(fn, *a) for a in zip(*iterables, strict=True)]]


def _one_call(ex: Any, arg: Any) -> Callable[[], float]:
    def trial() -> float:
        t0 = time.perf_counter()
        ex.submit(block_stats, arg, 3, BLOCKS).result()
        return time.perf_counter() - t0
    return trial


def _map(ex: Any, arg: Any) -> Callable[[], float]:
    def trial() -> float:
        t0 = time.perf_counter()
        list(ex.map(block_stats, [arg] * BLOCKS, range(BLOCKS), [BLOCKS] * BLOCKS))
        return time.perf_counter() - t0
    return trial


def run(quick: bool) -> dict:
    repeats_call = 5 if quick else 15
    repeats_map = 3 if quick else 7
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    U.warm_memory(SHAPE[0] * SHAPE[1] * 8)
    x = sa.share(np.random.default_rng(0).random(SHAPE))
    expected = block_stats(x.view(np.ndarray), 3, BLOCKS)
    closers: list[Callable[[], None]] = []
    call_trials: dict[str, Callable[[], float]] = {}
    map_trials: dict[str, Callable[[], float]] = {}
    travels: dict[str, str] = {}
    try:
        ex = sa.ProcessPoolExecutor(2)
        closers.append(ex.shutdown)
        call_trials["sharedarray.ProcessPoolExecutor"] = _one_call(ex, x)
        map_trials["sharedarray.ProcessPoolExecutor"] = _map(ex, x)
        travels["sharedarray.ProcessPoolExecutor"] = "a handle"

        try:
            import distributed
            versions["distributed"] = distributed.__version__
        except ImportError as exc:
            skipped["dask.distributed"] = f"not installed ({exc})"
        else:
            import dask
            from distributed.protocol import Serialize, dumps
            U.progress("starting a LocalCluster")
            # The scheduler's debug log of small messages would keep the
            # arrays our handles rebuild in this process (see the README).
            cfg = dask.config.set({"distributed.admin.low-level-log-length": 0})
            cfg.__enter__()
            closers.append(lambda: cfg.__exit__(None, None, None))
            cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                               processes=True, dashboard_address=None)
            client = distributed.Client(cluster)
            closers.append(cluster.close)
            closers.append(client.close)
            from sharedarray._dask import IDENTITY  # the workers' too: this host
            recipient = {"sharedarray": IDENTITY}
            wire = sum(memoryview(f).nbytes for f in
                       dumps({"x": Serialize(x)}, context={"recipient": recipient}))
            dex = client.get_executor(pure=False)
            call_trials["dask client.get_executor()"] = _one_call(dex, x)
            map_trials["dask client.get_executor()"] = _map(dex, x)
            travels["dask client.get_executor()"] = f"a handle ({wire} B message)"

        try:
            import ray
            versions["ray"] = ray.__version__
        except ImportError as exc:
            skipped["Ray"] = f"not installed ({exc})"
        else:
            U.progress("starting Ray")
            ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                     log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(
                         os.path.abspath(__file__))}})
            closers.append(ray.shutdown)
            rex = _RayExecutor(ray)
            ref = ray.put(x)
            call_trials["Ray, f.remote(x)"] = _one_call(rex, x)
            map_trials["Ray, f.remote(x)"] = _map(rex, x)
            call_trials["Ray, ray.put(x) once"] = _one_call(rex, ref)
            map_trials["Ray, ray.put(x) once"] = _map(rex, ref)
            travels["Ray, f.remote(x)"] = f"the data ({U.fmt_bytes(x.nbytes)}) per call"
            travels["Ray, ray.put(x) once"] = "an object ref (data stored once)"

        for trial in call_trials.values():      # warm every engine
            trial()
        U.progress("per-call trials")
        calls = U.stats(U.interleave(call_trials, repeats_call))
        U.progress("map trials")
        maps = U.stats(U.interleave(map_trials, repeats_map))
        checks = {}
        # Correctness of every path, once.
        if "dask client.get_executor()" in call_trials:
            checks["dask"] = dex.submit(block_stats, x, 3, BLOCKS).result() == expected
        checks["sharedarray"] = ex.submit(block_stats, x, 3, BLOCKS).result() == expected
        if "Ray, f.remote(x)" in call_trials:
            checks["ray"] = rex.submit(block_stats, x, 3, BLOCKS).result() == expected
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception:
                pass
        del x

    base = calls["sharedarray.ProcessPoolExecutor"].median
    t = U.Table("block_stats(x, i, 8) on a 256 MiB shared array, median (min)",
                ["executor", "what travels per call", "per call", "vs sharedarray",
                 f"map over {BLOCKS} blocks"],
                notes=["Two workers each (processes); one call in flight for 'per "
                       "call', all 8 for 'map'.  Each call reads a 32 MiB row block.",
                       "Ray takes a shared array by value (into its object store): "
                       "what it stores then outlives the local array and reaches "
                       "other nodes.  Put it once and pass the reference to pay "
                       "that copy once."]
                + [f"{k}: skipped, {v}" for k, v in skipped.items()])
    for name in call_trials:
        t.add(name, travels[name], U.fmt_med_min(calls[name]),
              U.fmt_ratio(U.ratio(calls[name].median, base)),
              U.fmt_med_min(maps[name]))
    return {
        "title": "Moving to a cluster: the same program on three executors",
        "description": ("One 256 MiB shared input; each task reads one of 8 row "
                        "blocks (32 MiB) and returns two floats.  The README's "
                        "example, on sharedarray's executor, dask.distributed's "
                        "(client.get_executor()) and Ray."),
        "versions": versions,
        "tables": [t.as_dict()],
        "targets": [U.target("every executor computes the same result",
                             ", ".join(f"{k}: {'ok' if v else 'WRONG'}"
                                       for k, v in checks.items()),
                             all(checks.values()))],
        "data": {"per_call": calls, "map": maps, "skipped": skipped},
    }


if __name__ == "__main__":
    U.main(run)
