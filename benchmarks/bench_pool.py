"""Executors side by side: sharedarray.ProcessPoolExecutor against the standard
``concurrent.futures.ProcessPoolExecutor``, ``joblib.Parallel`` (default
auto-memmapping; one-shot calls and a reused ``with Parallel()`` context) and
``loky.get_reusable_executor`` - 2 workers each, pools started and warmed
before anything is timed.

Cases
-----
(a) a ``sharedarray.ndarray`` argument (``sa.share`` / ``sa.create``) of 1 MiB
    to 1 GiB, passed to a task that reads 3 elements;
(b) a plain numpy array of the same sizes: a fresh array object per batch (so
    the copy into shared memory is counted), and the same object reused.  For
    ours, fresh arrays come three times in a row: the first of its size (a new
    segment), the second (copied into the segment the first one released)
    and the third (the same, once that segment is mapped here: a loop's
    steady state);
(c) 1 MiB, 64 MiB and 256 MiB results returned by the worker; (c′) the largest
    built with ``np.full`` in the worker and returned, end to end;
(d) 10,000 tiny tasks ``f(x) = x`` with ``map(chunksize=1)`` and ``(100)``;
plus one ``np.copyto`` of each size into a pre-touched array, the reference
for (b).

How it is measured
------------------
Each pool family runs in its own interpreter (a "child", driven over a pipe),
because standalone loky and joblib's vendored loky in one process break
joblib's memmap clean-up.  The parent
interleaves the families batch by batch, rotating the order every round, so
they all see the same machine state.  Fresh memory is pre-touched before every
batch that allocates it (``_util.warm_memory``: this VM hands idle pages back
to the host, and re-faulting them is 19x slower).

A *batch* is 8 calls submitted together (4 for returns); *per call* is the
batch's wall time divided by its calls (throughput with 2 workers).  Cells
are the median over batches (min in brackets).  The by-value peers at 1 GiB
take ~4 s per call, so they run fewer calls there.

The task functions below are module-level: every child imports this file as
``bench_pool`` (its directory on ``PYTHONPATH``), so workers - forked or
spawned - import them by reference.
"""

from __future__ import annotations

import json
import os
import select
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util  # noqa: E402
from _util import GiB, MiB, Stats, Table, fmt_bytes, fmt_ratio, fmt_time, line_panel, target  # noqa: E402

WORKERS = 2
CALLS = 8              # calls per batch, (a) and (b)
RET_CALLS = 4          # calls per batch, (c)
SLOW_BIG_CALLS = 4     # by-value peers at 1 GiB: ~4 s per call, 2 per worker

ROWS = {               # row key -> (child interpreter, label)
    "ours": ("sharedarray", "sharedarray.ProcessPoolExecutor"),
    "stdlib": ("stdlib", "concurrent.futures.ProcessPoolExecutor"),
    "joblib": ("joblib", "joblib.Parallel, one-shot `Parallel(n_jobs=2)(...)`"),
    "joblibctx": ("joblib", "joblib.Parallel, reused `with Parallel(n_jobs=2)`"),
    "loky": ("loky", "loky.get_reusable_executor"),
}
SHORT = {"ours": "sharedarray", "stdlib": "stdlib PPE", "joblib": "joblib one-shot",
         "joblibctx": "joblib context", "loky": "loky"}
BY_VALUE = ("stdlib", "loky")     # rows that pickle plain arrays by value


# ---------------------------------------------------------------- tasks
# Run in the workers.  Keep them trivial: the benchmark measures transport.

def checksum(a: np.ndarray) -> float:
    """Read 3 elements (first, middle, last)."""
    return float(a[0]) + float(a[a.shape[0] // 2]) + float(a[-1])


def filled(nbytes: int, k: float) -> np.ndarray:
    """A fresh float64 array of ``nbytes`` filled with ``k`` (the result case)."""
    out = np.empty(nbytes // 8)
    out.fill(k)
    return out


def built(nbytes: int, k: float) -> np.ndarray:
    """``np.full``: the worker builds the array (counted) and returns it (c′)."""
    return np.full(nbytes // 8, k)


def filled_value(nbytes: int, k: float) -> float:
    """The same work as :func:`filled`, but only a float comes back (floor)."""
    return float(filled(nbytes, k)[-1])


def ident(x: Any) -> Any:
    return x


# ---------------------------------------------------------------- child side

class _Server:
    """One pool family in its own interpreter; each op runs one timed batch."""

    def __init__(self, family: str) -> None:
        import sharedarray as sa
        self.sa = sa
        self.family = family
        self.ex: dict[str, Any] = {}
        self.shared: dict[tuple, Any] = {}    # (kind, size) -> sa array, one size at a time
        self.kept: dict[int, np.ndarray] = {}  # size -> plain array reused across batches
        self.primed: set = set()
        self.created: list[str] = []
        self.k = 0.0
        self.copies = 0

    # -- pools
    def op_setup(self) -> dict:
        versions = {"numpy": np.__version__}
        if self.family == "sharedarray":
            exec("def ident_main(x):\n    return x\n", vars(sys.modules["__main__"]))
            self.ex["ours"] = self.sa.ProcessPoolExecutor(WORKERS)
            self._count_copies()
        elif self.family == "stdlib":
            import concurrent.futures
            self.ex["stdlib"] = concurrent.futures.ProcessPoolExecutor(WORKERS)
        elif self.family == "loky":
            import loky
            # A long idle timeout keeps the workers warm between interleaved
            # batches (the default 300 s could expire in a long run).
            self.ex["loky"] = loky.get_reusable_executor(max_workers=WORKERS, timeout=3600)
            versions["loky"] = loky.__version__
        elif self.family == "joblib":
            import joblib
            self.ctx = joblib.Parallel(n_jobs=WORKERS)
            self.ctx.__enter__()
            versions["joblib"] = joblib.__version__
        rows = [r for r, (fam, _) in ROWS.items() if fam == self.family]
        small = np.full(2 * MiB // 8, 1.0)
        shared = self.sa.share(small)
        for row in rows:      # warm: worker start-up, imports, every code path
            for _ in range(2):
                self._run(row, ident, (1,), 2 * WORKERS)
                self._run(row, checksum, (small,), 2 * WORKERS)
                self._run(row, checksum, (shared,), 2 * WORKERS)
                self._run(row, filled, (2 * MiB, 1.0), WORKERS)
        return {"rows": rows, "versions": versions, "pid": os.getpid()}

    def _count_copies(self) -> None:
        """Count the executor's copies of plain arrays into shared memory,
        into new segments and into released ones (diagnostic: one Python
        call of overhead per copy)."""
        from sharedarray import pool
        me = os.getpid()

        def counting(real: Any) -> Any:
            def counted(*args: Any, **kw: Any) -> Any:
                if os.getpid() == me:
                    self.copies += 1
                return real(*args, **kw)
            return counted
        pool.share_segment = counting(pool.share_segment)
        pool.refill_segment = counting(pool.refill_segment)

    def _run(self, row: str, fn: Any, args: tuple, n: int) -> list:
        if row == "joblib":
            import joblib
            return joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(fn)(*args) for _ in range(n))
        if row == "joblibctx":
            import joblib
            return self.ctx(joblib.delayed(fn)(*args) for _ in range(n))
        ex = self.ex[row]
        futures = [ex.submit(fn, *args) for _ in range(n)]
        return [f.result() for f in futures]

    def _timed(self, row: str, fn: Any, args: tuple, n: int, check: Any) -> float:
        t0 = time.perf_counter()
        out = self._run(row, fn, args, n)
        for r in out:
            check(r)
        dt = time.perf_counter() - t0
        del out
        return dt

    def _next_k(self) -> float:
        self.k += 1.0
        return self.k

    # -- (a) shared arrays
    def _shared_array(self, kind: str, size: int) -> Any:
        key = (kind, size)
        if key not in self.shared:
            if kind == "share":
                self.shared[key] = self.sa.share(np.full(size // 8, 2.5))
            else:
                name = _util.new_name("-pool")
                arr = self.sa.create(name, (size // 8,), np.float64)
                arr[...] = 2.5
                self.created.append(name)
                self.shared[key] = arr
        return self.shared[key]

    def _drop_shared(self) -> None:
        self.shared.clear()
        for name in self.created:
            try:
                self.sa.delete(name)
            except FileNotFoundError:
                pass
        self.created.clear()

    def op_pass_shared(self, row: str, kind: str, size: int, calls: int) -> float:
        arr = self._shared_array(kind, size)
        return self._timed(row, checksum, (arr,), calls, _expect(7.5))

    def op_prepare_shared(self, kind: str, size: int) -> None:
        self._shared_array(kind, size)

    def op_drop(self) -> None:
        """Free the (a) arrays (up to 1 GiB of shared memory) before (b)."""
        self._drop_shared()

    def op_pass_tiny(self, row: str, calls: int) -> float:
        return self._timed(row, ident, (1,), calls, _expect(1))

    # -- (b) plain arrays
    def _fresh(self, size: int) -> tuple[np.ndarray, float]:
        k = self._next_k()
        src = np.empty(size // 8)
        src.fill(k)              # touched; a distinct value so content hashes differ
        return src, k

    def op_pass_plain(self, row: str, size: int, calls: int, fresh: bool) -> dict:
        if fresh and row == "ours":
            return self._pass_plain_series(size, calls)
        if fresh:
            src, k = self._fresh(size)
        else:
            if size not in self.kept:
                self.kept.clear()
                self.kept[size] = np.full(size // 8, 0.5)
            src, k = self.kept[size], 0.5
            if (row, size) not in self.primed:    # steady state: not the first use
                self._run(row, checksum, (src,), calls)
                self.primed.add((row, size))
        _util.warm_memory(min(size, GiB))
        self.copies = 0
        t = self._timed(row, checksum, (src,), calls, _expect(3 * k))
        return {"t": t, "copies": self.copies if row == "ours" else None}

    def _pass_plain_series(self, size: int, calls: int) -> dict:
        """Ours, fresh arrays: the first of its size, the second, the third."""
        pool = self.ex["ours"]._sa_pool
        pool.spares.clear()          # the first array of its size: a new segment
        out: dict[str, Any] = {}
        for key in ("t_cold", "t_second", "t"):
            src, k = self._fresh(size)
            _util.warm_memory(min(size, GiB))
            self.copies = 0
            out[key] = self._timed("ours", checksum, (src,), calls, _expect(3 * k))
            del src
            deadline = time.monotonic() + 10     # the done callbacks release it
            while pool.leases.current and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.02)                     # ... and then retire it
        out["spares"] = len(pool.spares.names())
        out["copies"] = self.copies
        return out

    # -- (c) results
    def op_ret(self, row: str, size: int, calls: int, floor: bool = False,
               full: bool = False) -> float:
        k = self._next_k()
        _util.warm_memory(min(calls * size, GiB))
        if floor:
            return self._timed(row, filled_value, (size, k), calls, _expect(k))
        if full:
            def check_full(r: np.ndarray) -> None:
                if r.shape != (size // 8,) or r[-1] != k:
                    raise AssertionError(f"bad result {r.shape} {r[-1]!r}")
            return self._timed(row, built, (size, k), 1, check_full)

        def check(r: np.ndarray) -> None:
            if r.shape != (size // 8,) or r[-1] != k:
                raise AssertionError(f"bad result {r.shape} {r[-1]!r}")
        return self._timed(row, filled, (size, k), calls, check)

    # -- (d) tiny tasks
    def op_tiny(self, row: str, n: int, chunksize: Any, main: bool = False) -> float:
        items = range(n)
        fn = ident
        if main:
            # A function of the program's own (its __main__), the commonest
            # case; defined before the workers were forked, as a script's is.
            fn = vars(sys.modules["__main__"])["ident_main"]
        t0 = time.perf_counter()
        if row in ("joblib", "joblibctx"):
            import joblib
            tasks = (joblib.delayed(ident)(i) for i in items)
            if row == "joblib":
                out = joblib.Parallel(n_jobs=WORKERS, batch_size=chunksize)(tasks)
            else:
                out = self.ctx(tasks)     # the context's own batch_size ('auto')
        else:
            out = list(self.ex[row].map(fn, items, chunksize=chunksize))
        dt = time.perf_counter() - t0
        if len(out) != n or out[-1] != n - 1:
            raise AssertionError("tiny tasks: wrong results")
        return dt

    # -- reference
    def op_memcpy(self, size: int, reps: int) -> list[float]:
        src = np.full(size // 8, 1.0)
        dst = np.empty_like(src)
        dst.fill(0.0)
        out = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            out.append(time.perf_counter() - t0)
        return out[1:]

    def op_close(self) -> list[str]:
        self._drop_shared()
        self.kept.clear()
        if self.family == "joblib":
            self.ctx.__exit__(None, None, None)
        for ex in self.ex.values():
            ex.shutdown(wait=True)
        return _util.cleanup()


def _expect(v: float) -> Any:
    def check(r: Any) -> None:
        if r != v:
            raise AssertionError(f"expected {v!r}, got {r!r}")
    return check


def _serve(family: str) -> None:
    """Child main loop: JSON commands on stdin, JSON replies on a private fd."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                   # stray prints (ours or workers') go to stderr
    server = _Server(family)
    closed = False
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            reply = {"ok": getattr(server, "op_" + op)(**cmd)}
        except Exception:
            reply = {"error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        if op == "close":
            closed = True
            break
    if not closed:              # the parent went away: still shut down cleanly
        server.op_close()


# ---------------------------------------------------------------- parent side

class _Child:
    def __init__(self, family: str) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [here] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.family = family
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import bench_pool; bench_pool._serve({family!r})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=here, env=env, text=True)
        self.pid = self.proc.pid

    def call(self, op: str, timeout: float = 600, **kw: Any) -> Any:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.family}: {op} took more than {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.family} child died (exit {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.family} {op} {kw}: {reply['error']}")
        return reply["ok"]

    def close(self) -> list[str]:
        try:
            return self.call("close", timeout=120)
        finally:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()        # only this child, by its own handle
                self.proc.wait()


def _rounds(trials: dict[Any, Any], repeats: int,
            budget: Any = None) -> dict[Any, list[float]]:
    """Run ``trials`` (key -> zero-arg callable returning seconds or None)
    round-robin, rotating the order each round; ``budget(key)`` caps the
    batches of a slow trial."""
    keys = list(trials)
    out: dict[Any, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        s = r % len(keys)
        for k in keys[s:] + keys[:s]:
            if budget is not None and r >= budget(k):
                continue
            t = trials[k]()
            if t is not None:
                out[k].append(t)
    return out


def _plan(case: str, row: str, size: int, quick: bool) -> tuple[int, int]:
    """(batches, calls per batch).  Rows that pickle the data by value cost
    0.5-4 s per call at 256 MiB-1 GiB on this VM; they get fewer batches so
    that the module stays under 8 minutes (90 s quick)."""
    if case == "b":
        if row in BY_VALUE:
            if size >= GiB:
                return 1, SLOW_BIG_CALLS
            if size >= 256 * MiB:
                return 2, SLOW_BIG_CALLS
            if size >= 64 * MiB:
                return (2 if quick else 3), CALLS
        return (3 if quick else 5), CALLS
    if case == "c":
        if row != "ours":                     # every peer returns arrays by value
            return (2 if quick else (2 if size >= 256 * MiB else 3)), RET_CALLS
        return (3 if quick else 5), RET_CALLS
    raise ValueError(case)


def run(quick: bool) -> dict:
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    sizes = [1 * MiB, 64 * MiB] if quick else [1 * MiB, 64 * MiB, 256 * MiB, 1 * GiB]
    ret_sizes = [1 * MiB, 64 * MiB] if quick else [1 * MiB, 64 * MiB, 256 * MiB]
    repeats = 3 if quick else 5
    n_tiny = 2_000 if quick else 10_000
    shm_before = set(os.listdir(_util.SHM))

    children: dict[str, _Child] = {}
    versions: dict[str, str] = {}
    errors: list[str] = []
    res: dict[Any, list[float]] = {}     # (case, row, x) -> seconds per call
    phases: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - clock[0], 1)
        clock[0] = now

    def trial(fam: str, op: str, per: int, **kw: Any) -> Any:
        def go() -> float | None:
            try:
                t = children[fam].call(op, **kw)
            except Exception as exc:          # one bad trial must not sink the run
                errors.append(str(exc).strip().splitlines()[-1][:300])
                return None
            if isinstance(t, dict):
                if t.get("copies") is not None:
                    res.setdefault(("copies", kw["row"], kw["size"], kw["fresh"]),
                                   []).append(t["copies"])
                for k in ("cold", "second"):
                    if "t_" + k in t:
                        res.setdefault((f"b-{k}", kw["row"], kw["size"]),
                                       []).append(t["t_" + k] / per)
                t = t["t"]
            return t / per
        return go

    try:
        for fam in ("sharedarray", "stdlib", "joblib", "loky"):
            children[fam] = _Child(fam)
        for ch in children.values():
            info = ch.call("setup", timeout=300)
            versions.update(info["versions"])
        rows = list(ROWS)
        lap("start + warm pools")

        # reference: memcpy into a pre-touched array
        for size in sizes:
            ts = children["sharedarray"].call("memcpy", size=size, reps=5)
            res[("memcpy", "ref", size)] = ts
        lap("memcpy")

        # (a) shared arrays, plus the dispatch floor with a tiny argument
        a_repeats = 5 if quick else 7        # batches of a few ms: cheap
        trials = {}
        for row in rows:
            trials[("a", row, "tiny")] = trial(ROWS[row][0], "pass_tiny", CALLS,
                                                row=row, calls=CALLS)
        res.update(_rounds(trials, a_repeats))
        # Every size in one set of rounds, so that whatever the machine does
        # meanwhile is spread over all sizes alike (the target is about size).
        # The arrays are made first and the kernel given time to settle:
        # making and freeing GiBs leaves reclaim and balloon work behind.
        for size in sizes:
            for fam in ("sharedarray", "stdlib", "joblib", "loky"):
                children[fam].call("prepare_shared", kind="share", size=size)
            children["sharedarray"].call("prepare_shared", kind="create", size=size)
        time.sleep(3.0 if sizes[-1] >= 256 * MiB else 0.5)
        trials = {}
        for size in sizes:
            for row in rows:
                trials[("a", row, size)] = trial(ROWS[row][0], "pass_shared", CALLS, row=row,
                                                 kind="share", size=size, calls=CALLS)
            trials[("a", "ours-create", size)] = trial(
                "sharedarray", "pass_shared", CALLS, row="ours", kind="create",
                size=size, calls=CALLS)
        res.update(_rounds(trials, a_repeats))
        for ch in children.values():
            ch.call("drop")
        lap("(a)")

        # (b) plain arrays: fresh per batch, then the same object reused
        for size in sizes:
            trials = {}
            for row in rows:
                calls = _plan("b", row, size, quick)[1]
                trials[("b", row, size)] = trial(ROWS[row][0], "pass_plain", calls, row=row,
                                                 size=size, calls=calls, fresh=True)
            res.update(_rounds(trials, repeats,
                               lambda k: _plan(k[0], k[1], k[2], quick)[0]))
        lap("(b) fresh")
        for size in sizes:
            trials = {("b-reuse", row, size): trial(ROWS[row][0], "pass_plain", CALLS,
                                                    row=row, size=size, calls=CALLS,
                                                    fresh=False)
                      for row in rows if not (row in BY_VALUE and size > 1 * MiB)}
            res.update(_rounds(trials, 3))
        lap("(b) reused")

        # (c) results
        for size in ret_sizes:
            trials = {("c", row, size): trial(ROWS[row][0], "ret", RET_CALLS, row=row,
                                              size=size, calls=RET_CALLS)
                      for row in rows}
            trials[("c", "floor", size)] = trial("stdlib", "ret", RET_CALLS, row="stdlib",
                                                 size=size, calls=RET_CALLS, floor=True)
            res.update(_rounds(trials, repeats,
                               lambda k: _plan("c", "ours" if k[1] == "floor" else k[1],
                                               k[2], quick)[0]))
        lap("(c)")

        # (c′) end to end: the worker builds the largest result with np.full,
        # one call at a time (the build counted), ours against the stdlib
        big_ret = ret_sizes[-1]
        trials = {("c-full", row, big_ret): trial(ROWS[row][0], "ret", 1, row=row,
                                                  size=big_ret, calls=1, full=True)
                  for row in ("ours", "stdlib")}
        res.update(_rounds(trials, 3 if quick else 7))
        lap("(c′)")

        # (d) tiny tasks: seconds per task
        trials = {}
        for cs in (1, 100):
            for row in ("ours", "stdlib", "loky", "joblib"):
                trials[("d", row, cs)] = trial(ROWS[row][0], "tiny", n_tiny, row=row,
                                               n=n_tiny, chunksize=cs)
            trials[("d", "ours-main", cs)] = trial("sharedarray", "tiny", n_tiny, row="ours",
                                                   n=n_tiny, chunksize=cs, main=True)
        trials[("d", "joblib", "auto")] = trial("joblib", "tiny", n_tiny, row="joblib",
                                                n=n_tiny, chunksize="auto")
        trials[("d", "joblibctx", "auto")] = trial("joblib", "tiny", n_tiny, row="joblibctx",
                                                   n=n_tiny, chunksize="auto")
        # chunksize=1 takes ~1 s per run (joblib's batch_size=1 more); the
        # batched runs take tens of ms and vary more, so they get more runs.
        # Every round runs ours and the standard executor's one after the
        # other: the ratio is also taken per round (_paired).
        res.update(_rounds(trials, 11, lambda k: 3 if k[:2] == ("d", "joblib") and k[2] == 1
                           else 7 if k[2] == 1 else 11))
        lap("(d)")
    finally:
        swept = []
        for ch in children.values():
            try:
                swept += ch.close()
            except Exception as exc:
                errors.append(f"closing {ch.family}: {exc}")
        pids = [str(ch.pid) for ch in children.values()]
        time.sleep(0.5)
        left = sorted(n for n in set(os.listdir(_util.SHM)) - shm_before
                      if any(p in n for p in pids))

    out = _report(res, sizes, ret_sizes, n_tiny, quick, versions, errors, left, swept,
                  load0, os.getloadavg(), time.perf_counter() - t_start)
    run_table = Table("This run: seconds per phase", list(phases) or ["–"],
                      notes=out.pop("notes"))
    run_table.add(*(phases.values() or ["–"]))
    out["tables"].append(run_table.as_dict())
    out["data"]["phases"] = phases
    return out


# ---------------------------------------------------------------- report

def _st(res: dict, key: Any) -> Stats | None:
    v = res.get(key)
    return Stats(v) if v else None


def _paired(res: dict, slow: Any, fast: Any) -> list[float]:
    """Per round, ``slow``'s time / ``fast``'s (both measured in every
    round, side by side), sorted; empty when a run of either failed."""
    a, b = res.get(slow, []), res.get(fast, [])
    if not a or len(a) != len(b):
        return []
    return sorted(x / y for x, y in zip(a, b, strict=True))


def _med(res: dict, key: Any) -> float | None:
    st = _st(res, key)
    return st.median if st else None


def _cell(st: Stats | None) -> str:
    if st is None:
        return "–"
    if st["n"] == 1:
        return f"{fmt_time(st.median)} (n=1)"
    return f"{fmt_time(st.median)} ({fmt_time(st.min)})"


def _copies(res: dict, key: Any) -> str:
    v = res.get(key)
    if not v:
        return "–"
    return f"{min(v)}–{max(v)} (median {sorted(v)[len(v) // 2]})" if min(v) != max(v) \
        else str(v[0])


def _r(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _over_memcpy(res: dict, key: str, size: int) -> tuple[float | None, float | None]:
    """Ours, per call and per whole batch, over one memcpy of the data."""
    med, memcpy = _med(res, (key, "ours", size)), _med(res, ("memcpy", "ref", size))
    return _r(med, memcpy), _r(med * CALLS if med else None, memcpy)


def _loop_mean(res: dict, size: int) -> float | None:
    """Ours, per call, over three fresh arrays in a row (1st, 2nd, 3rd):
    what a loop that starts cold pays on average over its first batches."""
    meds = [_med(res, (k, "ours", size)) for k in ("b-cold", "b-second", "b")]
    return None if None in meds else sum(meds) / len(meds)


def _report(res: dict, sizes: list[int], ret_sizes: list[int], n_tiny: int, quick: bool,
            versions: dict, errors: list[str], left: list[str], swept: list[str],
            load0: tuple, load1: tuple, wall: float) -> dict:
    rows = list(ROWS)
    big = sizes[-1]
    big_ret = ret_sizes[-1]
    scol = [fmt_bytes(s) for s in sizes]
    tables = []

    # (a)
    t = Table("(a) `sharedarray.ndarray` argument (`sa.share`), task reads 3 elements: "
              "time per call", ["method", "tiny int argument"] + scol)
    for row in rows:
        t.add(ROWS[row][1], _cell(_st(res, ("a", row, "tiny"))),
              *[_cell(_st(res, ("a", row, s))) for s in sizes])
    t.add("sharedarray.ProcessPoolExecutor, `sa.create` array", "",
          *[_cell(_st(res, ("a", "ours-create", s))) for s in sizes])
    t.add("**by value**: stdlib with the same data as a plain array (from b)", "",
          *[_cell(_st(res, ("b", "stdlib", s))) for s in sizes])
    t.add("ratio stdlib by value / ours", "",
          *[fmt_ratio(_r(_med(res, ("b", "stdlib", s)), _med(res, ("a", "ours", s))))
            for s in sizes])
    t.notes += [
        f"{CALLS} calls per batch, 2 workers; per call = batch wall time / {CALLS}; "
        "median over batches (min in brackets).",
        "Importing sharedarray registers its copyreg reducer, so a `sharedarray.ndarray` "
        "travels as a handle through every executor here, not just ours: the peers' rows "
        "show that; the by-value row is what the same data costs as a plain array.",
    ]
    tables.append(t.as_dict())

    # (b)
    t = Table("(b) plain numpy argument, a fresh array object per batch (the copy is "
              "counted): time per call", ["method"] + scol)
    t.add("reference: one `np.copyto` of the data (pre-touched destination)",
          *[_cell(_st(res, ("memcpy", "ref", s))) for s in sizes])
    t.add("sharedarray.ProcessPoolExecutor, 1st array of its size (new segment)",
          *[_cell(_st(res, ("b-cold", "ours", s))) for s in sizes])
    t.add("sharedarray.ProcessPoolExecutor, 2nd array (refilled copy, mapped here first)",
          *[_cell(_st(res, ("b-second", "ours", s))) for s in sizes])
    t.add("sharedarray.ProcessPoolExecutor, 3rd array (refilled copy: a loop's steady state)",
          *[_cell(_st(res, ("b", "ours", s))) for s in sizes])
    for row in rows[1:]:
        t.add(ROWS[row][1], *[_cell(_st(res, ("b", row, s))) for s in sizes])
    t.add("ours: copies into shared memory per batch (should be 1)",
          *[_copies(res, ("copies", "ours", s, True)) for s in sizes])
    for key, what in (("b-cold", "1st array"), ("b-second", "2nd array"),
                      ("b", "3rd array")):
        t.add(f"ours, {what}: per call / one memcpy (whole batch of {CALLS} calls)",
              *["{} ({})".format(*map(fmt_ratio, _over_memcpy(res, key, s))) for s in sizes])
    for row in ("stdlib", "joblib", "joblibctx", "loky"):
        t.add(f"ratio {row} / ours (1st array; mean of 1st–3rd; 3rd array)",
              *[f"{fmt_ratio(_r(_med(res, ('b', row, s)), _med(res, ('b-cold', 'ours', s))))}; "
                f"{fmt_ratio(_r(_med(res, ('b', row, s)), _loop_mean(res, s)))}; "
                f"{fmt_ratio(_r(_med(res, ('b', row, s)), _med(res, ('b', 'ours', s))))}"
                for s in sizes])
    t.notes += [
        f"Per call = batch / calls, {CALLS} calls per batch with one fresh array "
        f"(filled with a new value, so joblib's content hash cannot reuse a dump). "
        f"The by-value peers (stdlib, loky) run 1 batch of {SLOW_BIG_CALLS} calls at 1 GiB, "
        f"2 batches of {SLOW_BIG_CALLS} at 256 MiB and 3 of {CALLS} at 64 MiB (n=1: one "
        "batch, no spread).",
        "Ours runs three batches back to back, each with a fresh array. The 1st of its "
        "size is copied into a new segment: the kernel allocates every page. The 2nd is "
        "copied into the segment the 1st released, which the executor keeps for 5 s for "
        "that purpose; its pages must first be mapped into the parent (one madvise). "
        "The 3rd and every later one: a memcpy into pages already mapped.",
        "`memcpy` is the time of one copy. Per call / memcpy is the measure the targets "
        "use (aggregate throughput against a copy, as for every case here); our batch "
        "copies the array once into shared memory, so whole batch / memcpy is also shown.",
        "The 1st array of a size cannot get near one memcpy: a new 1 GiB tmpfs object "
        "costs 0.5–0.9 s of kernel page allocation on this VM (4 KiB pages; shared "
        "memory gets no huge pages here), against ~0.09 s for the copy. joblib's "
        "one-shot dump pays the same, which is why the 1st array alone is compared "
        "with it at about parity to 3×, depending on the host.",
    ]
    tables.append(t.as_dict())

    t = Table("(b′) plain numpy argument, the same array object in every batch: time per call",
              ["method"] + scol)
    for row in rows:
        t.add(ROWS[row][1], *[_cell(_st(res, ("b-reuse", row, s))) for s in sizes])
    t.add("ours: copies into shared memory per batch",
          *[_copies(res, ("copies", "ours", s, False)) for s in sizes])
    t.notes += ["Steady state: one untimed batch first. The array may have changed since "
                "the last batch, so ours compares it with the copy that batch left behind "
                "(kept a few seconds for this) and uses that copy as it is when the bytes "
                "are the same; the copies row counts rewrites. "
                "joblib's reused context keeps its dump for the life of the context. "
                "By-value peers (stdlib, loky) run only at 1 MiB here: they copy every call "
                "anyway, so their (b) row is their cost."]
    tables.append(t.as_dict())

    # (c)
    rcol = [fmt_bytes(s) for s in ret_sizes]
    t = Table("(c) a large array returned by the worker (worker fills it, parent checks a "
              "value): time per call", ["method"] + rcol)
    t.add("floor: worker fills the array, returns a float (stdlib)",
          *[_cell(_st(res, ("c", "floor", s))) for s in ret_sizes])
    for row in rows:
        t.add(ROWS[row][1], *[_cell(_st(res, ("c", row, s))) for s in ret_sizes])
    t.add("ratio stdlib / ours",
          *[fmt_ratio(_r(_med(res, ("c", "stdlib", s)), _med(res, ("c", "ours", s))))
            for s in ret_sizes])
    t.notes += [f"{RET_CALLS} calls per batch; per call = batch / {RET_CALLS}."]
    tables.append(t.as_dict())
    t = Table(f"(c′) end to end: the worker builds {fmt_bytes(big_ret)} with `np.full` and "
              "returns it, one call at a time: time per call", ["method", fmt_bytes(big_ret)])
    for row in ("ours", "stdlib"):
        t.add(ROWS[row][1], _cell(_st(res, ("c-full", row, big_ret))))
    t.add("ratio stdlib / ours", fmt_ratio(_r(_med(res, ("c-full", "stdlib", big_ret)),
                                              _med(res, ("c-full", "ours", big_ret)))))
    t.notes += ["The build (page faults of fresh anonymous memory, the fill) is counted."]
    tables.append(t.as_dict())

    # (d)
    t = Table(f"(d) {n_tiny:,} tiny tasks `f(x) = x`: tasks per second",
              ["method", "chunksize=1", "chunksize=100", "joblib batch_size='auto'"])

    def tput(key: Any) -> str:
        m = _med(res, key)
        return "–" if m is None else f"{1 / m:,.0f}"
    for row in ("ours", "stdlib", "loky"):
        t.add(ROWS[row][1] + " `.map`", tput(("d", row, 1)), tput(("d", row, 100)), "")
        if row == "ours":
            t.add(ROWS[row][1] + " `.map`, a function of `__main__`",
                  tput(("d", "ours-main", 1)), tput(("d", "ours-main", 100)), "")
    t.add(ROWS["joblib"][1] + " (batch_size)", tput(("d", "joblib", 1)),
          tput(("d", "joblib", 100)), tput(("d", "joblib", "auto")))
    t.add(ROWS["joblibctx"][1], "", "", tput(("d", "joblibctx", "auto")))
    t.add("ratio ours / stdlib",
          fmt_ratio(_r(_med(res, ("d", "stdlib", 1)), _med(res, ("d", "ours", 1)))),
          fmt_ratio(_r(_med(res, ("d", "stdlib", 100)), _med(res, ("d", "ours", 100)))), "")
    t.add("ratio ours (`__main__` function) / stdlib",
          fmt_ratio(_r(_med(res, ("d", "stdlib", 1)), _med(res, ("d", "ours-main", 1)))),
          fmt_ratio(_r(_med(res, ("d", "stdlib", 100)), _med(res, ("d", "ours-main", 100)))),
          "")
    t.notes += ["Median of 7 runs (chunksize=1), 3 (joblib's batch_size=1) or 11 (the "
                "others); the ratio row is the ratio of the medians."]
    for key, what in (("ours", ""), ("ours-main", ", `__main__` function")):
        for cs in (1, 100):
            per = _paired(res, ("d", "stdlib", cs), ("d", key, cs))
            if per:
                t.notes.append(
                    f"chunksize={cs}{what}, ratio per round (ours and stdlib measured in "
                    f"the same round): median {statistics.median(per):.2f}×, "
                    f"{sum(x >= 1.0 for x in per)} of {len(per)} rounds ≥ 1.0, "
                    f"range {per[0]:.2f}–{per[-1]:.2f}×.")
    tables.append(t.as_dict())

    # targets
    where = fmt_bytes(big)
    targets = []
    a_meds = [_med(res, ("a", "ours", s)) for s in sizes]
    if all(a_meds):
        spread = max(a_meds) / min(a_meds)
        targets.append(target(
            "(a) per-call time independent of size (max/min over sizes ≤ 1.5)",
            f"{fmt_time(min(a_meds))} … {fmt_time(max(a_meds))} ({spread:.2f}×)",
            spread <= 1.5))
    r = _r(_med(res, ("b", "stdlib", big)), _med(res, ("a", "ours", big)))
    targets.append(target(f"(a) ≥ 1000× stdlib (by value) at {where}",
                          fmt_ratio(r), None if r is None else r >= 1000))
    ours_cold = _med(res, ("b-cold", "ours", big))
    ours_loop = _loop_mean(res, big)
    # Per call, as everywhere here: the batch's wall time / its calls.
    for key, what in (("b-cold", "the 1st array of its size (a new segment)"),
                      ("b", "a loop of fresh arrays, from the 3rd on")):
        r, r_batch = _over_memcpy(res, key, big)
        targets.append(target(
            f"(b) ≤ 3× one memcpy of the data per call at {where}, {what}",
            f"{fmt_ratio(r)} (whole batch of {CALLS} calls: {fmt_ratio(r_batch)})",
            None if r is None else r <= 3))
    r, r_batch = _over_memcpy(res, "b-reuse", big)
    targets.append(target(
        f"(b) ≤ 1.5× one memcpy per call at {where}, one unchanged array submitted "
        f"{CALLS} times", f"{fmt_ratio(r)} (whole batch: {fmt_ratio(r_batch)})",
        None if r is None else r <= 1.5))
    # Against the peers: none of them reuses anything here.
    r = _r(_med(res, ("b", "stdlib", big)), ours_cold)
    targets.append(target(f"(b) ≥ 10× stdlib at {where} (our 1st array)", fmt_ratio(r),
                          None if r is None else r >= 10))
    r = _r(_med(res, ("b", "joblib", big)), ours_loop)
    r1 = _r(_med(res, ("b", "joblib", big)), ours_cold)
    targets.append(target(
        f"(b) ≥ 1.5× joblib one-shot auto-memmap at {where}, three fresh arrays in a row "
        "(ours: mean of the 1st, 2nd and 3rd)",
        f"{fmt_ratio(r)} (the 1st array alone: {fmt_ratio(r1)})",
        None if r is None else r >= 1.5))
    r = _r(_med(res, ("c", "stdlib", big_ret)), _med(res, ("c", "ours", big_ret)))
    targets.append(target(f"(c) ≥ 5× stdlib returning {fmt_bytes(big_ret)}", fmt_ratio(r),
                          None if r is None else r >= 5))
    r = _r(_med(res, ("c-full", "stdlib", big_ret)), _med(res, ("c-full", "ours", big_ret)))
    targets.append(target(f"(c′) ≥ 10× stdlib end to end, the worker builds {fmt_bytes(big_ret)} "
                          "(`np.full`) and returns it", fmt_ratio(r),
                          None if r is None else r >= 10))
    for cs in (1, 100):
        r = _r(_med(res, ("d", "stdlib", cs)), _med(res, ("d", "ours", cs)))
        per = _paired(res, ("d", "stdlib", cs), ("d", "ours", cs))
        shown = fmt_ratio(r)
        if per:
            shown += (f" (per round: median {statistics.median(per):.2f}×, "
                      f"{per[0]:.2f}–{per[-1]:.2f}×)")
        targets.append(target(f"(d) ≥ 1.0× stdlib throughput, chunksize={cs}", shown,
                              None if r is None else r >= 1.0))
    if quick:
        for tg in targets:
            tg["target"] += " [quick run: largest size measured]"

    # plots: log-log, time per call against array size
    def series(case: str, xs: list[int]) -> dict:
        return {SHORT[rw]: [_med(res, (case, rw, x)) for x in xs] for rw in rows}
    a_series = series("a", sizes)
    a_series["stdlib, plain array (by value)"] = [_med(res, ("b", "stdlib", s))
                                                  for s in sizes]
    b_series = {"sharedarray, 1st array": [_med(res, ("b-cold", "ours", s)) for s in sizes],
                "sharedarray, 3rd array on": [_med(res, ("b", "ours", s)) for s in sizes]}
    b_series.update({k: v for k, v in series("b", sizes).items() if k != SHORT["ours"]})
    b_series["memcpy (reference)"] = [_med(res, ("memcpy", "ref", s)) for s in sizes]
    c_series = series("c", ret_sizes)
    c_series["floor: fill, return a float"] = [_med(res, ("c", "floor", s)) for s in ret_sizes]
    plots = [{"file": "pool.png",
              "title": "Executors, 2 workers: seconds per call against array size (log-log)",
              "panels": [line_panel("(a) passing a sharedarray.ndarray", sizes, a_series),
                         line_panel("(b) passing a fresh plain array", sizes, b_series),
                         line_panel("(c) returning an array", ret_sizes, c_series)]}]

    notes = [f"Load average {load0[0]:.2f} at start, {load1[0]:.2f} at the end; "
             f"the module took {wall:.0f} s."]
    if errors:
        notes += [f"error: {e}" for e in errors[:10]]
    if left or swept:
        notes.append(f"left in /dev/shm by the children: {left + swept}")
    return {
        "title": "Executors: passing and returning arrays, tiny tasks",
        "description": __doc__.split("\n\n")[0].replace("\n", " "),
        "versions": versions,
        "tables": tables,
        "targets": targets,
        "plots": plots,
        "notes": notes,
        "data": {"samples": {json.dumps([str(x) for x in k]): v for k, v in res.items()},
                 "errors": errors, "left_in_dev_shm": left + swept},
    }


if __name__ == "__main__":
    _util.main(run)
