"""Shared fixtures and helpers: unique segment names, leak checks, private
/dev/shm sandboxes, and which ``sharedarray`` the tests import.

Every test that makes a segment takes its name from ``shm_name`` (or
``name_factory``).  Names carry this process's pid, so tests running in
parallel (pytest-xdist) never collide, and the autouse ``no_leaks`` fixture
fails any test that leaves one of its segments in /dev/shm.

Helpers used by several test modules live here, once; test modules import
them with ``from conftest import ...`` (pytest puts ``tests/`` on sys.path)
and never import each other.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import sharedarray

REPO = Path(__file__).resolve().parent.parent
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


def _use_the_installed_package() -> None:
    """Make the tests, and every interpreter they start, import the installed
    ``sharedarray`` rather than the checkout's source tree.

    Run from the checkout, the tree shadows an installed package: ``python -m
    pytest`` puts the working directory first on sys.path, pytest-xdist puts
    it on PYTHONPATH for everything its workers start, and ``python -c`` or
    ``-m`` subprocesses put their working directory first.  Without a built
    extension the tree cannot even be imported (``cannot import name
    '_ext'``).  So the checkout's root leaves sys.path and PYTHONPATH whenever
    ``sharedarray`` is found without it (a wheel, or an editable install, whose
    finder maps the name itself), and tests run in another directory
    (``outside_the_checkout``).  Where only the tree has it (an in-place build
    and no install), the root goes on PYTHONPATH instead, so that subprocesses
    import what the tests import.
    """
    root = str(REPO)

    def is_root(entry: str) -> bool:
        return os.path.abspath(entry or os.curdir) == root

    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if not is_root(p)]
    importlib.invalidate_caches()
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p and not is_root(p)]
    if importlib.util.find_spec("sharedarray") is None:
        sys.path[:] = saved
        pythonpath.insert(0, root)
    if pythonpath:
        os.environ["PYTHONPATH"] = os.pathsep.join(pythonpath)
    else:
        os.environ.pop("PYTHONPATH", None)


_use_the_installed_package()      # before any test module imports sharedarray


@pytest.fixture(scope="session", autouse=True)
def outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Run every test, and so every interpreter it starts (``python -c``,
    ``-m sharedarray``, forkserver), in a directory without a ``sharedarray``
    source tree; see ``_use_the_installed_package``.  Session-scoped, so it
    comes before module-scoped executors start their forkservers."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())
    yield
    os.chdir(before)


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


@functools.cache
def _private_shm() -> tuple[list[str] | None, str]:
    """An ``unshare`` prefix that gives a command a private mount namespace in
    which it may mount a tmpfs on /dev/shm, or None and why not (probed once
    per process)."""
    if not SHM.is_dir():
        return None, "no /dev/shm"
    if shutil.which("unshare") is None:
        return None, "no unshare command"
    reasons = []
    for prefix in (["unshare", "-m", "--propagation", "private"],
                   ["unshare", "-r", "-m", "--propagation", "private"]):
        try:
            proc = subprocess.run(
                prefix + ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"
                                      " && test -z \"$(ls -A /dev/shm)\""],
                capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"{' '.join(prefix)}: {exc}")
            continue
        if proc.returncode == 0:
            return prefix, ""
        reasons.append(f"{' '.join(prefix)}: {proc.stderr.strip() or proc.returncode}")
    return None, "; ".join(reasons)


def private_shm_unavailable() -> str | None:
    """None if a command can get a private, empty tmpfs on /dev/shm here, else why not."""
    prefix, reason = _private_shm()
    return None if prefix is not None else reason


def private_shm_prefix() -> list[str]:
    """``unshare`` arguments for a private /dev/shm; skips the test if not permitted."""
    prefix, reason = _private_shm()
    if prefix is None:
        pytest.skip(f"cannot mount a private tmpfs on /dev/shm: {reason}")
    return list(prefix)


def sandboxed(size: str, argv: list[str], then: str = "") -> list[str]:
    """``argv`` run in a private mount namespace with a ``size`` tmpfs on
    /dev/shm; ``then`` is shell code run afterwards in the same namespace.
    Skips the test where that is not permitted."""
    script = (f"mount -t tmpfs -o size={size} tmpfs /dev/shm || exit 97\n"
              f"\"$@\"\nrc=$?\n{then}\nexit $rc\n")
    return private_shm_prefix() + ["sh", "-c", script, "sh", *argv]


def shm_exists(name: str) -> bool:
    """Whether /dev/shm/<name> exists."""
    return (SHM / name).exists()


def unlink_quietly(*names: str) -> None:
    """Remove /dev/shm/<name> for each name, if still there."""
    for name in names:
        try:
            os.unlink(SHM / name)
        except FileNotFoundError:
            pass


def own_temporaries() -> set[str]:
    """Library temporaries of this process (``sa-<pid>-*``) in /dev/shm."""
    prefix = f"sa-{os.getpid()}-"
    return {n for n in os.listdir(SHM) if n.startswith(prefix)}


def new_pool(start_method: str, max_workers: int = 2,
             **kw: Any) -> sharedarray.ProcessPoolExecutor:
    """An executor of ``max_workers`` under ``start_method``."""
    import multiprocessing as mp

    import sharedarray as sa
    return sa.ProcessPoolExecutor(max_workers, mp.get_context(start_method), **kw)


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
