"""Dask and Ray integrations against the real engines.

One ``distributed.LocalCluster(processes=True)`` and one ``ray.init`` per
module (starting them costs seconds).  Another host is stood in for by a
``dask worker`` whose /dev/shm is a private tmpfs (``unshare -m``); a worker
that cannot attach a handle by a named array deleted (or re-created) after
the client made the handle.

Task functions live at module level: the workers (spawned) get this
directory on ``sys.path`` and import them by reference.
"""

from __future__ import annotations

import gc
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import sharedarray as sa
from sharedarray.core import segment_of

from conftest import SHM, private_shm_unavailable, run_python, wait_until

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- task functions

def total(a: Any) -> float:
    return float(np.asarray(a).sum())


def describe(a: Any) -> tuple:
    """What arrived: its type, whether it is a view of a segment, the pid."""
    return type(a).__name__, segment_of(a) is not None, os.getpid()


def make_shared(n: int, value: float = 1.0) -> Any:
    return sa.share(np.full(n, value))


def worker_segments(pids: list[int]) -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.startswith(tuple(f"sa-{p}-" for p in pids)))


# ---------------------------------------------------------------- Dask fixtures

@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    import dask
    # The scheduler runs in this process and keeps its last 1000 small
    # messages for debugging (handles included, so the arrays they rebuilt
    # here): each test's segments would outlive it.
    with dask.config.set({"distributed.admin.low-level-log-length": 0}), \
            distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        c.wait_for_workers(2)
        pids = list(c.run(os.getpid).values())
        yield c
        c.cancel(list(c.futures))
        assert wait_until(lambda: not worker_segments(pids)), worker_segments(pids)


@pytest.fixture
def workers(client: Any) -> list[str]:
    """The cluster's own two workers (not the private one)."""
    return sorted(a for a, w in client.scheduler_info()["workers"].items()
                  if w["name"] != "private")


@pytest.fixture(scope="module")
def private_worker(client: Any) -> Iterator[str]:
    """A ``dask worker`` in its own mount namespace with its own /dev/shm."""
    why = private_shm_unavailable()
    if why:
        pytest.skip(why)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    cmd = (f"mount -t tmpfs tmpfs /dev/shm && exec {sys.executable} -m "
           f"distributed.cli.dask_worker {client.scheduler.address} --nthreads 1 "
           f"--no-nanny --name private --no-dashboard")
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", cmd], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(3, timeout=120)
        (addr,) = [a for a, w in client.scheduler_info()["workers"].items()
                   if w["name"] == "private"]
        yield addr
    finally:
        client.retire_workers(names=["private"], close_workers=True)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- Dask: what travels

def _wire_bytes(msg: Any, recipient: dict) -> int:
    from distributed.protocol import dumps
    frames = dumps(msg, context={"sender": {}, "recipient": recipient})
    return sum(memoryview(f).nbytes for f in frames)


def test_dask_same_host_sends_handles(client: Any, workers: list[str]) -> None:
    """A 256 MiB shared array is under 1 KiB on the wire to a worker that
    announced our /dev/shm in its real handshake, whatever the path: a
    serialized value (scatter, results), a pickled task argument, or the
    bare ``serialize`` without a context."""
    from distributed.comm import connect
    from distributed.protocol import Serialize, ToPickle, deserialize, serialize
    x = sa.share(np.arange(32 * MiB, dtype=np.float64))      # 256 MiB

    async def handshake(addr: str) -> dict:
        comm = await connect(addr)
        try:
            return comm.remote_info
        finally:
            await comm.close()

    recipient = client.sync(handshake, workers[0])
    assert recipient["sharedarray"]["shm"] is not None
    assert _wire_bytes({"data": Serialize(x)}, recipient) <= 1024
    assert _wire_bytes({"task": ToPickle((total, x))}, recipient) <= 1024
    header, frames = serialize(x)
    assert sum(memoryview(f).nbytes for f in frames) <= 1024
    y = deserialize(header, frames)
    assert type(y) is sa.ndarray and np.shares_memory(x, y)
    # A recipient elsewhere gets the data (and by_value() forces it).
    foreign = dict(recipient, sharedarray={"boot": "0" * 32, "shm": "1"})
    assert _wire_bytes({"data": Serialize(x)}, foreign) >= x.nbytes
    with sa.by_value():
        assert sum(memoryview(f).nbytes for f in serialize(x)[1]) >= x.nbytes


def test_dask_submit_scatter_results_share_memory(client: Any, workers: list[str]) -> None:
    x = sa.share(np.arange(1 * MiB, dtype=np.float64))
    expected = float(x.sum())
    assert client.submit(total, x, workers=workers[:1]).result() == expected
    # The worker got a view of the segment, not a copy.
    assert client.submit(describe, x, workers=workers[:1]).result()[:2] == ("ndarray", True)
    fut = client.scatter(x, workers=workers[:1], hash=False)
    assert client.submit(describe, fut, workers=workers[:1]).result()[:2] == ("ndarray", True)
    assert client.submit(total, fut).result() == expected
    # A shared result comes back as a shared array, to the client and to
    # another worker (worker-to-worker transfer).
    r = client.submit(make_shared, 1000, 2.0, workers=workers[:1])
    back = r.result()
    assert type(back) is sa.ndarray and float(back.sum()) == 2000.0
    assert client.submit(describe, r, workers=workers[1:]).result()[:2] == ("ndarray", True)
    del r, back, fut


def test_dask_private_shm_worker_gets_data(client: Any, private_worker: str) -> None:
    """A worker whose /dev/shm is another tmpfs (another host, another
    container) announces so, and everything reaches it as data."""
    x = sa.share(np.arange(1 * MiB, dtype=np.float64))
    expected = float(x.sum())
    on = [private_worker]
    assert client.submit(total, x, workers=on).result() == expected
    kind, shared, _ = client.submit(describe, x, workers=on).result()
    assert (kind, shared) == ("ndarray", False)
    for direct in (None, True, False):        # None and False go through the scheduler
        # hash=False: a fresh key each time (re-scattering a key being
        # released races in the scheduler: "lost dependencies").
        fut = client.scatter(x, workers=on, direct=direct, hash=False)
        assert client.submit(total, fut, workers=on).result() == expected
        del fut
    # Its shared results leave it as data: to the client and to a worker here.
    r = client.submit(make_shared, 1000, 3.0, workers=on)
    back = r.result()
    assert type(back) is np.ndarray and float(back.sum()) == 3000.0
    others = [a for a in client.scheduler_info()["workers"] if a != private_worker]
    assert client.submit(total, r, workers=others).result() == 3000.0
    del r


def test_dask_unattachable_handle_fails_only_its_task(client: Any, workers: list[str],
                                                     shm_name: str) -> None:
    """A handle the worker cannot attach fails that task with the library's
    error; the worker's comm survives (same pid, next task runs)."""
    on = workers[:1]
    pid = client.run(os.getpid, workers=on)
    x = sa.create(shm_name, 100)
    x[:] = 1
    sa.delete(shm_name)            # this process keeps its mapping; the name is gone
    with pytest.raises(FileNotFoundError, match=shm_name):
        client.submit(total, x, workers=on, pure=False).result()
    y = sa.create(shm_name, 100)   # the same name, another array: the handle is stale
    try:
        with pytest.raises(sa.StaleHandleError):
            client.submit(total, x, workers=on, pure=False).result()
    finally:
        del y
        sa.delete(shm_name)
    assert client.submit(total, np.ones(3), workers=on).result() == 3.0
    assert client.run(os.getpid, workers=on) == pid


def test_dask_sizeof(client: Any, workers: list[str]) -> None:
    from dask.sizeof import sizeof
    x = sa.share(np.zeros(32 * MiB))           # 256 MiB
    assert sizeof(x) <= x.nbytes // 512 + 1024
    assert sizeof(x[::2]) <= x.nbytes // 512 + 1024
    # Not in a segment (a subclass view of private memory): the full size.
    private = np.zeros(1000).view(sa.ndarray)
    assert sizeof(private) >= private.nbytes
    # What the scheduler records for a shared result (the worker's sizeof).
    r = client.submit(make_shared, 32 * MiB, workers=workers[:1])
    r.result()
    nbytes = client.run_on_scheduler(
        lambda dask_scheduler, key=r.key: dask_scheduler.tasks[key].nbytes)
    assert nbytes <= 32 * MiB * 8 // 512 + 1024
    del r


def test_to_dask_graph_holds_handles(client: Any) -> None:
    import dask
    import dask.array as da
    x = sa.share(np.arange(32 * MiB, dtype=np.float64))      # 256 MiB
    d = sa.to_dask(x, chunks=4 * MiB)                         # 8 chunks
    graph = dict(d.__dask_graph__())
    assert len(pickle.dumps(graph)) < 16 * 1024
    # dask's own from_array holds the data (for the README's comparison).
    small = sa.share(np.arange(MiB // 8, dtype=np.float64))
    assert len(pickle.dumps(dict(da.from_array(small, chunks=MiB // 32)
                                 .__dask_graph__()))) >= small.nbytes
    # Chunks are views of the shared memory.
    from dask.local import get_sync
    block = get_sync(graph, (d.name, 1))
    assert type(block) is sa.ndarray and np.shares_memory(block, x)
    del block
    expected = float(x.sum())
    assert float(d.sum().compute(scheduler="sync")) == expected
    assert float(client.compute(d.sum()).result()) == expected
    assert float(dask.compute(d[::3].sum(), scheduler="processes", num_workers=2)[0]) \
        == float(x[::3].sum())
    with pytest.raises(TypeError):
        sa.to_dask(np.zeros(3))


# ---------------------------------------------------------------- activation

def test_activation_needs_no_call_and_imports_no_engine() -> None:
    run_python("""
import sys, types
import sharedarray
assert not {"dask", "distributed", "ray"} & set(sys.modules), sorted(sys.modules)
import distributed
from distributed.protocol.serialize import dask_serialize
from sharedarray import _dask
assert dask_serialize.dispatch(sharedarray.ndarray) is _dask.serialize_ndarray
from distributed.comm.core import Comm
assert "sharedarray" in Comm.handshake_info(types.SimpleNamespace(same_host=True))
import ray, ray.cloudpickle
assert sharedarray.ndarray in ray.cloudpickle.CloudPickler.dispatch
""")
    # The engine first: importing the library activates at once.
    run_python("""
import distributed, ray, ray.cloudpickle
import sharedarray
from distributed.protocol.serialize import dask_serialize
from sharedarray import _dask
assert dask_serialize.dispatch(sharedarray.ndarray) is _dask.serialize_ndarray
assert sharedarray.ndarray in ray.cloudpickle.CloudPickler.dispatch
""")
    # A Dask process that never imports the library has it active anyway
    # (the dask.sizeof entry point), so its handshakes announce its /dev/shm.
    run_python("""
import sys, types
import dask
assert "sharedarray" in sys.modules
import distributed
from distributed.comm.core import Comm
assert "sharedarray" in Comm.handshake_info(types.SimpleNamespace(same_host=True))
""")


# ---------------------------------------------------------------- Ray

@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # Ray's workers import the task functions from this module by name.
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": HERE}})
    try:
        yield ray
    finally:
        ray.shutdown()


def _ray_total(a: Any) -> float:
    return float(a.sum())


def test_ray_put_outlives_local_array(ray_session: Any) -> None:
    ray = ray_session
    x = sa.share(np.arange(1 * MiB, dtype=np.float64))
    name = x.segment.name
    expected = float(x.sum())
    ref = ray.put(x)
    arg = ray.remote(_ray_total).remote(x)
    del x
    gc.collect()
    assert not (SHM / name).exists()          # the local array and its segment are gone
    y = ray.get(ref)
    assert isinstance(y, np.ndarray) and float(y.sum()) == expected
    assert ray.get(arg) == expected
    assert ray.get(ray.remote(_ray_total).remote(ref)) == expected


def test_ray_task_returning_shared_array(ray_session: Any) -> None:
    ray = ray_session
    ref = ray.remote(make_shared).remote(1000, 4.0)
    y = ray.get(ref)
    assert isinstance(y, np.ndarray) and float(y.sum()) == 4000.0
    assert ray.get(ray.remote(_ray_total).remote(ref)) == 4000.0
