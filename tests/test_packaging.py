"""The package as users get it: what the sdist carries, the typing users'
type checkers see, the metadata, and what ``import sharedarray`` loads.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import sharedarray as sa

from conftest import REPO, run_python

DIST = "sharedarray-ng"


def _readme_links(readme: Path) -> set[str]:
    """Relative files a Markdown file links or shows (``[..](path)``,
    ``![..](path)``), as paths from the repository root."""
    found = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", readme.read_text(encoding="utf8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue                                  # a URL or an anchor
        path = (readme.parent / target.split("#")[0]).resolve()
        found.add(path.relative_to(REPO).as_posix())
    return found


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The files of an sdist built from this tree, relative to its top directory.

    Built offline (no build isolation: the test extra brings setuptools) from a
    copy of the tree, so the tree itself gets no egg-info or build directory.
    """
    if not (REPO / "pyproject.toml").exists():
        pytest.skip("not run from a source tree")
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("sdist")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".mypy_cache", ".ruff_cache", "*.so"))
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (archive,) = (tmp / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    top = names[0].split("/")[0]
    return {n.split("/", 1)[1] for n in names if "/" in n and n.startswith(top + "/")}


@pytest.mark.slow
def test_sdist_has_what_the_readmes_link(sdist_names: set[str]) -> None:
    linked = _readme_links(REPO / "README.md") | _readme_links(REPO / "benchmarks" / "README.md")
    assert linked, "no relative links found: has the README changed form?"
    assert sorted(linked - sdist_names) == []


@pytest.mark.slow
def test_sdist_has_the_tests_and_what_they_need(sdist_names: set[str]) -> None:
    tests = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").glob("*.py")}
    assert "tests/conftest.py" in tests
    wanted = tests | {"tools/cpython_executor_tests.py", "tools/stubtest-allowlist.txt",
                      "README.md", "LICENSE", "pyproject.toml", "setup.py", "Makefile",
                      "sharedarray/py.typed", "sharedarray/_ext.pyi",
                      "benchmarks/run.py", "benchmarks/_util.py"}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "sharedarray").rglob("*.c")}
    wanted |= {p.relative_to(REPO).as_posix() for p in (REPO / "benchmarks").glob("bench_*.py")}
    assert sorted(wanted - sdist_names) == []
    leaked = [n for n in sdist_names if n.endswith((".so", ".pyc")) or "/.venv" in n]
    assert leaked == []


def _in_site_packages(path: Path) -> bool:
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    return any(path.is_relative_to(r) for r in roots)


@pytest.mark.slow
def test_mypy_checks_user_code_against_the_package(tmp_path: Path) -> None:
    """A user's mypy sees sharedarray's types: wrong argument types to
    ``create`` and ``attach`` are errors (not ``import-untyped``)."""
    pytest.importorskip("mypy")
    pkg = Path(sa.__file__).parent
    assert (pkg / "py.typed").is_file() and (pkg / "_ext.pyi").is_file()
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        import sharedarray as sa

        a = sa.create("ok", (3, 4), np.float32)
        b: sa.ndarray = sa.attach("ok", ro=True)
        sa.create(42, 10)
        sa.attach(b"ok")
        info: list[sa.ArrayInfo] = sa.list()
        """))
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    env = None
    if not _in_site_packages(pkg):
        # An editable install maps the name with an import hook, which mypy
        # does not run: point it at the tree (whose own findings are not the
        # user's business, hence follow-imports=silent).
        env = {**os.environ, "MYPYPATH": str(pkg.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"),
         "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent",
         "--python-executable", sys.executable, "--no-error-summary", "--hide-error-context",
         str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(errors) == 2, proc.stdout
    assert 'user.py:6: error: Argument 1 to "create" has incompatible type "int"; ' \
        'expected "str"' in errors[0], errors
    assert 'user.py:7: error: Argument 1 to "attach" has incompatible type "bytes"; ' \
        'expected "str"' in errors[1], errors


def test_metadata() -> None:
    md = metadata.metadata(DIST)
    assert md["Version"] == sa.__version__
    assert md["License-Expression"] == "BSD-3-Clause"
    classifiers = md.get_all("Classifier") or []
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)   # the SPDX field says it


def test_import_leaves_the_executor_for_later() -> None:
    """``import sharedarray`` does not load the executor (nor cloudpickle);
    naming ``ProcessPoolExecutor`` does."""
    out = run_python(textwrap.dedent("""\
        import sys
        import sharedarray as sa
        lazy = ["sharedarray.pool", "cloudpickle", "concurrent.futures.process"]
        print([m for m in lazy if m in sys.modules])
        assert "ProcessPoolExecutor" in dir(sa) and set(sa.__all__) <= set(dir(sa))
        from sharedarray import ProcessPoolExecutor
        from sharedarray.pool import ProcessPoolExecutor as direct
        assert ProcessPoolExecutor is direct is sa.ProcessPoolExecutor
        print([m for m in lazy if m in sys.modules])
        try:
            sa.no_such_name
        except AttributeError as exc:
            print(exc)
        """)).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == "['sharedarray.pool', 'cloudpickle', 'concurrent.futures.process']"
    assert out[2] == "module 'sharedarray' has no attribute 'no_such_name'"
