"""CPython 3.13's own concurrent.futures process-pool tests, run against
sharedarray.ProcessPoolExecutor.

The tests come from the 3.13 interpreter's installed test package
(lib/python3.13/test/test_concurrent_futures); tools/cpython_executor_tests.py
substitutes our class for concurrent.futures.ProcessPoolExecutor and runs them
in a Python 3.13 venv that has this repository installed.  The venv is built
once into <repo>/.venv-cpython313 and reused while the package sources are
unchanged.
"""

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "cpython_executor_tests.py"
VENV = REPO / ".venv-cpython313"
STAMP = VENV / ".sharedarray-build-stamp"

# What `pip install <repo>` is built from: the regular files at the top of the
# repository (pyproject.toml, setup.py, README, ...) and these directories.
_SOURCE_DIRS = ("sharedarray", "src", "include")
_SKIP_SUFFIXES = {".pyc", ".pyo", ".so", ".o", ".a", ".dylib", ".pyd", ".log"}


def _load_tool():
    spec = importlib.util.spec_from_file_location("cpython_executor_tests", str(TOOL))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _clean_env():
    env = dict(os.environ)
    # Make sure the installed package is what gets tested, not a source tree.
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE",
                "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(var, None)
    return env


def _source_fingerprint(python):
    """Hash of the package sources and build files, plus the base
    interpreter, so the venv is rebuilt exactly when it would differ."""
    h = hashlib.sha256()
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version); print(sys.base_prefix)"],
        stdout=subprocess.PIPE, text=True, check=True).stdout
    h.update((f"{os.path.realpath(python)}\n{version}\n").encode())

    def add(path, rel):
        if os.path.splitext(path)[1] in _SKIP_SUFFIXES:
            return
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())

    for entry in sorted(os.listdir(str(REPO))):
        path = os.path.join(str(REPO), entry)
        if os.path.isfile(path) and not entry.startswith("."):
            add(path, entry)
    for top in _SOURCE_DIRS:
        for root, dirs, files in os.walk(os.path.join(str(REPO), top)):
            dirs[:] = sorted(d for d in dirs
                             if not d.startswith(".") and d != "__pycache__"
                             and not d.endswith(".egg-info"))
            for name in sorted(files):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    add(path, os.path.relpath(path, str(REPO)))
    return h.hexdigest()


def _run(cmd, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=_clean_env(), **kw)
    if r.returncode != 0:
        pytest.fail(f"command failed (exit status {r.returncode}): "
                    f"{' '.join(map(str, cmd))}\n{r.stdout[-20000:]}", pytrace=False)
    return r


def _venv_python():
    return VENV / "bin" / "python"


@pytest.fixture(scope="session")
def cpython313():
    """(base python3.13, venv python with the repo installed)."""
    tool = _load_tool()
    base = tool.find_python()
    if not base:
        pytest.skip(f"no CPython {tool.PYVER} interpreter found (looked in pyenv's versions "
                    "and on PATH)")
    if not tool.test_package_dir(base):
        pytest.skip(f"{base} has no test.test_concurrent_futures package (the CPython "
                    "test suite is not installed)")
    if not ((REPO / "pyproject.toml").exists() or (REPO / "setup.py").exists()):
        pytest.skip("the repository has no pyproject.toml or setup.py yet, "
                    "so it cannot be installed into a venv")

    # Several pytest processes (xdist) may get here at once.  The lock file is
    # kept out of the repository.
    lock_path = os.path.join(
        tempfile.gettempdir(),
        f"sharedarray-venv-cpython313-{hashlib.sha256(str(VENV).encode()).hexdigest()[:16]}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = _source_fingerprint(base)
        up_to_date = (
            _venv_python().exists()
            and STAMP.exists()
            and STAMP.read_text().strip() == fingerprint
        )
        if not up_to_date:
            if STAMP.exists():
                STAMP.unlink()
            if VENV.exists():
                shutil.rmtree(str(VENV))
            _run([base, "-m", "venv", str(VENV)])
            _run([str(_venv_python()), "-m", "pip", "install",
                  "--disable-pip-version-check", "--no-input", str(REPO)],
                 cwd=str(VENV))
            _run([str(_venv_python()), "-c", "import sharedarray"], cwd=str(VENV))
            STAMP.write_text(fingerprint + "\n")
    return base, str(_venv_python())


# The run takes 1-2 minutes, plus building the venv the first time; the
# project-wide pytest-timeout (300 s, fixture setup included) is too tight for
# that on a loaded 2-core machine.  This is only a hang guard, like --timeout,
# and both stay low enough that a hung run cannot eat CI's time.
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cpython_process_pool_tests(cpython313):
    base, venv_python = cpython313
    # --timeout only guards against a hung run (every thread's stack is then
    # dumped); it is far above the ~1-2 minutes the run normally takes (a
    # loaded machine has seen 7).
    cmd = [sys.executable, str(TOOL), "--python", venv_python,
           "--executor", "sharedarray:ProcessPoolExecutor",
           "--quick", "--timeout", "900"]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=_clean_env(), cwd=str(REPO))
    out = r.stdout
    print(out)  # shown by pytest when the test fails
    tail = "\n".join(out.splitlines()[-60:])
    m = re.search(r"^cpython executor tests: (\d+) passed, (\d+) failed, (\d+) skipped$",
                  out, re.M)
    assert m, "no summary line in the output:\n" + tail
    passed, failed = int(m.group(1)), int(m.group(2))
    assert r.returncode == 0, (
        "CPython's process-pool tests failed with sharedarray.ProcessPoolExecutor "
        f"(exit status {r.returncode}):\n{tail}")
    assert failed == 0, tail
    assert passed > 0, tail
