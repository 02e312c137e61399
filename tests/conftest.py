"""Shared fixtures: unique segment names and leak checks.

Every test that makes a segment takes its name from ``shm_name`` (or
``name_factory``).  Names carry this process's pid, so tests running in
parallel (pytest-xdist) never collide, and the autouse ``no_leaks`` fixture
fails any test that leaves one of its segments in /dev/shm.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

SHM = Path("/dev/shm")
TEST_PREFIX = "sat-"
START_METHODS = ["fork", "forkserver", "spawn"]
_counter = itertools.count()
# One token per test run, shared with xdist workers through the environment
# (workers start after the controller imported this file), so that the
# end-of-run check looks only at what this run made, never at a concurrent
# run's segments.
SESSION = os.environ.setdefault("SA_TEST_SESSION", os.urandom(4).hex())
_PIDS = Path(tempfile.gettempdir()) / f"sa-test-{SESSION}.pids"


def _ours(prefixes: tuple[str, ...]) -> set[str]:
    try:
        return {n for n in os.listdir(SHM) if n.startswith(prefixes)}
    except FileNotFoundError:
        return set()


def _prefixes() -> tuple[str, ...]:
    pid = os.getpid()
    return (f"{TEST_PREFIX}{pid}-", f"sa-{pid}-", f".sa-tmp-{pid}-")


@pytest.fixture
def name_factory() -> Callable[[], str]:
    """Make unique shm names for this test."""
    def make() -> str:
        return f"{TEST_PREFIX}{os.getpid()}-{SESSION}-{next(_counter)}-{os.urandom(2).hex()}"
    return make


@pytest.fixture
def shm_name(name_factory: Callable[[], str]) -> str:
    """A unique shm name for this test."""
    return name_factory()


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves a segment of this process in /dev/shm."""
    before = _ours(_prefixes())
    yield
    import gc
    gc.collect()
    leaked = _ours(_prefixes()) - before
    if not leaked:
        return
    # Owned temporaries may be released by a finalizer a moment later.
    deadline = time.monotonic() + 2
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        leaked = _ours(_prefixes()) - before
    for n in leaked:
        try:
            os.unlink(SHM / n)
        except OSError:
            pass
    if leaked:
        pytest.fail(f"test left segments in /dev/shm: {sorted(leaked)}")


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._sa_start = time.time()  # type: ignore[attr-defined]
    with open(_PIDS, "a") as f:           # this run's processes, for the final check
        f.write(f"{os.getpid()}\n")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Run-wide check: no segment made during the run may outlive it.

    Looks at every test-named segment of this run (the SESSION token) and
    every library temporary owned by one of this run's processes (the
    controller and its xdist workers).  Tests that start other processes
    check those processes' leaks themselves.
    """
    if hasattr(session.config, "workerinput"):
        return  # xdist workers: the controller checks once for everybody
    try:
        pids = {int(p) for p in _PIDS.read_text().split()}
        _PIDS.unlink()
    except (OSError, ValueError):
        pids = {os.getpid()}
    ours = tuple(f"sa-{p}-" for p in pids) + tuple(f".sa-tmp-{p}-" for p in pids)
    deadline = time.monotonic() + 5
    while True:
        leaked = [n for n in os.listdir(SHM)
                  if (n.startswith(TEST_PREFIX) and f"-{SESSION}-" in n)
                  or n.startswith(ours)] if SHM.is_dir() else []
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if leaked:
        for n in leaked:
            try:
                os.unlink(SHM / n)
            except OSError:
                pass
        sys.stderr.write(f"\nLEAK: segments left in /dev/shm by the test run: {sorted(leaked)}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``pred`` (with gc) until true or ``timeout`` seconds passed."""
    import gc
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def wait_for_file(path: str, result: Any = None, limit: float = 60.0) -> Any:
    """A task that blocks until ``path`` exists, then returns ``result``
    (bounded, so a failing test cannot hang).  Workers import it from
    here by reference under every start method."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return result


def private_shm_unavailable() -> str | None:
    """None if ``unshare -m`` + a tmpfs on /dev/shm works here, else why not."""
    if not SHM.is_dir():
        return "no /dev/shm"
    try:
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /dev/shm"],
            capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare: {exc}"
    if proc.returncode != 0:
        return f"unshare -m / mount not permitted: {proc.stderr.strip()}"
    return None


def run_python(code: str, *args: str, timeout: float = 120, check: bool = True,
               **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (cross-interpreter tests)."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each multiprocess test runs under fork, forkserver and spawn."""
    return request.param
