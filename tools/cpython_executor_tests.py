#!/usr/bin/env python3
"""Run CPython 3.13's own concurrent.futures process-pool tests against a
substitute executor class.

The tests are *not* copied into this repository: they are loaded at run time
from the test package of the interpreter given with --python
(``lib/python3.13/test/test_concurrent_futures``).  A small bootstrap runs in a
subprocess of that interpreter; it imports the executor class named by
--executor (default ``sharedarray:ProcessPoolExecutor``) and puts it in every
place where those tests look up ``ProcessPoolExecutor``:

* ``concurrent.futures.ProcessPoolExecutor`` (the package attribute; the tests
  do ``from concurrent import futures`` and use ``futures.ProcessPoolExecutor``
  both at class-creation time -- ``executor_type = futures.ProcessPoolExecutor``
  in the mixins of ``util.py`` -- and at call time in test bodies),
* ``concurrent.futures.process.ProcessPoolExecutor``,
* the globals of the test modules and the ``executor_type`` of every
  process-pool mixin / generated test class (patched *before* the test modules
  are imported, then checked after import),
* the Python child processes that ``test_shutdown`` starts with
  ``assert_python_ok('-c', 'from concurrent.futures import ProcessPoolExecutor
  ...')``: a prelude that performs the same substitution is prepended to their
  ``-c`` code.

It then runs, with unittest, every test of test_process_pool, test_shutdown,
test_wait, test_as_completed, test_deadlock, test_init and test_future except
the thread-pool ones, and prints per-test failures and a final line

    cpython executor tests: N passed, N failed, N skipped

The exit status is 0 only if nothing failed (tests listed as expected failures,
built in below or given with --expect-fail, are reported separately and do not
count as failures).

This file is stdlib-only and runs on any Python 3.8+; the interpreter given
with --python must be CPython 3.13 (for example a venv in which the package
under test is installed).

Examples::

    # baseline: a trivial subclass of the stdlib class
    PYTHONPATH=/tmp/fakeexec tools/cpython_executor_tests.py \\
        --python ~/.pyenv/versions/3.13.0/bin/python3.13 \\
        --executor fakeexec:ProcessPoolExecutor

    # the package, from a venv where it is installed, without the slow tests
    tools/cpython_executor_tests.py --python .venv-cpython313/bin/python --quick

    # only some tests (substring or fnmatch pattern on the test id)
    tools/cpython_executor_tests.py --python ... test_deadlock 'test_shutdown.*Spawn*'
"""

import argparse
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PYVER = "3.13"
PKG = "test.test_concurrent_futures"
MODULES = (
    "test_process_pool",
    "test_shutdown",
    "test_wait",
    "test_as_completed",
    "test_deadlock",
    "test_init",
    "test_future",
)
SUMMARY_PREFIX = "cpython executor tests:"

# Tests that cannot pass for a subclass by design: {pattern: reason}.  A
# pattern is a test id (with or without the "test.test_concurrent_futures."
# prefix) or an fnmatch pattern (case-sensitive) matching the id or any dotted
# tail of it, e.g. "test_process_pool.*.test_saturation" or
# "ProcessPoolSpawn*.test_saturation".  Empty: with a trivial subclass of the
# stdlib class every selected test passes (or is skipped by CPython itself).
EXPECTED_FAILURES = {
}

# Excluded by --quick: the slowest tests, all dominated by fixed sleeps in
# the test itself (time.sleep submitted to the pool, or a mocked 3 s delay).
# Seconds per start method, measured on a 2-core machine with a trivial
# subclass of the stdlib class.  What they check does not depend on the start
# method, so --quick still runs each of them once, with fork, and drops only
# the forkserver and spawn variants; every other test keeps all three start
# methods.  Full run: ~100 s; --quick: ~70 s.
_SLOW = {
    "test_process_pool.*.test_map_timeout": 6.0,
    "test_wait.*.test_first_exception": 3.1,
    "test_deadlock.*.test_gh105829_should_not_deadlock_if_wakeup_pipe_full": 3.0,
    "test_as_completed.*.test_duplicate_futures": 2.0,
    "test_wait.*.test_first_exception_one_already_failed": 2.0,
}
QUICK_EXCLUDE = [
    pat.replace(".*.", f".ProcessPool{method}*.", 1)
    for pat in _SLOW for method in ("Forkserver", "Spawn")
]


# --------------------------------------------------------------------------
# The bootstrap, run as ``python3.13 -c BOOTSTRAP CONFIG_JSON`` in a fresh
# interpreter (a fresh process, so the substitution happens before any test
# module is imported).
# --------------------------------------------------------------------------
BOOTSTRAP = r'''
import sys, os, json, time, traceback, importlib, faulthandler, fnmatch
cfg = json.loads(sys.argv[1])

def _die(msg, code=3):
    sys.stderr.write("bootstrap: " + msg + "\n")
    sys.stderr.flush()
    os._exit(code)

if sys.version_info[:2] != tuple(cfg["pyver"]):
    _die("this interpreter is Python %d.%d, need %d.%d: %s"
         % (sys.version_info[:2] + tuple(cfg["pyver"]) + (sys.executable,)))

faulthandler.enable()
if cfg["timeout"]:
    # Dump every thread's stack and exit if the whole run overruns.
    faulthandler.dump_traceback_later(cfg["timeout"], exit=True)

import unittest
import concurrent.futures
import concurrent.futures.process
import concurrent.futures.thread

ORIG = concurrent.futures.process.ProcessPoolExecutor
TPE = concurrent.futures.thread.ThreadPoolExecutor

# 1. import the executor under test
modname, _, clsname = cfg["executor"].partition(":")
try:
    mod = importlib.import_module(modname)
    CLS = mod
    for part in clsname.split("."):
        CLS = getattr(CLS, part)
except Exception:
    traceback.print_exc()
    _die("cannot import executor %r with %s" % (cfg["executor"], sys.executable), 4)
if not isinstance(CLS, type):
    _die("%r is not a class" % (cfg["executor"],), 4)
if not issubclass(CLS, ORIG):
    print("bootstrap: warning: %r is not a subclass of "
          "concurrent.futures.ProcessPoolExecutor" % (CLS,), flush=True)

# Root directory of the executor's top-level package, for child interpreters
# that run in isolated mode (-I ignores PYTHONPATH).
_top = sys.modules[modname.split(".")[0]]
_roots = []
if getattr(_top, "__file__", None):
    _d = os.path.dirname(os.path.abspath(_top.__file__))
    _roots.append(os.path.dirname(_d) if hasattr(_top, "__path__") else _d)
else:
    _roots.extend(os.path.dirname(p) for p in getattr(_top, "__path__", ()))

# 2. count instantiations (proves the class under test is really used)
_created = [0]
_orig_init = CLS.__init__
def __init__(self, *args, **kwargs):
    if _created[0] is not None:
        _created[0] += 1
    return _orig_init(self, *args, **kwargs)
__init__.__wrapped__ = _orig_init
__init__.__qualname__ = CLS.__qualname__ + ".__init__"
__init__.__doc__ = _orig_init.__doc__
try:
    CLS.__init__ = __init__
except (TypeError, AttributeError):    # e.g. an extension type
    _created[0] = None

# 3. substitute it before the tests are imported
concurrent.futures.ProcessPoolExecutor = CLS
concurrent.futures.process.ProcessPoolExecutor = CLS
if CLS.__name__ != "ProcessPoolExecutor":
    # test_shutdown's children do "from concurrent.futures import <__name__>"
    setattr(concurrent.futures, CLS.__name__, CLS)

try:
    importlib.import_module(cfg["pkg"])
except unittest.SkipTest as e:
    _die("%s skipped: %s" % (cfg["pkg"], e), 5)
except ImportError:
    traceback.print_exc()
    _die("the CPython test package %s is not installed for %s"
         % (cfg["pkg"], sys.executable), 5)
modules = [importlib.import_module(cfg["pkg"] + "." + m) for m in cfg["modules"]]

# 4. patch what was bound early anyway, then verify nothing still refers to
#    the stdlib class
PRELUDE = (
    "import sys as _s, importlib as _il\n"
    "_s.path.extend(_p for _p in %r if _p not in _s.path)\n"
    "import concurrent.futures as _cf, concurrent.futures.process as _cfp\n"
    "_C = _il.import_module(%r)\n"
    "for _n in %r: _C = getattr(_C, _n)\n"
    "_cf.ProcessPoolExecutor = _cfp.ProcessPoolExecutor = _C\n"
    "setattr(_cf, _C.__name__, _C)\n"
    "del _s, _il, _cf, _cfp, _C, _n\n"
) % (_roots, modname, clsname.split("."))

_children = [0]
def _wrap_python_runner(fn):
    def runner(*args, **env_vars):
        args = list(args)
        if "-c" in args[:-1]:
            i = args.index("-c") + 1
            args[i] = PRELUDE + args[i]
            _children[0] += 1
        return fn(*args, **env_vars)
    runner.__wrapped__ = fn
    runner.__name__ = fn.__name__
    return runner

late = []
for name, m in list(sys.modules.items()):
    if not (name == cfg["pkg"] or name.startswith(cfg["pkg"] + ".")) or m is None:
        continue
    for attr, val in list(vars(m).items()):
        if val is ORIG and CLS is not ORIG:
            setattr(m, attr, CLS)
            late.append("%s.%s" % (name, attr))
        elif isinstance(val, type) and val.__dict__.get("executor_type") is ORIG \
                and CLS is not ORIG:
            val.executor_type = CLS
            late.append("%s.%s.executor_type" % (name, attr))
        elif attr in ("assert_python_ok", "assert_python_failure") and callable(val):
            setattr(m, attr, _wrap_python_runner(val))
if late:
    print("bootstrap: note: patched after import: " + ", ".join(late), flush=True)

bad = []
for name, m in list(sys.modules.items()):
    if not (name == cfg["pkg"] or name.startswith(cfg["pkg"] + ".")) or m is None:
        continue
    for attr, val in vars(m).items():
        if isinstance(val, type) and "executor_type" in dir(val):
            et = val.executor_type
            if et is not TPE and et is not CLS:
                bad.append("%s.%s.executor_type = %r" % (name, attr, et))
if concurrent.futures.ProcessPoolExecutor is not CLS:
    bad.append("concurrent.futures.ProcessPoolExecutor")
if bad:
    _die("substitution incomplete: " + "; ".join(bad), 6)

# 5. collect the process-pool tests
def _flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t

def _short(tid):
    return tid[len(cfg["pkg"]) + 1:] if tid.startswith(cfg["pkg"] + ".") else tid

def _match(tid, pats):
    # a pattern without *?[ matches as a substring; with them, as an fnmatch
    # pattern on the whole id or on any dotted tail of it
    parts = tid.split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    for p in pats:
        if any(c in p for c in "*?["):
            if any(fnmatch.fnmatchcase(t, p) for t in tails):
                return True
        elif p in tid:
            return True
    return False

loader = unittest.TestLoader()
selected = []
for m in modules:
    for t in _flatten(loader.loadTestsFromModule(m)):
        if isinstance(t, unittest.loader._FailedTest):
            selected.append(t)      # import/load errors must show up
            continue
        cls = type(t)
        if getattr(cls, "executor_type", None) is TPE or cls.__name__.startswith("ThreadPool"):
            continue
        tid = t.id()
        if cfg["include"] and not _match(tid, cfg["include"]):
            continue
        if cfg["exclude"] and _match(tid, cfg["exclude"]):
            continue
        selected.append(t)

if cfg["list"]:
    for t in selected:
        print(_short(t.id()))
    sys.exit(0)

out = open(cfg["results"], "a", buffering=1)
def _emit(**rec):
    out.write(json.dumps(rec) + "\n")

_emit(event="plan", ids=[_short(t.id()) for t in selected],
      executor="%s.%s" % (CLS.__module__, CLS.__qualname__),
      python=sys.executable)

class Result(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self._cur = {}
        self._t0 = {}

    def _rec(self, test):
        return self._cur.setdefault(test.id(), {"outcome": "pass", "detail": ""})

    def startTest(self, test):
        super().startTest(test)
        self._t0[test.id()] = time.monotonic()
        print("%s ... " % _short(test.id()), end="", flush=True)
        _emit(event="start", id=_short(test.id()))

    def _bad(self, test, kind, err):
        r = self._rec(test)
        r["outcome"] = "fail"
        r["detail"] += "%s: %s\n" % (kind, self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):
            self._bad(test, "ERROR", err)
        else:
            # setUpModule / tearDownModule / class fixtures / module cleanups
            tid = str(test)
            print("\n%s ... ERROR" % tid, flush=True)
            _emit(event="result", id=tid, outcome="fail", duration=0.0,
                  detail="ERROR: " + "".join(traceback.format_exception(*err)))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._bad(test, "FAIL", err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "FAIL" if issubclass(err[0], test.failureException) else "ERROR"
            self._bad(test, "%s in %s" % (kind, subtest), err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        r = self._rec(test)
        r["outcome"] = "skip"
        r["detail"] = reason

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._bad(test, "UNEXPECTED SUCCESS",
                  (AssertionError, AssertionError("unexpected success"), None))

    def stopTest(self, test):
        super().stopTest(test)
        tid = test.id()
        r = self._cur.pop(tid, {"outcome": "pass", "detail": ""})
        dt = time.monotonic() - self._t0.pop(tid, time.monotonic())
        word = {"pass": "ok", "fail": "FAIL", "skip": "skipped"}[r["outcome"]]
        if r["outcome"] == "skip":
            word += " %r" % r["detail"]
        print("%s (%.2fs)" % (word, dt), flush=True)
        _emit(event="result", id=_short(tid), outcome=r["outcome"],
              detail=r["detail"], duration=round(dt, 3))

result = Result()
t0 = time.monotonic()
unittest.TestSuite(selected).run(result)
_emit(event="done", executors_created=_created[0], children_patched=_children[0],
      elapsed=round(time.monotonic() - t0, 1))
out.close()
print("bootstrap: %s instance(s) of %s.%s created, %d child interpreter(s) patched"
      % ("?" if _created[0] is None else _created[0], CLS.__module__,
         CLS.__qualname__, _children[0]), flush=True)
faulthandler.cancel_dump_traceback_later()
'''


def find_python():
    """The pyenv CPython 3.13 interpreter, or python3.13 from PATH."""
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        try:
            r = subprocess.run([pyenv, "root"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               timeout=30)
            if r.returncode == 0 and r.stdout.strip():
                roots.append(r.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    roots.append(os.path.expanduser("~/.pyenv"))
    for root in roots:
        vdir = os.path.join(root, "versions")
        if not os.path.isdir(vdir):
            continue
        names = sorted((n for n in os.listdir(vdir)
                        if n == PYVER or n.startswith(PYVER + ".")),
                       key=_version_key, reverse=True)
        for n in names:
            exe = os.path.join(vdir, n, "bin", "python" + PYVER)
            if os.access(exe, os.X_OK):
                return exe
    # pyenv shims are skipped: they may resolve to another version
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if "shims" in d.split(os.sep):
            continue
        exe = os.path.join(d, "python" + PYVER)
        if os.access(exe, os.X_OK):
            return exe
    return shutil.which("python" + PYVER)


def _version_key(name):
    parts = []
    for p in name.split("."):
        parts.append(int(p) if p.isdigit() else -1)
    return parts


def test_package_dir(python):
    """Directory of test/test_concurrent_futures for `python`, or None."""
    r = subprocess.run(
        [python, "-c",
         "import importlib.util as u, sys; "
         "s = u.find_spec('test'); "
         "print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    d = os.path.join(r.stdout.strip(), "test_concurrent_futures")
    return d if r.returncode == 0 and r.stdout.strip() and os.path.isdir(d) else None


def parse_expect(entries):
    out = {}
    for e in entries:
        tid, sep, reason = e.partition("=")
        if not tid:
            raise SystemExit(f"--expect-fail needs TESTID=reason, got {e!r}")
        out[tid.strip()] = reason.strip() or "(no reason given)"
    return out


def expected_reason(tid, expected):
    """Reason if test `tid` is listed in `expected` (by its id, the id with
    the package prefix, or an fnmatch pattern matching either or any dotted
    tail of the id)."""
    parts = (PKG + "." + tid).split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    for pat, reason in expected.items():
        if any(t == pat or fnmatch.fnmatchcase(t, pat) for t in tails):
            return reason
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", help=f"CPython {PYVER} interpreter to run the tests in; "
                    "the executor's package must be importable there "
                    f"(default: pyenv's {PYVER}, else python{PYVER} on PATH)")
    ap.add_argument("--executor", default="sharedarray:ProcessPoolExecutor",
                    help="module:Name of the class to substitute (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=1800,
                    help="limit for the whole run in seconds (default: %(default)s); "
                    "on expiry every thread's stack is dumped and the run is "
                    "killed; 0 means none")
    ap.add_argument("--quick", action="store_true",
                    help=f"leave out the slowest tests ({len(QUICK_EXCLUDE)}, see QUICK_EXCLUDE)")
    ap.add_argument("--expect-fail", action="append", default=[], metavar="TESTID=REASON",
                    help="a test (id or fnmatch pattern) that is expected to fail; "
                    "repeatable; adds to the built-in list")
    ap.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="leave out tests matching PATTERN (repeatable)")
    ap.add_argument("--list", action="store_true", help="list the selected tests and exit")
    ap.add_argument("--results", metavar="FILE",
                    help="also keep the raw per-test results (JSON lines) in FILE")
    ap.add_argument("filters", nargs="*", metavar="FILTER",
                    help="run only tests whose id contains FILTER (or matches it "
                    "as an fnmatch pattern, if it has *?[)")
    args = ap.parse_args(argv)

    python = args.python or find_python()
    if not python:
        print(f"cannot find a Python {PYVER} interpreter; use --python", file=sys.stderr)
        return 2
    if os.sep in python:      # the tests run in a temporary directory
        python = os.path.abspath(python)
    if ":" not in args.executor:
        print("--executor must be module:Name", file=sys.stderr)
        return 2
    expected = dict(EXPECTED_FAILURES)
    expected.update(parse_expect(args.expect_fail))
    exclude = list(args.exclude)
    if args.quick:
        exclude.extend(QUICK_EXCLUDE)

    tmpdir = tempfile.mkdtemp(prefix="cpython-executor-tests-")
    results_path = args.results or os.path.join(tmpdir, "results.jsonl")
    if args.results and os.path.exists(results_path):
        os.unlink(results_path)
    cfg = {
        "pyver": [int(x) for x in PYVER.split(".")],
        "pkg": PKG,
        "modules": list(MODULES),
        "executor": args.executor,
        "include": args.filters,
        "exclude": exclude,
        "list": args.list,
        "results": results_path,
        "timeout": args.timeout,
    }
    # Run in an empty directory so that a source checkout in the current
    # directory cannot shadow the installed package.
    cmd = [python, "-X", "faulthandler", "-c", BOOTSTRAP, json.dumps(cfg)]
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tmpdir, env=env, start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=(args.timeout + 60) if args.timeout else None)
    except subprocess.TimeoutExpired:
        timed_out = True
    except KeyboardInterrupt:
        _killpg(proc)
        raise
    finally:
        # Reap whatever the run left behind in its own process group
        # (workers, forkserver, resource tracker).
        _killpg(proc)
    rc = proc.wait()
    elapsed = time.monotonic() - t0
    if args.list:
        shutil.rmtree(tmpdir, ignore_errors=True)
        return rc

    plan, results, done, started = [], {}, None, []
    executor_name = args.executor
    try:
        with open(results_path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                ev = rec.get("event")
                if ev == "plan":
                    plan = rec["ids"]
                    executor_name = rec.get("executor", executor_name)
                elif ev == "start":
                    started.append(rec["id"])
                elif ev == "result":
                    results[rec["id"]] = rec
                elif ev == "done":
                    done = rec
    except FileNotFoundError:
        pass
    if not args.results:
        shutil.rmtree(tmpdir, ignore_errors=True)

    if not plan and not results:
        if rc == 0 and done is not None:
            print("\nno test matched the filters")
            print(f"{SUMMARY_PREFIX} 0 passed, 0 failed, 0 skipped")
            return 2
        print(f"\nthe test run did not start (exit status {rc})")
        print(f"{SUMMARY_PREFIX} 0 passed, 1 failed, 0 skipped")
        return 1 if rc == 0 else rc

    # Tests the run never finished (crash or timeout) count as failed.
    why = "timed out" if timed_out or (rc and rc != 0 and done is None) else "did not finish"
    for tid in started:
        if tid not in results:
            results[tid] = {"id": tid, "outcome": "fail", "duration": None,
                            "detail": f"test {why} (runner exit status {rc})"}
    not_run = [t for t in plan if t not in results]

    passed, failed, skipped, xfail, xpass = [], [], [], [], []
    for tid, rec in results.items():
        reason = expected_reason(tid, expected)
        if rec["outcome"] == "pass":
            (xpass if reason else passed).append(tid)
        elif rec["outcome"] == "skip":
            skipped.append(tid)
        elif reason:
            xfail.append((tid, reason))
        else:
            failed.append(tid)

    if failed:
        print("\n" + "=" * 70)
        print("FAILURES")
        for tid in failed:
            print("=" * 70)
            print(f"FAIL: {tid}")
            print("-" * 70)
            print(results[tid].get("detail", "").rstrip())
    slow = sorted((r for r in results.values() if r.get("duration")),
                  key=lambda r: -r["duration"])[:10]
    print("\n" + "-" * 70)
    print(f"executor: {executor_name}  python: {python}")
    if done:
        print(f"executor instances created: {done['executors_created']}; "
              f"child interpreters patched: {done['children_patched']}")
    print("slowest tests: " + ", ".join(f"{r['id']} {r['duration']:.1f}s" for r in slow))
    if xfail:
        print(f"expected failures ({len(xfail)}, not counted as failed):")
        for tid, reason in xfail:
            print(f"  {tid}: {reason}")
    if xpass:
        print(f"listed as expected failures but passed ({len(xpass)}): {', '.join(xpass)}")
    if not_run:
        print(f"not run (runner died, exit status {rc}): {len(not_run)} tests")
        failed.extend(not_run)
    if failed:
        print(f"failed ({len(failed)}):")
        for tid in failed[:40]:
            print("  " + tid)
        if len(failed) > 40:
            print(f"  ... and {len(failed) - 40} more")
    bad_exit = done is None or rc != 0
    if bad_exit and not failed:
        print(f"runner exited abnormally (exit status {rc})")
    if done is not None and done["executors_created"] == 0 and passed and \
            any("ProcessPool" in t for t in passed):
        print("no instance of the executor under test was created: substitution failed")
        bad_exit = True
    print(f"wall time: {elapsed:.1f}s{' (TIMED OUT)' if timed_out else ''}")
    print(f"{SUMMARY_PREFIX} {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if (failed or bad_exit) else 0


def _killpg(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


if __name__ == "__main__":
    sys.exit(main())
