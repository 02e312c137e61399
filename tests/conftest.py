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
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

SHM = Path("/dev/shm")
TEST_PREFIX = "sat-"
START_METHODS = ["fork", "forkserver", "spawn"]
_counter = itertools.count()


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
        return f"{TEST_PREFIX}{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}"
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Session-wide check: no segment made during the run may outlive it.

    Looks at every test-named segment and every library temporary created
    since the session started whose creator is gone (a subprocess or a
    killed parent), so leaks from child processes are caught too.
    """
    if hasattr(session.config, "workerinput"):
        return  # xdist workers: the controller checks once for everybody
    start = getattr(session.config, "_sa_start", time.time())
    deadline = time.monotonic() + 5
    while True:
        leaked = []
        for entry in os.scandir(SHM) if SHM.is_dir() else []:
            if not entry.name.startswith((TEST_PREFIX, "sa-", ".sa-tmp-")):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if st.st_mtime < start - 1:
                continue
            pid = int(entry.name.split("-")[1]) if entry.name.split("-")[1].isdigit() else 0
            if entry.name.startswith(TEST_PREFIX) or not _pid_alive(pid):
                leaked.append(entry.name)
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
