"""The command line, run as users run it: ``python -m sharedarray ...`` in a
subprocess.

Every segment is named by the ``shm_name``/``name_factory`` fixtures, or is a
temporary of this process or of a process that cannot exist, and every test
removes what it made.  ``gc`` is always scoped to the test's own names here,
except in ``test_gc_everything_in_private_shm``, which runs it in a /dev/shm
of its own (``unshare -m``) so it cannot touch what other tests, or other
people, keep in the real one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import sharedarray as sa
from sharedarray.core import create_segment

from conftest import SHM, private_shm_prefix, private_shm_unavailable, unlink_quietly

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="needs /dev/shm (Linux)")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m sharedarray ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "sharedarray", *args],
                          capture_output=True, text=True, timeout=timeout)


def impossible_pid() -> int:
    """A pid no process can have (above the kernel's pid_max): always dead."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 1 << 22           # PID_MAX_LIMIT on 64-bit Linux
    return pid_max + 1 + int.from_bytes(os.urandom(2), "little")


@pytest.fixture
def dead_temporary() -> Iterator[str]:
    """A library temporary whose owner is dead and that no tracker knows of
    (what a crash that also killed the resource tracker leaves behind)."""
    pid = impossible_pid()
    name = f"sa-{pid}-{os.urandom(6).hex()}"
    create_segment(name, (16, 4), "f8", temporary=True, owner=pid)
    yield name
    unlink_quietly(name)


@pytest.fixture
def named(shm_name: str) -> Iterator[str]:
    """A named (non-temporary) array made by this process."""
    sa.create(shm_name, (3, 4), "f4")
    yield shm_name
    unlink_quietly(shm_name)


def table_row(output: str, name: str) -> list[str]:
    """The cells of ``name``'s row in ``list``'s table."""
    rows = [line.split() for line in output.splitlines()]
    found = [r for r in rows if r and r[0] == name]
    assert len(found) == 1, output
    return found[0]


def list_json() -> dict[str, dict]:
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    assert isinstance(records, list)
    return {r["name"]: r for r in records}


# ---------------------------------------------------------------- usage

@pytest.mark.parametrize("args", [[], ["list"], ["info"], ["delete"], ["gc"], ["demo"]],
                         ids=lambda a: " ".join(a) or "main")
def test_help(args: list[str]) -> None:
    proc = cli(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: sharedarray")
    assert proc.stderr == ""


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"sharedarray {sa.__version__}"


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["info"], ["delete"],
                                  ["list", "--bogus"], ["demo", "--size", "lots"],
                                  ["demo", "--workers", "0"]],
                         ids=lambda a: " ".join(a) or "no-command")
def test_usage_errors_exit_2(args: list[str]) -> None:
    proc = cli(*args)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "error:" in proc.stderr
    assert proc.stdout == ""


def test_installed_script_is_the_same_command() -> None:
    script = Path(sys.executable).with_name("sharedarray")
    if not script.exists():
        pytest.skip("the 'sharedarray' script is not installed beside this Python")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: sharedarray")


# ---------------------------------------------------------------- list

def test_list_table(named: str, dead_temporary: str) -> None:
    live = sa.share(np.arange(10.0))
    try:
        proc = cli("list")
        assert proc.returncode == 0, proc.stderr
        header = proc.stdout.splitlines()[0].split()
        assert header == ["NAME", "DTYPE", "SHAPE", "SIZE", "AGE", "PID", "ALIVE", "TEMP"]
        row = table_row(proc.stdout, named)
        assert row[:6] == [named, "float32", "(3,", "4)", "48", "B"]
        assert re.fullmatch(r"\d+s", row[6])
        assert row[7:] == [str(os.getpid()), "yes", "no"]
        row = table_row(proc.stdout, live.segment.name)
        assert row[1:5] == ["float64", "(10,)", "80", "B"]
        assert row[-3:] == [str(os.getpid()), "yes", "yes"]
        row = table_row(proc.stdout, dead_temporary)
        assert row[-3:] == [dead_temporary.split("-")[1], "no", "yes"]
    finally:
        del live


def test_list_json(named: str, dead_temporary: str, name_factory: Callable[[], str]) -> None:
    foreign = name_factory()
    (SHM / foreign).write_bytes(b"not an array")
    live = sa.share(np.zeros((2, 3), dtype=">i2"))
    try:
        records = list_json()
        assert foreign not in records
        r = records[named]
        assert r["dtype"] == "float32" and r["shape"] == [3, 4] and r["nbytes"] == 48
        assert r["pid"] == os.getpid() and r["alive"] is True
        assert r["temporary"] is False
        assert isinstance(r["token"], str) and len(r["token"]) == 16
        assert 0 <= r["age"] < 600 and abs(r["created"] - time.time()) < 600
        r = records[live.segment.name]
        assert r["temporary"] is True and r["alive"] is True
        assert r["dtype"] == ">i2" and r["shape"] == [2, 3] and r["nbytes"] == 12
        r = records[dead_temporary]
        assert r["temporary"] is True and r["alive"] is False
        assert r["pid"] == int(dead_temporary.split("-")[1])
    finally:
        del live
        unlink_quietly(foreign)


def test_list_reused_pid_counts_as_dead() -> None:
    """A creator pid now held by a process younger than the array is a reused
    pid: the creator is dead, and gc may collect the temporary."""
    live = sa.share(np.ones(3))
    name = live.segment.name
    try:
        assert list_json()[name]["alive"] is True
        # Rewrite the creation time in the header to 2001, long before this
        # process started: the pid in the header can no longer be the creator.
        fd = os.open(SHM / name, os.O_RDWR)
        try:
            head = os.pread(fd, 4096, 0)
            m = re.search(rb"#sharedarray:2:[0-9a-f]{16}:%d:[0-9a-f]{32}:(\d{13}):"
                          % os.getpid(), head)
            assert m, head[:300]
            os.pwrite(fd, b"1000000000000", m.start(1))
        finally:
            os.close(fd)
        rec = list_json()[name]
        assert rec["alive"] is False and rec["created"] == 1e9
        proc = cli("gc", "--dry-run", name)
        assert proc.stdout.startswith(f"would delete {name} "), proc.stdout + proc.stderr
    finally:
        del live


# ---------------------------------------------------------------- info

def test_info_named_array(shm_name: str) -> None:
    arr = sa.create(shm_name, (5, 7), "<i2", order="F", mode=0o640)
    try:
        proc = cli("info", shm_name)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert re.search(rf"^path:\s+/dev/shm/{shm_name}$", out, re.M)
        assert re.search(r"^made by:\s+sharedarray$", out, re.M)
        assert re.search(r"^dtype:\s+int16 \(<i2\)$", out, re.M)
        assert re.search(r"^shape:\s+\(5, 7\)$", out, re.M)
        assert re.search(r"^order:\s+F$", out, re.M)
        assert re.search(r"^data:\s+70 B \(70 bytes\) at offset 4096$", out, re.M)
        mode = 0o640 & ~_umask()
        assert f"({mode:04o})" in out
        assert re.search(rf"^creator:\s+pid {os.getpid()} \(alive\)$", out, re.M)
        assert re.search(r"^temporary:\s+no", out, re.M)
        assert arr.segment.meta.token in out

        rec = json.loads(cli("info", "--json", f"shm://{shm_name}").stdout)
        assert rec["name"] == shm_name and rec["path"] == f"/dev/shm/{shm_name}"
        assert rec["shape"] == [5, 7] and rec["order"] == "F" and rec["nbytes"] == 70
        assert rec["uid"] == os.getuid() and rec["mode_octal"] == f"{mode:04o}"
        assert rec["token"] == arr.segment.meta.token and rec["alive"] is True
        assert rec["npy_version"] in ("1.0", "2.0", "3.0")
    finally:
        del arr
        sa.delete(shm_name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_info_foreign_npy(shm_name: str) -> None:
    """Any .npy in /dev/shm is described, though list() does not show it."""
    with open(SHM / shm_name, "wb") as f:
        np.save(f, np.arange(6, dtype=">u4").reshape(2, 3))
    try:
        proc = cli("info", shm_name)
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"^made by:\s+another program", proc.stdout, re.M)
        assert re.search(r"^shape:\s+\(2, 3\)$", proc.stdout, re.M)
        assert "creator:" not in proc.stdout
        assert shm_name not in list_json()
    finally:
        unlink_quietly(shm_name)


def test_info_file_url(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    arr = sa.create(f"file://{path}", (2, 2), "c16")
    try:
        rec = json.loads(cli("info", "--json", f"file://{path}").stdout)
        assert rec["path"] == str(path) and rec["dtype"] == "complex128"
        assert rec["made_by_sharedarray"] is True
    finally:
        del arr
        sa.delete(f"file://{path}")


def test_info_missing(shm_name: str) -> None:
    proc = cli("info", shm_name)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"sharedarray: {shm_name!r}: no such array"


@pytest.mark.parametrize("content", [b"", b"hello, not an array",
                                     b"\x93NUMPY\x01\x00\x10\x00{'descr': ",
                                     "truncated"])
def test_info_corrupt(shm_name: str, content: bytes | str) -> None:
    if content == "truncated":
        sa.create(shm_name, 1000)
        os.truncate(SHM / shm_name, 4096 + 100)
    else:
        (SHM / shm_name).write_bytes(content)
    try:
        proc = cli("info", shm_name)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert shm_name in proc.stderr and "Traceback" not in proc.stderr
    finally:
        unlink_quietly(shm_name)


@pytest.mark.parametrize("bad", ["a/b", "", "..", "ftp://x", "x" * 300])
@pytest.mark.parametrize("command", ["info", "delete"])
def test_invalid_names_are_usage_errors(command: str, bad: str) -> None:
    proc = cli(command, bad)
    assert proc.returncode == 2
    assert "invalid name" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- delete

def test_delete_each_name_and_report_missing(name_factory: Callable[[], str]) -> None:
    a, missing, b = name_factory(), name_factory(), name_factory()
    sa.create(a, 3)
    sa.create(b, 3)
    try:
        proc = cli("delete", a, missing, b)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert proc.stderr.strip() == f"sharedarray: cannot delete {missing!r}: no such array"
        assert not sa.exists(a) and not sa.exists(b)
    finally:
        unlink_quietly(a, b)


def test_delete_verbose(name_factory: Callable[[], str]) -> None:
    names = [name_factory() for _ in range(3)]
    for n in names:
        sa.create(n, 1)
    try:
        proc = cli("delete", "-v", *names)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [f"deleted {n}" for n in names]
        assert not any(sa.exists(n) for n in names)
    finally:
        unlink_quietly(*names)


def test_delete_keeps_attached_arrays_valid(shm_name: str) -> None:
    arr = sa.create(shm_name, 1000)
    arr[:] = 7
    proc = cli("delete", shm_name)
    assert proc.returncode == 0, proc.stderr
    assert not sa.exists(shm_name)
    arr[1] = 8
    assert arr.sum() == 7 * 999 + 8


def test_delete_refuses_what_is_not_an_array(shm_name: str) -> None:
    (SHM / shm_name).write_bytes(b"someone else's data")
    try:
        proc = cli("delete", shm_name)
        assert proc.returncode == 1
        assert "--force" in proc.stderr and shm_name in proc.stderr
        assert (SHM / shm_name).exists()
        proc = cli("delete", "--force", shm_name)
        assert proc.returncode == 0, proc.stderr
        assert not (SHM / shm_name).exists()
    finally:
        unlink_quietly(shm_name)


def test_delete_file_url(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    sa.create(f"file://{path}", 4)
    proc = cli("delete", f"file://{path}")
    assert proc.returncode == 0, proc.stderr
    assert not path.exists()


# ---------------------------------------------------------------- gc

def test_gc_dry_run_deletes_nothing(named: str, dead_temporary: str) -> None:
    live = sa.share(np.ones(5))
    try:
        for args in (["gc", "--dry-run"], ["gc", "-n", named, dead_temporary,
                                           live.segment.name]):
            proc = cli(*args)
            assert proc.returncode == 0, proc.stderr
            lines = proc.stdout.splitlines()
            assert any(line.startswith(f"would delete {dead_temporary} ") for line in lines)
            assert named not in proc.stdout and live.segment.name not in proc.stdout
            assert (SHM / dead_temporary).exists() and sa.exists(named)
            assert sa.exists(live.segment.name)
    finally:
        del live


def test_gc_removes_only_dead_temporaries(named: str, dead_temporary: str,
                                          name_factory: Callable[[], str]) -> None:
    live = sa.share(np.ones(5))
    live_name = live.segment.name
    # Looks like a temporary of a dead process, but sharedarray did not make it.
    impostor = f"sa-{impossible_pid()}-{os.urandom(6).hex()}"
    (SHM / impostor).write_bytes(b"foreign")
    # A named array whose creator is dead is still not garbage.
    dead_named = name_factory()
    pid = impossible_pid()
    create_segment(dead_named, 3, owner=pid)
    try:
        proc = cli("gc", named, dead_temporary, live_name, impostor, dead_named)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [
            line for line in proc.stdout.splitlines() if line.startswith("deleted ")]
        assert [line.split()[1] for line in proc.stdout.splitlines()] == [dead_temporary]
        assert not (SHM / dead_temporary).exists()
        for kept in (named, live_name, impostor, dead_named):
            assert (SHM / kept).exists(), kept
        assert f"kept {live_name!r}: its creator (pid {os.getpid()}) is alive" in proc.stderr
        assert f"kept {named!r}: not a temporary" in proc.stderr
        # Nothing left to do: a second run deletes nothing.
        proc = cli("gc", dead_temporary)
        assert proc.returncode == 0 and proc.stdout == ""
        assert live[0] == 1.0
    finally:
        del live
        unlink_quietly(impostor, dead_named)


def test_gc_after_the_creator_was_killed(tmp_path: Path) -> None:
    """A temporary whose creator got SIGKILL: gc and the creator's resource
    tracker may race to unlink it; either way it goes and gc succeeds."""
    code = textwrap.dedent("""
        import sys, time, numpy as np, sharedarray as sa
        a = sa.share(np.arange(1000.0))
        print(a.segment.name, flush=True)
        time.sleep(120)
    """)
    # The child's resource tracker outlives it and complains on stderr.
    with open(tmp_path / "stderr", "wb") as err:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=err, text=True)
    name = ""
    try:
        name = child.stdout.readline().strip()
        assert re.fullmatch(rf"sa-{child.pid}-[0-9a-f]{{12}}", name), name
        rec = list_json()[name]
        assert rec["alive"] is True and rec["pid"] == child.pid
        assert cli("gc", name).stdout == ""          # alive: kept
        assert (SHM / name).exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        proc = cli("gc", name)
        assert proc.returncode == 0, proc.stderr
        deadline = time.monotonic() + 15
        while (SHM / name).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (SHM / name).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        if name:
            unlink_quietly(name)


def test_gc_everything_in_private_shm() -> None:
    """Unscoped gc, in a /dev/shm of its own: only dead temporaries (and
    staging files of dead creators) go."""
    why = private_shm_unavailable()
    if why:
        pytest.skip(why)
    script = textwrap.dedent(f"""
        import os, subprocess, sys
        import numpy as np, sharedarray as sa
        from sharedarray.core import create_segment
        assert os.listdir("/dev/shm") == [], "not a private /dev/shm"
        dead = {impossible_pid()}
        sa.create("named", 3)
        create_segment("named-dead-creator", 3, owner=dead)
        live = sa.share(np.ones(3))
        create_segment(f"sa-{{dead}}-0123456789ab", 3, temporary=True, owner=dead)
        create_segment(f"sa-{{dead}}-ba9876543210", (2, 2), "u1", temporary=True,
                       owner=dead)
        open(f"/dev/shm/sa-{{dead}}-ffffffffffff", "wb").write(b"foreign")
        # A staging file left by a create killed before its data was in: the
        # header (written first) carries the token of the name.
        from sharedarray import _header
        head = _header.encode(_header.header_dict(np.dtype("f8"), (1000,), False),
                              _header.comment("0123456789abcdef", dead, False))
        open(f"/dev/shm/.sa-tmp-{{dead}}-0123456789abcdef", "wb").write(head)
        # Named like one, but without such a header: not ours to remove.
        open(f"/dev/shm/.sa-tmp-{{dead}}-fedcba9876543210", "wb").write(b"x")
        open(f"/dev/shm/.sa-tmp-{{os.getpid()}}-0123456789abcdef", "wb").write(b"x")
        open("/dev/shm/other", "wb").write(b"foreign")
        gc = [sys.executable, "-m", "sharedarray", "gc"]
        before = sorted(os.listdir("/dev/shm"))
        dry = subprocess.run(gc + ["--dry-run"], capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr
        assert sorted(os.listdir("/dev/shm")) == before
        real = subprocess.run(gc, capture_output=True, text=True)
        assert real.returncode == 0, real.stderr
        gone = sorted(set(before) - set(os.listdir("/dev/shm")))
        expected = sorted([f"sa-{{dead}}-0123456789ab", f"sa-{{dead}}-ba9876543210",
                           f".sa-tmp-{{dead}}-0123456789abcdef"])
        assert gone == expected, (gone, real.stdout)
        assert [l.split()[2] for l in dry.stdout.splitlines()] == \\
            [l.split()[1] for l in real.stdout.splitlines()]
        assert sorted(l.split()[1] for l in real.stdout.splitlines()) == expected
        assert live.sum() == 3
        print("ok")
    """)
    proc = subprocess.run(
        [*private_shm_prefix(), "sh", "-c",
         'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$@"', "sh",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


# ---------------------------------------------------------------- demo

def test_demo_small() -> None:
    proc = cli("demo", "--size", "8M", "--iterations", "2", "--workers", "2",
               timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "results agree" in out
    assert re.search(r"sharedarray\.ProcessPoolExecutor .*\d+\.\d s$", out, re.M)
    assert re.search(r"concurrent\.futures\.ProcessPoolExecutor .*\d+\.\d s$", out, re.M)
    assert re.search(r"speed-up: \d+\.\dx", out)
    # The shared data is gone once the demo has finished.
    name = re.search(r"\b(sa-\d+-[0-9a-f]{12})\b", out).group(1)
    assert not (SHM / name).exists()


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from sharedarray._demo import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        with Progress("standard", 4, stream=stream) as bar:
            for _ in range(4):
                bar.advance()
        text = stream.getvalue()
        if not drawn:
            assert text == ""
            continue
        frames = [f for f in text.split("\r") if f]
        assert frames[-1] == "\033[K"                  # the line is cleared
        assert "0/4 tasks" in frames[0] and "[" + "#" * 30 + "] 100% 4/4 tasks" in frames[-2]
        assert all(len(f) < 80 for f in frames)


# ---------------------------------------------------------------- gc: what is ours

def test_gc_keeps_named_arrays_named_like_its_own_files() -> None:
    """gc collects only what a header marks as a temporary of ours (or a
    staging file carrying its own token), never a user's array that merely
    has such a name."""
    dead = impossible_pid()
    names = [f".sa-tmp-{dead}-{os.urandom(8).hex()}", f"sa-{dead}-{os.urandom(6).hex()}"]
    try:
        for name in names:
            sa.create(name, 3)
        proc = cli("gc", *names)
        assert proc.returncode == 0, proc.stderr
        assert all((SHM / n).exists() for n in names), proc.stdout + proc.stderr
        assert "deleted" not in proc.stdout
    finally:
        unlink_quietly(*names)


def test_gc_never_judges_a_creator_in_another_pid_namespace(monkeypatch) -> None:
    """A temporary whose header names another pid namespace is skipped, and
    gc says so: its creator's pid means nothing in this namespace."""
    import sharedarray._header as header
    dead = impossible_pid()
    name = f"sa-{dead}-{os.urandom(6).hex()}"
    monkeypatch.setattr(header, "PID_NS", header.PID_NS + 1)
    create_segment(name, 3, temporary=True, owner=dead)
    monkeypatch.undo()
    try:
        proc = cli("gc", name)
        assert proc.returncode == 0, proc.stderr
        assert (SHM / name).exists(), proc.stdout + proc.stderr
        assert "another pid namespace" in proc.stderr
        record = json.loads(cli("list", "--json").stdout)
        assert [r["alive"] for r in record if r["name"] == name] == [None]
    finally:
        unlink_quietly(name)


_IN_PID_NS = textwrap.dedent("""
    import os, sys
    import numpy as np, sharedarray as sa
    t = sa.share(np.ones(3))
    print(t.segment.name, os.getpid(), flush=True)
    sys.stdin.read()           # until the test is done
    print(t.sum(), flush=True)
""")


def _unused_pid() -> int | None:
    for pid in range(30000, 32000, 97):
        if not any(os.path.exists(f"/proc/{p}") for p in range(pid - 5, pid + 5)):
            return pid
    return None


def test_gc_spares_a_live_temporary_of_another_pid_namespace() -> None:
    """Same /dev/shm (docker --ipc=host), another pid namespace: its creator's
    pid is dead here, but gc must not delete what it cannot judge."""
    why = private_shm_unavailable()
    pid = _unused_pid()
    if why or pid is None:
        pytest.skip(why or "no unused pid range")
    child = subprocess.Popen(
        ["unshare", "-p", "-f", "--mount-proc", "sh", "-c",
         f'echo {pid} > /proc/sys/kernel/ns_last_pid; "$@"', "sh",
         sys.executable, "-c", _IN_PID_NS],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    name = None
    try:
        line = child.stdout.readline().split()
        if not line:
            pytest.skip(f"no pid namespace here: {child.stderr.read()}")
        name, inner_pid = line[0], int(line[1])
        if os.path.exists(f"/proc/{inner_pid}"):
            pytest.skip("the inner pid exists here too")
        proc = cli("gc", name)
        assert proc.returncode == 0, proc.stderr
        assert (SHM / name).exists(), proc.stdout + proc.stderr
        assert "another pid namespace" in proc.stderr
        out, err = child.communicate("", timeout=60)
        assert out.strip() == "3.0", err
        assert not (SHM / name).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if name:
            unlink_quietly(name)


# ---------------------------------------------------------------- containers

_CONTAINER_B = textwrap.dedent("""
    import os, pickle, subprocess, sys
    import numpy as np, sharedarray as sa
    assert os.listdir("/dev/shm") == [], "not a private /dev/shm"
    name = sys.argv[1]
    mine = sa.from_array(name, np.full(4, 2.0))    # the same name, here
    temp = sa.share(np.full(3, 2.0))
    handles = [bytes.fromhex(h) for h in sys.stdin.readline().split()]
    results = []
    for h in handles:
        try:
            pickle.loads(h)
        except Exception as e:
            results.append(type(e).__name__)
        else:
            results.append("loaded")
    print(" ".join(results))
    print(pickle.dumps(mine).hex(), pickle.dumps(temp).hex(), flush=True)
    sys.stdin.readline()           # A ran its gc
    gc = subprocess.run([sys.executable, "-m", "sharedarray", "gc"],
                        capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    print(sa.exists(temp.segment.name), flush=True)
""")

_CONTAINER_A = textwrap.dedent("""
    import os, pickle, subprocess, sys
    import numpy as np, sharedarray as sa
    assert os.listdir("/dev/shm") == [], "not a private /dev/shm"
    name, b_script = sys.argv[1], sys.argv[2]
    mine = sa.from_array(name, np.full(4, 1.0))
    temp = sa.share(np.full(3, 1.0))
    b = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"',
         "sh", sys.executable, "-c", b_script, name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    b.stdin.write(pickle.dumps(mine).hex() + " " + pickle.dumps(temp).hex() + "\\n")
    b.stdin.flush()
    in_b = b.stdout.readline().split()
    theirs = [bytes.fromhex(h) for h in b.stdout.readline().split()]
    in_a = []
    for h in theirs:
        try:
            pickle.loads(h)
        except Exception as e:
            in_a.append(type(e).__name__)
        else:
            in_a.append("loaded")
    gc = subprocess.run([sys.executable, "-m", "sharedarray", "gc"],
                        capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    b.stdin.write("\\n")
    b.stdin.flush()
    b_kept = b.stdout.readline().strip()
    b.wait()
    print(" ".join(in_b), "|", " ".join(in_a), "|", sa.exists(temp.segment.name),
          b_kept)
""")


def test_two_containers_handles_are_foreign_both_ways(shm_name) -> None:
    """Two private /dev/shm mounts (two containers on one kernel, same boot
    id): a handle from the other raises ForeignHostError, whether or not
    its name exists here; gc in each leaves the other's live temporaries."""
    why = private_shm_unavailable()
    if why:
        pytest.skip(why)
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"',
         "sh", sys.executable, "-c", _CONTAINER_A, shm_name, _CONTAINER_B],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["ForeignHostError"] * 2 + ["|"] + \
        ["ForeignHostError"] * 2 + ["|", "True", "True"], proc.stdout + proc.stderr
