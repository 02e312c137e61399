"""The command line: ``python -m sharedarray`` (installed as ``sharedarray``).

Subcommands::

    list            the arrays in /dev/shm made by this library (--json for scripts)
    info NAME       everything a segment's header says, plus mode, owner and path
    delete NAME...  unlink names (each one; a missing name is reported, not fatal)
    gc              unlink library temporaries whose creator is dead (--dry-run)
    demo            a parallel numpy job: shared memory against pickling

Exit status follows Unix habits: 0 on success, 1 when an operation failed
(a missing or corrupt array, permission denied; messages on stderr), 2 for
usage errors (argparse's convention, also used for invalid names).

The command line sits on the public API (``import sharedarray``); the demo
lives in :mod:`sharedarray._demo` and is imported only when it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import sharedarray as sa

from . import _names
from .core import read_meta

__all__ = ["main", "build_parser", "format_size", "format_age", "parse_size",
           "pid_alive"]

PROG = "sharedarray"
SHM_DIR = _names.SHM_DIR

# A process that started after an array was created cannot be its creator:
# the creator died and its pid was reused (pid_max is often only 32768).
# The two times come from the header (wall clock at creation) and /proc
# (boot time + ticks, on today's wall clock), so a step of the wall clock in
# between shifts one against the other; the margin keeps such a step from
# making gc delete a live creator's array.  It errs towards "alive": a
# temporary whose pid was reused within the margin waits for that process.
_PID_REUSE_MARGIN = 300.0    # seconds


class CommandError(Exception):
    """An operational error: printed as ``sharedarray: <message>``, exit 1."""


# ---------------------------------------------------------------- formatting

def format_size(nbytes: int) -> str:
    """A byte count in binary units: ``80 B``, ``1.5 KiB``, ``1.0 GiB``."""
    n = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_age(seconds: float) -> str:
    """A duration in the largest sensible units: ``42s``, ``5m03s``, ``2h10m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*\Z", re.I)


def parse_size(text: str) -> int:
    """Parse a size such as ``1G``, ``512MiB``, ``64m`` or ``1048576``.

    Units are powers of 1024 (``K``, ``M``, ``G``, ``T``, optionally followed
    by ``B`` or ``iB``); a bare number is bytes.

    Raises
    ------
    argparse.ArgumentTypeError
        The text is not a positive size (argparse turns it into a usage error).
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r} (examples: 1G, 256M, 64MiB)")
    value = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " ")
    if value < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be at least 1 byte")
    return int(value)


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _printable(name: str) -> str:
    """A name safe to print in one table cell (control characters escaped)."""
    return name if name.isprintable() and " " not in name else repr(name)


# ---------------------------------------------------------------- processes

def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _proc_state(pid: int) -> tuple[str, float | None] | None:
    """(state letter, start time as a Unix time) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        fields = stat[stat.rindex(b")") + 2:].split()   # the name may hold ')'
        state = fields[0].decode()
        ticks = int(fields[19])                          # field 22: starttime
    except (ValueError, IndexError):
        return None
    boot = _boot_time()
    if boot is None:
        return state, None
    return state, boot + ticks / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int, since: float | None = None) -> bool | None:
    """Whether the process that made an array (pid ``pid``) still runs.

    Parameters
    ----------
    pid : int
        The creator pid from the array's header; 0 means unknown.
    since : float, optional
        When the array was created (Unix time).  A process with that pid
        that started clearly later (by more than 5 minutes, to allow for
        clock steps) is a different process: the pid was reused, and the
        creator counts as dead.

    Returns
    -------
    bool or None
        None when ``pid`` is unknown (0).  Zombies count as dead.  Pids are
        looked up in this process's pid namespace.
    """
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                     # exists, belongs to another user
    except OverflowError:
        return False
    st = _proc_state(pid)
    if st is None:
        return True              # no /proc (or it just exited): trust kill()
    state, started = st
    if state in ("Z", "X"):
        return False
    if since is not None and started is not None and started > since + _PID_REUSE_MARGIN:
        return False
    return True


def _creator_alive(pid: int, created: float, pid_ns: int) -> bool | None:
    """:func:`pid_alive` for a creator recorded in a header; None (unknown)
    when it ran in another pid namespace, where its pid means nothing here."""
    if pid_ns and _names.PID_NS and pid_ns != _names.PID_NS:
        return None
    return pid_alive(pid, created)


def _alive_word(alive: bool | None) -> str:
    return "-" if alive is None else ("yes" if alive else "no")


# ---------------------------------------------------------------- names

def _name_arg(text: str) -> str:
    """argparse type for array names: reject invalid names as usage errors."""
    try:
        sa.exists(text)          # validates the name; a stat() at most
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except OSError:
        pass                     # a valid name; the command reports the problem
    return text


def _describe_error(name: str, exc: BaseException) -> str:
    """One line saying what went wrong with ``name``."""
    if isinstance(exc, FileNotFoundError):
        return f"{name!r}: no such array"
    if isinstance(exc, PermissionError):
        return f"{name!r}: permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name!r}: {exc.strerror}"
    msg = str(exc)
    return msg if name in msg else f"{name!r}: {msg}"


def _json_dump(obj: Any) -> None:
    import json
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- list

def _info_record(info: sa.ArrayInfo, now: float) -> dict[str, Any]:
    alive = _creator_alive(info.pid, info.created, info.pid_ns)
    return {
        "name": info.name,
        "dtype": str(info.dtype),
        "shape": list(info.shape),
        "nbytes": info.nbytes,
        "size": format_size(info.nbytes),
        "created": info.created,
        "age": round(max(0.0, now - info.created), 3),
        "pid": info.pid,
        "alive": alive,
        "temporary": info.temporary,
        "token": info.token,
    }


def _table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    """``list``: a table of this library's arrays in /dev/shm, or JSON."""
    try:
        infos = sa.list()
    except OSError as exc:
        raise CommandError(f"cannot list arrays: {exc}") from None
    now = time.time()
    records = [_info_record(i, now) for i in infos]
    if args.json:
        _json_dump(records)
        return 0
    rows = [["NAME", "DTYPE", "SHAPE", "SIZE", "AGE", "PID", "ALIVE", "TEMP"]]
    for r in records:
        rows.append([_printable(r["name"]), r["dtype"], str(tuple(r["shape"])),
                     r["size"], format_age(r["age"]), str(r["pid"]),
                     _alive_word(r["alive"]), "yes" if r["temporary"] else "no"])
    print(_table(rows, right={3, 4, 5}))
    return 0


# ---------------------------------------------------------------- info

def _npy_version(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            pre = f.read(8)
    except OSError:
        return None
    return f"{pre[6]}.{pre[7]}" if len(pre) == 8 else None


def _owner(uid: int, gid: int) -> str:
    import grp
    import pwd
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user} ({uid}) / {group} ({gid})"


def _info(name: str) -> dict[str, Any]:
    """Everything about ``name``; raises what attach/stat raise."""
    import stat
    arr = sa.attach(name, ro=True)
    seg = arr.segment
    meta = seg.meta
    path = _names.fs_path(seg.name)
    st = os.stat(path)
    ours = meta.token is not None
    rec: dict[str, Any] = {
        "name": seg.name,
        "path": path,
        "made_by_sharedarray": ours,
        "npy_version": _npy_version(path),
        "dtype": str(meta.dtype),
        "descr": meta.dtype.descr if meta.dtype.names else meta.dtype.str,
        "shape": list(meta.shape),
        "order": "F" if meta.fortran else "C",
        "itemsize": meta.dtype.itemsize,
        "nbytes": meta.nbytes,
        "data_offset": meta.offset,
        "file_size": st.st_size,
        "allocated": st.st_blocks * 512,
        "mode": stat.filemode(st.st_mode),
        "mode_octal": f"{stat.S_IMODE(st.st_mode):04o}",
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _owner(st.st_uid, st.st_gid),
    }
    if ours:
        rec.update({
            "created": meta.created,
            "age": round(max(0.0, time.time() - meta.created), 3),
            "pid": meta.pid,
            "alive": _creator_alive(meta.pid, meta.created, meta.pid_ns),
            "temporary": meta.temporary,
            "token": meta.token,
            "boot_id": meta.boot,
            "pid_namespace": meta.pid_ns,
            "shm_device": meta.shm_dev,
        })
    return rec


def cmd_info(args: argparse.Namespace) -> int:
    """``info NAME``: the header of one array plus its file's mode, owner and path."""
    try:
        rec = _info(args.name)
    except (OSError, ValueError, TypeError) as exc:
        raise CommandError(_describe_error(args.name, exc)) from None
    if args.json:
        _json_dump(rec)
        return 0
    lines = [
        ("name", _printable(rec["name"])),
        ("path", rec["path"]),
        ("made by", "sharedarray" if rec["made_by_sharedarray"]
         else "another program (a plain .npy file)"),
        ("format", f".npy {rec['npy_version']}"),
        ("dtype", rec["dtype"] if rec["dtype"] == str(rec["descr"])
         or not isinstance(rec["descr"], str) else f"{rec['dtype']} ({rec['descr']})"),
        ("shape", str(tuple(rec["shape"]))),
        ("order", rec["order"]),
        ("itemsize", str(rec["itemsize"])),
        ("data", f"{format_size(rec['nbytes'])} ({rec['nbytes']:,} bytes) "
                 f"at offset {rec['data_offset']}"),
        ("file size", f"{format_size(rec['file_size'])} ({rec['file_size']:,} bytes), "
                      f"{format_size(rec['allocated'])} allocated"),
        ("mode", f"{rec['mode']} ({rec['mode_octal']})"),
        ("owner", rec["owner"]),
    ]
    if rec["made_by_sharedarray"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["created"]))
        state = {True: "alive", False: "dead", None: "unknown"}[rec["alive"]]
        if rec["pid_namespace"] and rec["pid_namespace"] != _names.PID_NS:
            state += ", in another pid namespace"
        lines += [
            ("created", f"{created} ({format_age(rec['age'])} ago)"),
            ("creator", f"pid {rec['pid']} ({state})"),
            ("temporary", "yes (unlinked when its creator releases it or dies)"
             if rec["temporary"] else "no (stays until deleted)"),
            ("token", rec["token"]),
            ("boot id", rec["boot_id"]),
        ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


# ---------------------------------------------------------------- delete

def cmd_delete(args: argparse.Namespace) -> int:
    """``delete NAME...``: unlink each name; report failures and go on."""
    status = 0
    for name in args.names:
        try:
            if not args.force:
                try:
                    sa.attach(name, ro=True)     # refuse what is not an array
                except PermissionError:
                    pass                         # cannot look: let unlink decide
                except ValueError as exc:
                    _error(f"refusing to delete: {_describe_error(name, exc)}; "
                           f"use --force to delete it anyway")
                    status = 1
                    continue
            sa.delete(name)
        except (OSError, ValueError, TypeError) as exc:
            _error(f"cannot delete {_describe_error(name, exc)}")
            status = 1
            continue
        if args.verbose:
            print(f"deleted {_printable(name)}")
    return status


# ---------------------------------------------------------------- gc

def _other_pid_ns(pid_ns: int) -> bool:
    return bool(pid_ns) and bool(_names.PID_NS) and pid_ns != _names.PID_NS


def _gc_candidates(names: set[str] | None) -> tuple[list[tuple[str, str]], list[str]]:
    """What gc would remove: [(name, description)], plus notes on what it kept.

    Only what a header marks as ours is collected: temporaries (the header's
    flag), and staging files whose header carries the token their name
    does.  A creator in another pid namespace (another container sharing
    this /dev/shm) is never judged: its pid means nothing here.
    """
    now = time.time()
    found: list[tuple[str, str]] = []
    notes: list[str] = []
    seen: set[str] = set()
    for info in sa.list():
        if names is not None and info.name not in names:
            continue
        seen.add(info.name)
        if not info.temporary:
            if names is not None:
                notes.append(f"kept {info.name!r}: not a temporary")
            continue
        if _other_pid_ns(info.pid_ns):
            notes.append(f"skipped {info.name!r}: its creator (pid {info.pid}) "
                         f"runs in another pid namespace (another container?), "
                         f"where gc cannot tell whether it is alive")
            continue
        if pid_alive(info.pid, info.created) is not False:
            if names is not None:
                notes.append(f"kept {info.name!r}: its creator (pid {info.pid}) is alive")
            continue
        found.append((info.name, f"{format_size(info.nbytes)}, creator pid "
                                 f"{info.pid} dead, {format_age(now - info.created)} old"))
    # Staging files of creates that were killed half-way (only where the
    # C core cannot use O_TMPFILE); they are never in list().
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        entries = []
    for entry in entries:
        m = _names.STAGING_RE.match(entry)
        if not m or (names is not None and entry not in names) or entry in seen:
            continue
        seen.add(entry)
        path = f"{SHM_DIR}/{entry}"
        meta = read_meta(path, entry, complete=False)
        if meta is None or meta.token != m.group(2):
            # Not a staging file of ours: the header written first would
            # carry the token of the name.
            if names is not None:
                notes.append(f"kept {entry!r}: not a staging file of sharedarray")
            continue
        if _other_pid_ns(meta.pid_ns):
            notes.append(f"skipped {entry!r}: made in another pid namespace")
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        pid = int(m.group(1))
        if pid_alive(pid, st.st_mtime) is not False:
            continue
        found.append((entry, f"{format_size(st.st_size)}, unfinished create by "
                             f"dead pid {pid}"))
    for name in sorted((names or set()) - seen):
        notes.append(f"kept {name!r}: not an array made by sharedarray "
                     f"(or already gone)")
    return found, notes


def cmd_gc(args: argparse.Namespace) -> int:
    """``gc``: unlink library temporaries whose creator is dead."""
    try:
        found, notes = _gc_candidates(set(args.names) if args.names else None)
    except OSError as exc:
        raise CommandError(f"cannot list arrays: {exc}") from None
    for note in notes:
        print(note, file=sys.stderr)
    status, count = 0, 0
    for name, what in found:
        if args.dry_run:
            print(f"would delete {_printable(name)}  ({what})")
            count += 1
            continue
        try:
            if _names.STAGING_RE.match(name):
                os.unlink(f"{SHM_DIR}/{name}")
            else:
                sa.delete(name)
        except FileNotFoundError:
            pass        # its owner's tracker was faster: gone is gone
        except OSError as exc:
            _error(f"cannot delete {_describe_error(name, exc)}")
            status = 1
            continue
        print(f"deleted {_printable(name)}  ({what})")
        count += 1
    verb = "would delete" if args.dry_run else "deleted"
    print(f"gc: {verb} {count} temporar{'y' if count == 1 else 'ies'}"
          if count else "gc: nothing to collect", file=sys.stderr)
    return status


# ---------------------------------------------------------------- demo

def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: k-means on shared data, sharedarray's pool against the standard one."""
    from . import _demo
    try:
        return _demo.run(size=args.size, workers=args.workers,
                         iterations=args.iterations)
    except OSError as exc:       # e.g. ENOSPC: a small /dev/shm (Docker: 64 MiB)
        raise CommandError(f"demo failed: {exc}; try a smaller --size") from None


# ---------------------------------------------------------------- parser

def _error(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="numpy arrays in POSIX shared memory: inspect and clean up "
                    "/dev/shm, or run the demo.",
        epilog="Exit status: 0 success, 1 an operation failed, 2 usage error. "
               "'%(prog)s COMMAND --help' describes each command.")
    p.add_argument("--version", action="version", version=f"%(prog)s {sa.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            description: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=description)
        sp.set_defaults(func=func)
        return sp

    sp = add("list", cmd_list, "list the arrays in /dev/shm made by sharedarray",
             "List the arrays in /dev/shm that sharedarray made: name, dtype, "
             "shape, size, age, creator pid, whether the creator is alive, and "
             "whether the array is a temporary (made by share() or the "
             "executor).  Other files in /dev/shm are not shown.")
    sp.add_argument("--json", action="store_true",
                    help="print a JSON list of objects instead of a table")

    sp = add("info", cmd_info, "show everything about one array",
             "Show what an array's header says (dtype, shape, order, creator, "
             "token, ...) and its file's path, mode and owner.  Works for any "
             ".npy in shared memory or, with file://PATH, on disk.")
    sp.add_argument("name", metavar="NAME", type=_name_arg,
                    help="'name' or 'shm://name' (/dev/shm/name), or 'file://path'")
    sp.add_argument("--json", action="store_true", help="print a JSON object")

    sp = add("delete", cmd_delete, "unlink arrays",
             "Unlink each NAME.  Processes that have an array attached keep "
             "it until they drop it.  A name that is missing or cannot be "
             "deleted is reported on stderr and the others are still deleted "
             "(exit status 1).  Names that are not .npy arrays are refused "
             "unless --force is given.")
    sp.add_argument("names", metavar="NAME", nargs="+", type=_name_arg,
                    help="array names, as for 'info'")
    sp.add_argument("-f", "--force", action="store_true",
                    help="also unlink names that do not hold a valid array")
    sp.add_argument("-v", "--verbose", action="store_true",
                    help="print each name deleted")

    sp = add("gc", cmd_gc, "unlink temporaries whose creator is dead",
             "Unlink the temporaries (arrays made by share() and by the "
             "executor, named sa-<pid>-...) whose creating process is dead, "
             "e.g. after a crash that also took the resource tracker.  Named "
             "arrays (create(), from_array()) and files that sharedarray did "
             "not make are never touched.  Processes are looked up in this "
             "pid namespace; temporaries made in another one (another "
             "container sharing this /dev/shm) are skipped, and said so.")
    sp.add_argument("names", metavar="NAME", nargs="*",
                    help="consider only these names (default: all of /dev/shm)")
    sp.add_argument("-n", "--dry-run", action="store_true",
                    help="only print what would be deleted")

    sp = add("demo", cmd_demo, "time a parallel numpy job: shared memory vs pickling",
             "Cluster about SIZE of float64 points with k-means.  The points "
             "live in shared memory; every iteration sends every block of them "
             "to a worker, once through sharedarray.ProcessPoolExecutor (a "
             "view of the same memory) and once through the standard "
             "concurrent.futures.ProcessPoolExecutor (pickled), and prints "
             "both times and whether the results agree.  Takes about a minute "
             "with the defaults on 2 cores; everything it creates is removed.")
    sp.add_argument("--size", type=parse_size, default=1 << 30,
                    help="amount of data, e.g. 256M or 2G (default: 1G)")
    sp.add_argument("--workers", type=_positive_int, default=None,
                    help="worker processes (default: the number of CPUs)")
    sp.add_argument("--iterations", type=_positive_int, default=None,
                    help="k-means iterations (default: 4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CommandError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output went to a closed pipe (`sharedarray list | head -1`): quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
