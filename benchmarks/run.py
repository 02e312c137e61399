"""Run every ``benchmarks/bench_*.py`` and write ``results.md`` and plots.

Usage::

    python benchmarks/run.py [--quick] [-k SUBSTRING ...] [--no-run]

Each module runs in its own interpreter (``run.py --one FILE``), so peers'
import side effects (SharedArray, joblib's and loky's resource trackers,
OpenBLAS threads) never mix.  The child calls the module's ``run(quick)``
and writes what it returns to ``results/<name>.json`` (see ``_util.py`` for
the format).  The parent then renders every JSON in ``results/`` into
``results.md`` and draws each module's plots (matplotlib, Agg backend).
``--no-run`` only re-renders.

A module that fails or times out is reported in ``results.md`` and does not
stop the others.  After each module the parent checks that it left no
segment behind in /dev/shm (its names carry the child's pid).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
REPORT = os.path.join(HERE, "results.md")

# One BLAS thread: nothing here uses BLAS, but an idle OpenBLAS pool spins
# after numpy's import and steals CPU from the workers on a 2-core machine.
THREAD_VARS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
PEERS = ["SharedArray", "joblib", "loky", "cloudpickle", "psutil", "matplotlib"]


def modules(patterns: list[str]) -> list[str]:
    files = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if patterns:
        files = [f for f in files if any(p in os.path.basename(f) for p in patterns)]
    return files


def sweep(pid: int) -> list[str]:
    """Unlink the segments a dead child left (its names carry its pid)."""
    prefix = f"sab-{pid}-"
    try:
        left = sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except FileNotFoundError:
        return []
    for n in left:
        try:
            os.unlink(os.path.join("/dev/shm", n))
        except FileNotFoundError:
            pass
    return left


def short(path: str) -> str:
    return os.path.basename(path)[len("bench_"):-len(".py")]


# ------------------------------------------------------------------ child

def run_one(path: str, quick: bool, out: str) -> int:
    """In the child: import the module, call run(quick), write JSON."""
    # The parent's timeout sends SIGTERM: unwind, so that finally blocks
    # delete segments and executors shut down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, HERE)
    name = os.path.basename(path)[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod           # workers unpickle functions by this name
    spec.loader.exec_module(mod)
    import _util
    t0 = time.time()
    result = {"module": os.path.basename(path), "quick": quick,
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "loadavg_before": os.getloadavg()}
    try:
        result.update(mod.run(quick))
        result["ok"] = True
    except BaseException:
        result["ok"] = False
        result["error"] = traceback.format_exc()
        traceback.print_exc()
    result["seconds"] = round(time.time() - t0, 1)
    result["loadavg_after"] = os.getloadavg()
    left = _util.cleanup()
    result["leaked"] = left
    if left:
        print(f"{name}: removed {len(left)} leftover segment(s): {left}", file=sys.stderr)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False, default=str)
    os.replace(out + ".tmp", out)
    return 0 if result["ok"] else 1


# ------------------------------------------------------------------ machine

def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def machine() -> dict:
    cpu = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    try:
        st = os.statvfs("/dev/shm")
        shm = f"{st.f_blocks * st.f_frsize / (1 << 30):.1f} GiB"
    except OSError:
        shm = "absent"
    import numpy
    versions = {"Python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import sharedarray
        versions["sharedarray"] = sharedarray.__version__
    except Exception as exc:  # pragma: no cover
        versions["sharedarray"] = f"not importable: {exc}"
    from importlib.metadata import PackageNotFoundError, version
    for p in PEERS:
        try:
            versions[p] = version(p)
        except PackageNotFoundError:
            versions[p] = "not installed"
    try:
        commit = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        commit = ""
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "dev_shm": shm,
        "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "shmem_thp": _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "start_method": __import__("multiprocessing").get_start_method(),
        "versions": versions,
        "commit": commit,
        "env": {k: os.environ.get(k, "") for k in THREAD_VARS},
    }


# ------------------------------------------------------------------ rendering

def _cell(v) -> str:
    if v is True:
        return "yes"
    if v is False:
        return "**no**"
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(columns: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(_cell(c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _lines(ax, p: dict) -> None:
    """A log-log panel: time against array size, one line per method."""
    from _util import fmt_bytes
    xs = p["xs"]
    styles = ["o-", "s-", "^-", "v-", "D-", "P-", "X-", "*-"]
    for i, (label, vals) in enumerate(p["series"].items()):
        pts = [(x, v) for x, v in zip(xs, vals, strict=False) if v is not None]
        if not pts:
            continue
        dashed = "reference" in label or "floor" in label
        ax.plot([x for x, _ in pts], [v for _, v in pts],
                "k--" if dashed else styles[i % len(styles)], label=label,
                markersize=4, linewidth=1.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([fmt_bytes(x) for x in xs], fontsize=8)
    ax.minorticks_off()
    ax.set_title(p.get("title", ""), fontsize=10)
    ax.set_xlabel(p.get("xlabel", ""))
    ax.set_ylabel(p.get("ylabel", ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)


def plot(spec: dict, where: str) -> str | None:
    """Draw one figure (grouped bars or log-log lines per panel); returns
    an error string or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib not installed ({exc})"
    panels = spec.get("panels", [])
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4),
                             squeeze=False)
    for ax, p in zip(axes[0], panels, strict=True):
        if p.get("kind") == "lines":
            _lines(ax, p)
            continue
        groups, series = p["groups"], p["series"]
        n = max(1, len(series))
        width = 0.8 / n
        for i, (label, vals) in enumerate(series.items()):
            xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
            ys = [v if v is not None else 0 for v in vals]
            ax.bar(xs, ys, width, label=label)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
        ax.set_title(p.get("title", ""), fontsize=10)
        ax.set_ylabel(p.get("ylabel", ""))
        if p.get("log", True):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(spec.get("title", ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(os.path.join(where, spec["file"]), dpi=110)
    plt.close(fig)
    return None


def render(mach: dict, results: list[dict], wall: float | None) -> str:
    v = mach["versions"]
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/run.py` (`make bench`); do not edit by hand. "
             "Every figure is the **median** of the repeats with the **minimum** in "
             "brackets; variants run interleaved in one process, so the ratios are "
             "side by side. The machine is a shared 2-core VM: the load average "
             "(other jobs) is recorded per benchmark and inflates absolute times; "
             "the ratios are what the targets are stated in.", "",
             "## Machine", ""]
    rows = [["CPU", mach["cpu"]], ["cores", mach["cores"]], ["memory", mach["memory"]],
            ["kernel", mach["kernel"]], ["/dev/shm", mach["dev_shm"]],
            ["THP (anon / shmem)", f"{mach['thp']} / {mach['shmem_thp']}"],
            ["multiprocessing start method", mach["start_method"]],
            ["sharedarray commit", mach["commit"]],
            ["thread env", ", ".join(f"{k}={x}" for k, x in mach["env"].items())]]
    rows += [[k, x] for k, x in v.items()]
    if wall is not None:
        rows.append(["total run time", f"{wall:.0f} s"])
    lines += md_table(["item", "value"], rows) + [""]

    # summary of targets
    summary = []
    for r in results:
        for t in r.get("targets", []):
            summary.append([r.get("title", r["module"]), t["target"], t["measured"],
                            "yes" if t["met"] else ("–" if t["met"] is None else "**no**")])
    if summary:
        lines += ["## Targets", ""] + md_table(["benchmark", "target", "measured", "met"],
                                               summary) + [""]

    for r in results:
        lines += [f"## {r.get('title', r['module'])}", ""]
        la = r.get("loadavg_before") or [None]
        lb = r.get("loadavg_after") or [None]
        meta = (f"`{r['module']}`, {'quick' if r.get('quick') else 'full'} run, "
                f"{r.get('started', '?')}, {r.get('seconds', '?')} s; load average "
                f"{_cell(la[0])} before, {_cell(lb[0])} after.")
        lines += [meta, ""]
        if r.get("description"):
            lines += [r["description"], ""]
        if not r.get("ok", False):
            lines += ["**This benchmark failed:**", "", "```",
                      (r.get("error") or "no result").strip()[-3000:], "```", ""]
        for s in r.get("skipped", []):
            lines += [f"> Skipped: {s}", ""]
        for t in r.get("tables", []):
            lines += [f"### {t['title']}", ""] + md_table(t["columns"], t["rows"]) + [""]
            lines += [f"- {n}" for n in t.get("notes", [])]
            if t.get("notes"):
                lines.append("")
        if r.get("targets"):
            lines += ["### Targets", ""]
            lines += md_table(["target", "measured", "met"],
                              [[t["target"], t["measured"],
                                t["met"] if t["met"] is not None else "–"]
                               for t in r["targets"]]) + [""]
        for p in r.get("plots", []):
            lines += [f"![{p.get('title', p['file'])}]({p['file']})", ""]
        if r.get("leaked"):
            lines += [f"**Left segments behind (removed by run.py):** {r['leaked']}", ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats (about a minute in all)")
    ap.add_argument("-k", dest="patterns", action="append", default=[],
                    help="run only modules whose file name contains this")
    ap.add_argument("--no-run", action="store_true",
                    help="only re-render results.md and plots from results/*.json")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per module (default 600 quick, 1800 full)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.one:
        return run_one(a.one, a.quick, a.out)

    files = modules(a.patterns)
    if not files:
        print("no benchmark modules match", file=sys.stderr)
        return 2
    env = dict(os.environ)
    for k, val in THREAD_VARS.items():
        env.setdefault(k, val)
    os.environ.update({k: env[k] for k in THREAD_VARS})
    timeout = a.timeout or (600 if a.quick else 1800)
    failed = []
    t0 = time.time()
    if not a.no_run:
        for f in files:
            out = os.path.join(RESULTS, short(f) + ".json")
            print(f"== {os.path.basename(f)} ({'quick' if a.quick else 'full'})", flush=True)
            t1 = time.time()
            # Its own session: on a timeout the whole tree it started (pools,
            # helper interpreters) goes, not just the child.
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", f,
                                     "--out", out] + (["--quick"] if a.quick else []),
                                    env=env, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = "timeout"
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
                with open(out, "w") as fh:
                    json.dump({"module": os.path.basename(f), "ok": False, "quick": a.quick,
                               "error": f"timed out after {timeout:.0f} s"}, fh)
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                sweep(proc.pid)
                raise
            # A killed child cannot sweep its own segments: do it here.
            left = sweep(proc.pid)
            if left:
                print(f"   removed {len(left)} segment(s) it left: {left}", flush=True)
            print(f"   {os.path.basename(f)}: {'ok' if rc == 0 else 'FAILED'} "
                  f"in {time.time() - t1:.0f} s", flush=True)
            if rc != 0:
                failed.append(os.path.basename(f))
    wall = None if a.no_run else time.time() - t0

    results = []
    for f in modules([]):
        path = os.path.join(RESULTS, short(f) + ".json")
        if os.path.exists(path):
            with open(path) as fh:
                results.append(json.load(fh))
    mach = machine()
    for r in results:
        for p in r.get("plots", []):
            err = plot(p, HERE)
            if err:
                print(f"plot {p['file']}: {err}", file=sys.stderr)
    with open(REPORT, "w") as fh:
        fh.write(render(mach, results, wall))
    print(f"wrote {os.path.relpath(REPORT)}", flush=True)
    for r in results:
        for t in r.get("targets", []):
            mark = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            print(f"  [{mark:6s}] {t['target']}: {t['measured']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
