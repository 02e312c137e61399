"""Import cost: ``import sharedarray`` against ``import numpy``.

Every sample is a fresh interpreter (``sys.executable``, started in an empty
directory so that it imports the installed package) that times one import
statement with ``time.perf_counter`` around it: interpreter start-up is not
counted, and numpy's own import is inside both figures.  The variants run
interleaved, one interpreter each per round, with a discarded warm-up round
(byte code written, files in the page cache).  A round's difference
``sharedarray - numpy`` is taken inside the round, and the minima side by
side: this VM's neighbours now and then make a run half as slow again, wall
and CPU time alike, so the fastest runs are the steadiest figures.

A second table splits what ``import sharedarray`` adds on top of numpy, from
``python -X importtime -c "import numpy; import sharedarray"`` (cumulative
microseconds of each module ``sharedarray`` itself imports, medians).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _util as U  # noqa: E402

TIMER = ("import sys, time\n"
         "t0, c0 = time.perf_counter(), time.process_time()\n"
         "exec(sys.argv[1])\n"
         "print(time.perf_counter() - t0, time.process_time() - c0)\n")

VARIANTS = {
    "numpy": "import numpy",
    "sharedarray": "import sharedarray",
    "sharedarray + executor": "from sharedarray import ProcessPoolExecutor",
    "numpy + multiprocessing.resource_tracker":
        "import numpy, multiprocessing.resource_tracker",
}
ALLOWANCE = 10e-3            # the target: sharedarray at most numpy + 10 ms


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONPROFILEIMPORTTIME",
                "PYTHONDONTWRITEBYTECODE"):
        env.pop(var, None)
    return env


def _time_import(stmt: str, cwd: str) -> tuple[float, float]:
    """(wall, CPU) seconds of ``stmt`` in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", TIMER, stmt], cwd=cwd, env=_env(),
                         capture_output=True, text=True, timeout=120, check=True)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def _signed(s: float) -> str:
    return ("-" if s < 0 else "+") + U.fmt_time(abs(s))


def _breakdown(cwd: str) -> dict[str, int]:
    """Microseconds (cumulative) of each module ``sharedarray`` imports directly
    (and of theirs, indented), with numpy already imported, and of
    ``sharedarray`` as a whole."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import numpy; import sharedarray"], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120, check=True)
    rows = []                              # (depth, name, cumulative us), in output order
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|", 2)
        if not cum.strip().isdigit():
            continue                       # the header line
        name = name[1:]                    # the column separator's space
        depth = (len(name) - len(name.lstrip(" "))) // 2
        rows.append((depth, name.strip(), int(cum)))
    # importtime prints children before their parent: sharedarray's direct
    # children are the depth-1 lines just above its depth-0 line.
    out: dict[str, int] = {}
    end = max(i for i, (d, n, _) in enumerate(rows) if d == 0 and n == "sharedarray")
    i = end - 1
    while i >= 0 and rows[i][0] >= 1:
        if rows[i][0] <= 2:                # and their children, indented
            out["\u00a0\u00a0" * (rows[i][0] - 1) + rows[i][1]] = rows[i][2]
        i -= 1
    out["sharedarray (all)"] = rows[end][2]
    return out


def run(quick: bool) -> dict:
    repeats = 9 if quick else 31
    with tempfile.TemporaryDirectory(prefix="sab-import-") as cwd:
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(repeats + 1):
            k = r % len(names)
            for v in names[k:] + names[:k]:
                t, c = _time_import(VARIANTS[v], cwd)
                if r:                      # round 0 is the warm-up
                    samples[v].append(t)
                    cpu[v].append(c)
            if r and r % 10 == 0:
                U.progress(f"import: {r}/{repeats} rounds")
        parts: dict[str, list[int]] = {}
        for _ in range(5 if quick else 11):
            for mod, us in _breakdown(cwd).items():
                parts.setdefault(mod, []).append(us)

    st, cst = U.stats(samples), U.stats(cpu)

    def over(d: dict[str, list[float]], v: str) -> float:
        """Median of the per-round differences ``v - numpy``."""
        return statistics.median(a - b for a, b in zip(d[v], d["numpy"], strict=True))

    # On this shared VM a run is now and then half as fast again (wall and CPU
    # alike): the minima are the steadiest estimate of what an import costs.
    added = st["sharedarray"].min - st["numpy"].min
    added_cpu = cst["sharedarray"].min - cst["numpy"].min

    t1 = U.Table("Import time in a fresh interpreter (median, min in brackets)",
                 ["import", "wall", "CPU", "over numpy: minima (wall / CPU)",
                  "over numpy: per-round (wall / CPU)"],
                 notes=[f"{repeats} rounds, interleaved; `{sys.executable}`, "
                        f"Python {sys.version.split()[0]}.  'Minima': the difference "
                        "of the fastest runs; 'per-round': the median of the "
                        "differences within a round."])
    for v in VARIANTS:
        if v == "numpy":
            t1.add(v, U.fmt_med_min(st[v]), U.fmt_med_min(cst[v]), "–", "–")
        else:
            t1.add(v, U.fmt_med_min(st[v]), U.fmt_med_min(cst[v]),
                   f"{_signed(st[v].min - st['numpy'].min)} / "
                   f"{_signed(cst[v].min - cst['numpy'].min)}",
                   f"{_signed(over(samples, v))} / {_signed(over(cpu, v))}")

    t2 = U.Table("What `import sharedarray` imports on top of numpy (-X importtime)",
                 ["module (imported by sharedarray itself)", "cumulative, median"],
                 notes=["Cumulative: a module's time includes what it imports first. "
                        "Modules numpy already loaded cost nothing here."])
    for mod, us in parts.items():          # each parent, then its children indented
        t2.add(mod, U.fmt_time(statistics.median(us) * 1e-6))

    return {
        "title": "Import time",
        "description": __doc__.split("\n\n")[0].strip(),
        "tables": [t1.as_dict(), t2.as_dict()],
        "targets": [U.target("`import sharedarray` ≤ `import numpy` + 10 ms",
                             f"fastest runs: numpy {U.fmt_time(st['numpy'].min)}, "
                             f"sharedarray {U.fmt_time(st['sharedarray'].min)}: "
                             f"{_signed(added)} (CPU {_signed(added_cpu)}); "
                             f"-X importtime: sharedarray after numpy "
                             f"{U.fmt_time(statistics.median(parts['sharedarray (all)']) * 1e-6)}",
                             added <= ALLOWANCE)],
        "data": {"wall": samples, "cpu": cpu, "breakdown_us": parts},
    }


if __name__ == "__main__":
    U.main(run)
