"""Faults: killed workers, a killed parent, a tiny /dev/shm, and many pool cycles.

Every test runs under fork, forkserver and spawn (conftest's ``start_method``).

Tests that must see *everything* a pool leaves in /dev/shm (named semaphores
cannot be attributed to a pid, and other pytest-xdist workers make their own)
run their script in a private mount namespace, ``unshare -m`` with a fresh
tmpfs on /dev/shm: everything in it comes from that run, the resource tracker
and the forkserver included.  A ``sleep`` left in the namespace keeps the tmpfs
alive after the script is gone, and the test reads it through
``/proc/<that pid>/root/dev/shm``.  These tests skip when unshare is not
permitted (it needs root or user namespaces).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest

import sharedarray as sa

from conftest import (
    SHM,
    new_pool,
    own_temporaries,
    private_shm_prefix,
    private_shm_unavailable,
    sandboxed,
    wait_for_file,
    wait_until,
)

pytestmark = pytest.mark.fault

BIG = 1 << 18                 # float64 elements: 2 MiB, above the default threshold


# ---------------------------------------------------------------- helpers

def _alive(pid: int) -> bool:
    """Running (zombies count as dead: nobody may reap orphans promptly)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


# ---------------------------------------------------------------- worker functions

def suicide(x: np.ndarray) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def big_io(x: np.ndarray, i: int) -> tuple:
    time.sleep(0.005)
    return os.getpid(), x * 2 + i


# ---------------------------------------------------------------- killed workers

def test_worker_sigkilled_mid_task(start_method, tmp_path):
    flag = str(tmp_path / "never")
    ex = new_pool(start_method)
    try:
        # One worker blocks, the other runs ``doomed``; two more tasks queue up.
        waiting = [ex.submit(wait_for_file, flag, np.full(BIG, 1.0))]
        doomed = ex.submit(suicide, np.zeros(BIG))
        waiting += [ex.submit(wait_for_file, flag, np.full(BIG, float(i))) for i in range(2)]
        with pytest.raises(BrokenProcessPool):
            doomed.result(timeout=60)
        for f in waiting:
            with pytest.raises(BrokenProcessPool):
                f.result(timeout=60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(wait_for_file, flag)
    finally:
        ex.shutdown()
    del waiting, doomed
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


def test_worker_killed_by_parent_with_large_io_in_flight(start_method):
    ex = new_pool(start_method)
    try:
        inputs = [np.full(BIG, float(i)) for i in range(8)]
        futs = [ex.submit(big_io, inputs[i % 8], i) for i in range(60)]
        victim = futs[0].result(timeout=60)[0]
        os.kill(victim, signal.SIGKILL)
        held, broken = [], 0
        for i, f in enumerate(futs):
            try:
                pid, r = f.result(timeout=60)
            except BrokenProcessPool:
                broken += 1
                continue
            assert type(r) is sa.ndarray and np.all(r == 2.0 * (i % 8) + i)
            held.append(r)
        assert broken >= 1
    finally:
        ex.shutdown()
    # Only the results we hold are left; results that never arrived are gone.
    assert own_temporaries() == {r.segment.name for r in held}
    del held, r, futs, f
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()
    assert not _alive(victim)


# ---------------------------------------------------------------- killed parent

PARENT_SCRIPT = r'''
import json, os, sys, time, multiprocessing as mp
import numpy as np, psutil
import sharedarray as sa


def work(x, i):
    time.sleep(0.002)
    return x * 2 + i            # a large result: comes back through shared memory


if __name__ == "__main__":
    ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
    inputs = [np.full(1 << 18, float(i)) for i in range(6)]        # 2 MiB each
    futs = [ex.submit(work, inputs[i % 6], i) for i in range(5000)]
    held = []
    for i, f in enumerate(futs):
        r = f.result()
        if len(held) < 8:
            held.append(r)
        futs[i] = None
        if i == 10:
            kids = [p.pid for p in psutil.Process().children(recursive=True)]
            print("READY " + json.dumps({"pid": os.getpid(), "kids": kids,
                                         "shm": sorted(os.listdir("/dev/shm"))}), flush=True)
'''


RESULT_SPARES_SCRIPT = r'''
import json, os, sys, time, multiprocessing as mp
import numpy as np, psutil
import sharedarray as sa


def build(n, k):
    time.sleep(0.002)
    return np.full(n, k)        # a large result: comes back through shared memory


if __name__ == "__main__":
    ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
    n = 1 << 18                                                     # 2 MiB
    held = [ex.submit(build, n, -1.0).result()]
    futs = [ex.submit(build, n + (i % 3) * 512, float(i)) for i in range(5000)]
    ready = False
    for i, f in enumerate(futs):
        r = f.result()
        assert r[0] == r[-1] == float(i)
        futs[i] = None
        del r                   # released: kept as a spare or taken by a result
        if ready or i < 10:
            continue
        # Listed first, then the spares known now: a spare in both was one
        # when listed (a worker may take any spare at any moment).
        shm = sorted(os.listdir("/dev/shm"))
        spares = ex._sa_pool.results.names()
        if set(spares) & set(shm):
            ready = True
            kids = [p.pid for p in psutil.Process().children(recursive=True)]
            print("READY " + json.dumps({"pid": os.getpid(), "kids": kids,
                                         "spares": spares, "shm": shm}), flush=True)
'''


@pytest.mark.parametrize("what", ["inputs and results", "released results"])
def test_parent_sigkilled_mid_map_leaves_nothing(start_method, tmp_path, what):
    """SIGKILL the parent while large inputs and results are in flight, or
    while released results are kept for reuse and taken by workers: within
    10 s its workers, tracker and forkserver are gone, and its private
    /dev/shm holds nothing: no segment, no semaphore."""
    private_shm_prefix()                   # skips where not permitted
    pytest.importorskip("psutil")          # the script lists its children with it
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT if what == "inputs and results" else RESULT_SPARES_SCRIPT)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    # After the script dies the shell becomes a ``sleep`` that keeps the namespace.
    argv = sandboxed("512m", [sys.executable, str(script), start_method],
                     then="exec sleep 300")
    with open(out, "w") as fo, open(err, "w") as fe:
        witness = subprocess.Popen(argv, stdout=fo, stderr=fe, cwd=tmp_path,
                                   start_new_session=True)
    try:
        ready = None
        deadline = time.monotonic() + 120
        while ready is None and time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
            if witness.poll() is not None:
                break
            time.sleep(0.02)
        assert ready is not None, f"script never got going:\n{out.read_text()}\n{err.read_text()}"
        parent, kids = ready["pid"], ready["kids"]
        assert any(n.startswith(f"sa-{parent}-") for n in ready["shm"]), ready["shm"]
        if what == "released results":
            assert set(ready["spares"]) & set(ready["shm"]), ready
        assert len(kids) >= 3, kids          # two workers and the resource tracker at least
        os.kill(parent, signal.SIGKILL)

        shm = Path(f"/proc/{witness.pid}/root/dev/shm")
        assert wait_until(lambda: not _alive(parent), 10)
        gone = wait_until(lambda: not any(_alive(p) for p in kids), 10)
        assert gone, [p for p in kids if _alive(p)]
        clean = wait_until(lambda: not os.listdir(shm), 10)
        assert clean, sorted(os.listdir(shm))
        assert witness.poll() is None        # the listing above was of the live namespace
    finally:
        os.killpg(witness.pid, signal.SIGKILL)
        witness.wait(30)


def full(n: int, k: float) -> np.ndarray:
    return np.full(n, k)


def die_while_claiming(step: str) -> None:
    """Worker initializer: SIGKILL this worker at ``step`` of writing a
    result into a released one."""
    import sharedarray.pool as sa_pool

    def die(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if step == "registered":        # its new name registered, the spare not yet renamed
        real = sa_pool._ext

        class Ext:
            rename_noreplace = staticmethod(die)

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)
        sa_pool._ext = Ext()        # type: ignore[assignment]
    elif step == "renamed":         # renamed to the result's name, not yet locked
        sa_pool._write_claimed = die
    elif step == "header written":  # the new header written, the data not
        write = sa_pool._write_all

        def die_at_data(fd: int, data: object, offset: int) -> None:
            if offset:
                die()
            write(fd, data, offset)
        sa_pool._write_all = die_at_data


@pytest.mark.parametrize("step", ["registered", "renamed", "header written"])
def test_worker_sigkilled_while_taking_a_released_result(start_method, step):
    ex = new_pool(start_method, max_workers=1, initializer=die_while_claiming,
                  initargs=(step,))
    ex._sa_pool.results.ttl = 60.0
    try:
        r = ex.submit(full, BIG, 1.0).result()      # a new segment
        assert np.all(r == 1.0)
        del r                                        # kept for reuse
        assert wait_until(lambda: len(ex._sa_pool.results.names()) == 1, 10)
        with pytest.raises(BrokenProcessPool):
            ex.submit(full, BIG, 2.0).result(timeout=60)
    finally:
        ex.shutdown()
    assert wait_until(lambda: not own_temporaries(), 10), own_temporaries()


RESULT_ROOM_SCRIPT = r"""
import json, os, sys, warnings, multiprocessing as mp
import numpy as np
import sharedarray as sa


def full(nbytes, k):
    return np.full(nbytes // 8, k)


if __name__ == "__main__":
    with sa.ProcessPoolExecutor(1, mp.get_context(sys.argv[1])) as ex:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = ex.submit(full, 12 << 20, 1.0).result()      # 12 MiB: kept once dropped
            ok_small = type(r) is sa.ndarray and bool(np.all(r == 1.0))
            del r
            spares = ex._sa_pool.results.names()
            r = ex.submit(full, 56 << 20, 2.0).result()      # 56 MiB: fits only without it
            ok_big = type(r) is sa.ndarray and bool(np.all(r == 2.0))
            del r
    print(json.dumps({"ok": ok_small and ok_big, "spares": spares,
                      "warnings": [str(w.message) for w in caught],
                      "left": sorted(os.listdir("/dev/shm"))}))
"""


def _run_with_warnings(size: str, text: str, start_method: str,
                       tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run script ``text`` in a private ``/dev/shm`` of ``size`` with every
    warning shown; its exit must be 0.  The process and its last JSON line."""
    script = tmp_path / "script.py"
    script.write_text(text)
    argv = sandboxed(size, [sys.executable, "-W", "always", str(script), start_method])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_released_result_gives_way_when_dev_shm_is_full(start_method, tmp_path):
    """Docker's 64 MiB /dev/shm: a released 12 MiB result kept for reuse is
    unlinked when the worker's 56 MiB result needs the room, with no fallback."""
    private_shm_prefix()                   # skips where not permitted
    proc, out = _run_with_warnings("64m", RESULT_ROOM_SCRIPT, start_method, tmp_path)
    assert out["ok"], out
    assert len(out["spares"]) == 1, out
    assert out["warnings"] == [], out
    assert "shared memory is too small" not in proc.stderr, proc.stderr
    assert out["left"] == [], out


# ---------------------------------------------------------------- small /dev/shm

TINY_SCRIPT = r'''
import gc, json, os, sys, warnings, multiprocessing as mp
import numpy as np
import sharedarray as sa


def double(x):
    return x * 2


if __name__ == "__main__":
    big = np.arange(1 << 22, dtype=np.float64)          # 32 MiB: no room for it
    mid = np.arange(1 << 18, dtype=np.float64)          # 2 MiB: fits
    with sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1])) as ex:
        # Start the workers first: forked ones must not inherit the recording.
        list(ex.map(double, range(4)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = ex.submit(double, big).result()
            ok_big = bool(np.array_equal(r, big * 2))
            big_type = type(r).__module__ + "." + type(r).__name__
            del r
            m = ex.submit(double, mid).result()
            ok_mid = bool(np.array_equal(m, mid * 2))
            mid_type = type(m).__module__ + "." + type(m).__name__
            del m
    gc.collect()
    print(json.dumps({
        "ok_big": ok_big, "big_type": big_type, "ok_mid": ok_mid, "mid_type": mid_type,
        "warnings": [(w.category.__name__, str(w.message)) for w in caught],
        "left": sorted(os.listdir("/dev/shm")),
    }))
'''


def test_tiny_dev_shm_falls_back_to_pickling(start_method, tmp_path):
    """An 8 MiB /dev/shm: a 32 MiB input and a 32 MiB result go by pickling,
    with a warning; values are right and nothing is left behind."""
    private_shm_prefix()                   # skips where not permitted
    script = tmp_path / "tiny.py"
    script.write_text(TINY_SCRIPT)
    # -W always: the worker's warning about the result reaches its stderr too.
    argv = sandboxed("8m", [sys.executable, "-W", "always", str(script), start_method],
                     then=("i=0; while [ -n \"$(ls -A /dev/shm)\" ] && [ $i -lt 100 ]; do "
                           "sleep 0.1; i=$((i+1)); done; "
                           "echo \"LEFT:$(ls -A /dev/shm | tr '\\n' ' ')\""))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-2])
    assert out["ok_big"] and out["ok_mid"]
    assert out["big_type"] == "numpy.ndarray"              # fell back
    assert out["mid_type"] == "sharedarray.core.ndarray"   # still shared
    fallback = [w for w in out["warnings"] if "shared memory" in w[1] and "pickl" in w[1]]
    assert fallback, out["warnings"]                        # the input's warning, in the parent
    assert fallback[0][0] in ("RuntimeWarning", "ResourceWarning", "UserWarning")
    assert "shared memory is too small" in proc.stderr      # the result's, in a worker
    assert not [n for n in out["left"] if n.startswith(("sa-", ".sa-tmp-"))], out["left"]
    assert lines[-1].strip() == "LEFT:", lines[-1]          # after exit: nothing at all
    assert "leaked" not in proc.stderr, proc.stderr


SPARE_SCRIPT = r'''
import json, os, sys, time, warnings, multiprocessing as mp
import numpy as np
import sharedarray as sa


def total(x):
    return float(x.sum())


if __name__ == "__main__":
    small = np.ones((12 << 20) // 8)                    # 12 MiB: kept as a spare
    big = np.ones((56 << 20) // 8)                      # 56 MiB: fits only without it
    with sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1])) as ex:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok_small = ex.submit(total, small).result() == small.size
            deadline = time.monotonic() + 10
            while ex._sa_pool.leases.current and time.monotonic() < deadline:
                time.sleep(0.01)
            spares = sorted(os.listdir("/dev/shm"))
            ok_big = ex.submit(total, big).result() == big.size
    print(json.dumps({"ok": ok_small and ok_big, "spares": spares,
                      "warnings": [str(w.message) for w in caught],
                      "left": sorted(os.listdir("/dev/shm"))}))
'''


def test_spare_copy_gives_way_when_dev_shm_is_full(start_method, tmp_path):
    """Docker's 64 MiB /dev/shm: a released 12 MiB copy kept for reuse is
    unlinked when a 56 MiB input needs the room, with no fallback."""
    private_shm_prefix()                   # skips where not permitted
    _, out = _run_with_warnings("64m", SPARE_SCRIPT, start_method, tmp_path)
    assert out["ok"], out
    assert len([n for n in out["spares"] if n.startswith("sa-")]) == 1, out
    assert out["warnings"] == [], out          # shared, not pickled
    assert out["left"] == [], out


KEPT_SCRIPT = r'''
import json, os, sys, time, multiprocessing as mp
import numpy as np
import sharedarray as sa

MiB = 1 << 20


def build(n):
    return np.full(n, 2.0)


def total(x):
    return float(x.sum())


def create_here(name, nbytes):
    arr = sa.create(name, nbytes // 8)
    arr[-1] = 1.0
    ok = float(arr[-1]) == 1.0
    del arr
    sa.delete(name)
    return ok


def kept():
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("sa-"))


def keep_two(ex):
    """A released 12 MiB input copy and a released 12 MiB result, both kept."""
    before = set(kept())
    assert ex.submit(total, np.ones((12 * MiB) // 8)).result() == (12 * MiB) // 8
    r = ex.submit(build, (12 * MiB) // 8).result()
    assert float(r[-1]) == 2.0
    del r
    deadline = time.monotonic() + 30
    while len(set(kept()) - before) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return kept()


if __name__ == "__main__":
    out = {}
    with sa.ProcessPoolExecutor(1, mp.get_context(sys.argv[1])) as ex:
        out["kept_parent"] = keep_two(ex)
        # 12 + 12 + 48 MiB do not fit in 64 MiB: the user's create in the
        # parent unlinks both kept segments and succeeds.
        out["parent"] = create_here("shm://big-parent", 48 * MiB)
        out["after_parent"] = kept()
        out["kept_worker"] = keep_two(ex)
        # In a worker: the parent's released result goes, its input copy
        # stays (only its owner may unlink it); 12 + 48 MiB fit.
        out["worker"] = ex.submit(create_here, "shm://big-worker", 48 * MiB).result()
        out["after_worker"] = kept()
    out["left"] = sorted(os.listdir("/dev/shm"))
    print(json.dumps(out))
'''


def test_a_full_dev_shm_unlinks_what_executors_keep_for_reuse(start_method, tmp_path):
    """Docker's 64 MiB /dev/shm: a user's own ``sa.create``, in the parent or
    in a task, does not fail for want of the space an executor keeps in
    released copies and results: those are unlinked and the creation tried
    again."""
    private_shm_prefix()                   # skips where not permitted
    proc, out = _run_with_warnings("64m", KEPT_SCRIPT, start_method, tmp_path)
    assert len(out["kept_parent"]) == 2, out
    assert out["parent"] is True and out["after_parent"] == [], out
    assert len(out["kept_worker"]) == 2, out
    assert out["worker"] is True, out
    result_spares = [n for n in out["kept_worker"] if n.endswith("-r") and "x" in n]
    assert len(out["after_worker"]) == 1 and out["after_worker"][0] not in result_spares, out
    assert out["left"] == [], out
    assert "Traceback" not in proc.stderr, proc.stderr


COLLECTED_SCRIPT = r'''
import gc, json, os, sys, multiprocessing as mp
import numpy as np
import sharedarray as sa


def build(n, k):
    return np.full(n, float(k))


class Cycle:
    """Keeps an executor in a reference cycle: only the collector frees it."""

    def __init__(self, ex):
        self.ex = ex
        self.me = self


if __name__ == "__main__":
    import faulthandler
    faulthandler.dump_traceback_later(150, exit=True)   # a hang shows where
    gc.set_threshold(5, 1, 1)        # collections everywhere, in every thread
    ctx = mp.get_context(sys.argv[1])
    for i in range(int(sys.argv[2])):
        ex = sa.ProcessPoolExecutor(2, ctx)
        c = Cycle(ex)
        for _ in range(2):
            rs = [f.result() for f in [ex.submit(build, 300_000, j) for j in range(6)]]
            assert [float(r[-1]) for r in rs] == [float(j) for j in range(6)]
            del rs                   # released results become spares
        ex.shutdown(wait=(i % 2 == 0))
        del ex, c
    gc.collect()
    print(json.dumps({"ok": True, "pid": os.getpid()}))
'''


def test_executors_collected_in_cycles_while_the_collector_runs_everywhere(
        start_method, tmp_path):
    """Executors dropped in reference cycles, half without waiting, with the
    cyclic collector running at almost every allocation: in the parent a
    collection (and so an executor's clean-up) can come inside one of our
    locked sections or in a thread being started; in a forked worker it
    collects the worker's copy of an earlier executor.  No hang, no
    double unregister (the tracker's KeyError traceback), nothing leaked;
    and no executor freed in its own manager thread while that thread holds
    its shutdown lock (Python 3.12+; see test_pool's
    ``..._is_not_freed_in_its_manager``, which forces that moment)."""
    script = tmp_path / "collected.py"
    script.write_text(COLLECTED_SCRIPT)
    cycles = "60" if start_method == "fork" else "8"
    # A hang (the deadlocks this guards against) fails here, before the
    # suite's own per-test timeout.
    proc = subprocess.run([sys.executable, str(script), start_method, cycles],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True
    # Nothing from the tracker (its KeyError traceback, a "leaked" warning)
    # and no traceback through this library.  (Python 3.10's own exit hook
    # may report a wakeup pipe of a collected executor closed: not ours.)
    assert "resource_tracker" not in proc.stderr, proc.stderr
    assert "sharedarray" not in proc.stderr, proc.stderr
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"sa-{out['pid']}-")]


# ---------------------------------------------------------------- many cycles

CYCLES_SCRIPT = r'''
import gc, json, os, sys, threading, multiprocessing as mp
import numpy as np
import sharedarray as sa


def task(x):
    return x + 1


def snapshot():
    own = sys.argv[4] == "own"
    with open("/proc/self/maps") as f:
        maps = f.read().splitlines()
    return {"shm": sorted(n for n in os.listdir("/dev/shm")
                          if not own
                          or n.startswith((f"sa-{os.getpid()}-", f".sa-tmp-{os.getpid()}-"))),
            "fds": len(os.listdir("/proc/self/fd")),
            "maps": len(maps),
            "file_maps": sum(1 for m in maps if m.split()[4] != "0"),
            "shm_maps": [m for m in maps if "/dev/shm/" in m],
            "threads": threading.active_count()}


def cycle(ctx, arr):
    ex = sa.ProcessPoolExecutor(1, ctx)
    r = ex.submit(task, arr).result()
    assert type(r) is sa.ndarray and r[0] == 1.0
    del r
    ex.shutdown()


if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    n, warm = int(sys.argv[2]), int(sys.argv[3])
    arr = np.zeros(1 << 17)          # 1 MiB: shared on the way in and out
    for _ in range(warm):            # the tracker, the forkserver, imports, arenas
        cycle(ctx, arr)
    snaps = []
    for i in range(n + 1):
        if i in (0, n // 2, n):
            gc.collect()
            snaps.append(snapshot())
        if i < n:
            cycle(ctx, arr)
    print(json.dumps(snaps))
'''

CYCLES = {"fork": 1000, "forkserver": 30, "spawn": 30}


@pytest.mark.slow
def test_create_shutdown_cycles_do_not_grow(start_method, tmp_path):
    """Create a pool, run one task with a shared input and result, shut it down:
    1,000 times with fork, but only 30 times with forkserver and spawn, where
    each cycle starts a fresh worker that imports numpy (~0.5-1 s a cycle).

    Compared with the state after warm-up: no more segments or semaphores in
    /dev/shm (semaphores only when a private /dev/shm is available), fds
    (/proc/self/fd), threads, file-backed mappings or mapped segments.
    Anonymous mappings are glibc's (malloc arenas, cached thread stacks): they
    grow with the peak number of live threads, which a loaded machine raises
    now and then, up to a bound, so /proc/self/maps as a whole may gain a few
    lines but not keep growing (a per-cycle leak would add hundreds with fork).
    """
    script = tmp_path / "cycles.py"
    script.write_text(CYCLES_SCRIPT)
    n = CYCLES[start_method]
    sandbox = private_shm_unavailable() is None
    argv = [sys.executable, str(script), start_method, str(n), "10",
            "all" if sandbox else "own"]
    if sandbox:
        argv = sandboxed("64m", argv)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, mid, last = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = [(s["fds"], s["maps"], s["file_maps"], s["threads"], len(s["shm"]))
               for s in (first, mid, last)]
    for s in (mid, last):
        assert s["shm"] == first["shm"] == [], summary
        assert s["fds"] == first["fds"], summary
        assert s["threads"] == first["threads"], summary
        assert s["shm_maps"] == first["shm_maps"] == [], (summary, s["shm_maps"])
        assert s["file_maps"] == first["file_maps"], summary
    assert last["maps"] - mid["maps"] <= 8, summary
    assert last["maps"] - first["maps"] <= 40, summary
    assert "leaked" not in proc.stderr, proc.stderr



# ---------------------------------------------------------------- orphans and fork

ORPHAN_SCRIPT = r"""
import ctypes, json, os, resource, sys, time, multiprocessing as mp
import numpy as np, psutil
import sharedarray as sa


def hold_the_gil(flag):
    open(flag + str(os.getpid()), "w").close()
    ctypes.PyDLL(None).sleep(600)        # libc sleep() with the GIL held


def just_sleep(flag):
    open(flag + str(os.getpid()), "w").close()
    time.sleep(600)


if __name__ == "__main__":
    how, flag = sys.argv[2], sys.argv[3]
    held = []
    if how == "fds":                     # more than select() can watch
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    task = hold_the_gil if how == "gil" else just_sleep
    ex = sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1]))
    shared = ex.submit(np.ones, 1 << 18).result()       # a result segment, owned here
    futs = [ex.submit(task, flag) for _ in range(2)]
    while len([n for n in os.listdir(os.path.dirname(flag))
               if n.startswith(os.path.basename(flag))]) < 2:
        time.sleep(0.01)
    kids = [p.pid for p in psutil.Process().children(recursive=True)]
    print("READY " + json.dumps({"pid": os.getpid(), "kids": kids,
                                 "segment": shared.segment.name}), flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("how", ["gil", "fds"])
def test_workers_exit_when_the_parent_is_killed(start_method, tmp_path, how):
    """SIGKILL the parent while every worker is (gil) inside a C call that
    holds the GIL, or (fds) while the parent has over 1024 fds open: the
    workers, the tracker and the parent's segments go all the same."""
    pytest.importorskip("psutil")
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    flag = str(tmp_path / "started-")
    out = tmp_path / "out.txt"
    with open(out, "w") as fo:
        parent = subprocess.Popen([sys.executable, str(script), start_method, how, flag],
                                  stdout=fo, stderr=subprocess.STDOUT, cwd=tmp_path,
                                  start_new_session=True)
    try:
        ready = None
        deadline = time.monotonic() + 120
        while ready is None and time.monotonic() < deadline and parent.poll() is None:
            for line in out.read_text().splitlines():
                if line.startswith("READY "):
                    ready = json.loads(line[6:])
            time.sleep(0.02)
        assert ready is not None, out.read_text()
        assert len(ready["kids"]) >= 3, ready      # two workers and the tracker
        assert (SHM / ready["segment"]).exists()
        parent.kill()
        parent.wait(30)
        gone = wait_until(lambda: not any(_alive(p) for p in ready["kids"]), 30)
        assert gone, [p for p in ready["kids"] if _alive(p)]
        assert wait_until(lambda: not (SHM / ready["segment"]).exists(), 30)
    finally:
        _kill_group_but_its_tracker(parent.pid)
        parent.wait(30)


def _kill_group_but_its_tracker(pgid: int) -> None:
    """SIGKILL what is left of a process group, but let its resource tracker
    go by itself: it unlinks what the group leaked (the executor's named
    semaphores too) once every other process is gone.  Killed with the
    rest, as a failing run once did, it leaves them in /dev/shm."""
    import psutil
    trackers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) != pgid:
                continue
        except ProcessLookupError:
            continue
        if "resource_tracker" in " ".join(proc.info["cmdline"] or ()):
            trackers.append(proc)
        else:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(trackers, timeout=30)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


FORK_RACE_SCRIPT = r"""
import sys, threading, multiprocessing as mp
import numpy as np
import sharedarray as sa


def make(n):
    return np.ones(n)                    # returned through a new segment


if __name__ == "__main__":
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            a = sa.share(np.ones(16))    # the tracker: register, unregister
            del a

    t = threading.Thread(target=churn)
    t.start()
    try:
        for i in range(int(sys.argv[1])):
            with sa.ProcessPoolExecutor(2, mp.get_context("fork")) as ex:
                assert ex.submit(make, 1 << 18).result().sum() == 1 << 18
    finally:
        stop.set()
        t.join()
    print("OK")
"""


def test_fork_beside_a_thread_in_the_tracker_never_hangs(tmp_path):
    """Workers forked while another thread talks to the resource tracker
    (here: share() in a loop) must not inherit its lock held: each worker
    registers its result with the tracker."""
    script = tmp_path / "fork_race.py"
    script.write_text(FORK_RACE_SCRIPT)
    try:
        proc = subprocess.run([sys.executable, str(script), "40"], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a forked worker hung: {exc}")
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr


MANY_WARNINGS_SCRIPT = r"""
import json, sys, warnings, multiprocessing as mp
import numpy as np
import sharedarray as sa


def big(i):
    return np.full(1 << 22, float(i))    # 32 MiB: no room for it


if __name__ == "__main__":
    with sa.ProcessPoolExecutor(2, mp.get_context(sys.argv[1])) as ex:
        list(ex.map(abs, range(4)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ins = [ex.submit(np.sum, np.full(1 << 22, float(i))).result() for i in range(4)]
            outs = [float(ex.submit(big, i).result().sum()) for i in range(6)]
    print(json.dumps({"ins": ins, "outs": outs,
                      "parent": sum("too small" in str(w.message) for w in caught)}))
"""


def test_small_dev_shm_warns_once_per_process(start_method, tmp_path):
    proc, out = _run_with_warnings("8m", MANY_WARNINGS_SCRIPT, start_method, tmp_path)
    assert out["ins"] == [float(i) * (1 << 22) for i in range(4)]
    assert out["outs"] == [float(i) * (1 << 22) for i in range(6)]
    assert out["parent"] == 1, out
    in_workers = proc.stderr.count("shared memory is too small")
    assert 1 <= in_workers <= 2, proc.stderr     # two workers, six results
