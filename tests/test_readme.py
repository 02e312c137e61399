"""Every ```python block of README.md runs, as a script, in a fresh interpreter.

A block is skipped when the last non-blank line before its opening fence is
``<!-- no-run -->`` (for fragments that cannot run on their own; use it
sparingly).  Blocks are independent: each runs alone, with a temporary
directory as its working directory.

README examples use fixed names ("test1"), which would collide with each
other and with anything else using /dev/shm.  Where possible each block runs
in a private /dev/shm: a new mount namespace (``unshare -m``) with a tmpfs
mounted on /dev/shm, which disappears with the block.  Where that is not
permitted, blocks run in the real /dev/shm, one at a time across all test
processes (a file lock).
"""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import private_shm_prefix, private_shm_unavailable

README = Path(__file__).resolve().parent.parent / "README.md"
NO_RUN = "<!-- no-run -->"
TIMEOUT = 180

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")


class Block(NamedTuple):
    """One fenced code block: where it starts (1-based line of the fence)
    and its source, dedented by the fence's indentation."""

    line: int
    code: str


def python_blocks(markdown: str) -> Iterator[Block]:
    """The ```python blocks of ``markdown`` that are not marked no-run.

    Fences are CommonMark's: three or more backticks or tildes, closed by a
    fence of the same character at least as long; the info string's first
    word must be ``python`` (or ``python3``, ``py``).  A fence may be
    indented (inside a list item); the block loses that indentation.  An
    unclosed block runs to the end of the text.
    """
    lines = markdown.splitlines()
    i = 0
    previous = ""                     # last non-blank line outside blocks
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        words = m.group("info").split()
        lang = words[0].lower() if words else ""
        start = i
        body = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if (close.startswith(fence[0] * len(fence)) and set(close) == {fence[0]}):
                break
            body.append(lines[i][indent:] if lines[i][:indent].strip() == ""
                        else lines[i].lstrip())
            i += 1
        i += 1
        if lang in ("python", "python3", "py") and previous != NO_RUN:
            yield Block(start + 1, "\n".join(body) + "\n")
        previous = ""


def _blocks() -> list:
    try:
        text = README.read_text(encoding="utf8")
    except FileNotFoundError:
        return []
    return [pytest.param(b, id=f"README.md:{b.line}") for b in python_blocks(text)]


@pytest.mark.parametrize("block", _blocks())
def test_readme_block(block: Block, tmp_path: Path) -> None:
    script = tmp_path / f"readme_{block.line}.py"
    script.write_text(block.code, encoding="utf8")
    cmd = [sys.executable, str(script)]
    if private_shm_unavailable() is None:
        cmd = [*private_shm_prefix(), "sh", "-c",
               'mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec "$@"', "sh", *cmd]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                              timeout=TIMEOUT)
    else:
        lock = Path(tempfile.gettempdir()) / "sharedarray-readme-tests.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"README.md block at line {block.line} failed ({proc.returncode}):\n"
        f"{block.code}\n--- stdout:\n{proc.stdout}\n--- stderr:\n{proc.stderr}")


# ---------------------------------------------------------------- extractor

def test_extractor() -> None:
    md = "\n".join([
        "# Title",
        "```python",
        "a = 1",
        "```",
        "text",
        "<!-- no-run -->",
        "",
        "```python",
        "skipped()",
        "```",
        "```bash",
        "echo no",
        "```",
        "````python title",
        "b = '```'",
        "````",
        "- item",
        "",
        "  ```python",
        "  if True:",
        "      c = 3",
        "  ```",
        "<!-- no-run -->",
        "text between: the marker no longer applies",
        "~~~py",
        "d = 4",
        "~~~",
        "```python",
        "unclosed = 5",
    ])
    got = list(python_blocks(md))
    assert [b.line for b in got] == [2, 14, 19, 25, 28]
    assert [b.code for b in got] == ["a = 1\n", "b = '```'\n",
                                     "if True:\n    c = 3\n", "d = 4\n",
                                     "unclosed = 5\n"]


def test_readme_has_examples() -> None:
    """Guard against an extractor that silently finds nothing."""
    if not README.exists():
        pytest.skip("no README.md")
    text = README.read_text(encoding="utf8")
    fences = len(re.findall(r"^[ \t]*(?:`{3,}|~{3,})[ \t]*(?:python|python3|py)\b",
                            text, re.M))
    marked = text.count(NO_RUN)
    assert len(list(python_blocks(text))) >= fences - marked
