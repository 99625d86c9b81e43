"""Fixed cost of `fineflow run`: a fully cached run on the sample, wall and first task.

    .venv/bin/python bench/fixed_cost.py [--root DIR] [--reps 5] [--before REV] [--now REV]

Runs the real CLI (`fineflow run`, the sample, default settings) on a data root where
everything is cached (each way runs once first, so the cache holds what it needs),
alternating three ways, and prints per way the median of:

- wall: the command's whole wall-clock time;
- first task: seconds from the command's start to the first "Task run" line it prints
  (a cached task prints its line when it finishes);
- after last task: seconds from the last "Task run ... Finished" line to the exit.

The ways:
- "before": the code of REV (default: the commit before the thread runner for cached
  runs and the shared server came), run from a copy of that tree: a temporary API server
  per run (started before Prefect's imports), the per-WARC stages on a process pool even
  when all are cached;
- "per-run": this tree with FINEFLOW_SERVER_IDLE_S=0: a temporary server per run as
  before, the per-WARC stages on threads when all are cached;
- "now": this tree as a user gets it: the shared local server (fineflow.server; the
  first run of the script starts it, every timed run reuses it), threads when cached.

Every way uses one Prefect home made for the script (its database; the shared server is
stopped at the end) and one data root; a run that did not come back all cached fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
LAYERS = ("flows", "tasks", "storage")  # top-level folders that install inside fineflow/


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=CHECKOUT, check=True, capture_output=True).stdout


def before_this_work() -> str:
    """The commit before the thread runner for cached runs came (`def all_cached`)."""
    added = git("log", "-S", "def all_cached", "--format=%H", "--", "flows/data.py").split()
    return f"{added[-1].decode()[:12]}~1" if added else "HEAD"


def tree_at(rev: str, where: Path) -> Path:
    """REV's code laid out as the installed package (flows/, tasks/, storage/ inside
    fineflow/); returns the folder to put first on PYTHONPATH."""
    with tarfile.open(fileobj=BytesIO(git("archive", rev))) as tar:
        tar.extractall(where / "src", filter="data")
    pkg = where / "path" / "fineflow"
    shutil.copytree(where / "src" / "fineflow", pkg)
    for folder in LAYERS:
        shutil.copytree(where / "src" / folder, pkg / folder)
    return pkg.parent


def timed_run(root: Path, home: Path, path: Path | None, idle: str) -> dict[str, float]:
    env = {**os.environ, "FINEFLOW_DATA_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.update(PREFECT_HOME=str(home), FINEFLOW_SERVER_IDLE_S=idle)
    env.pop("PREFECT_API_URL", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fineflow.cli", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=home,  # not the checkout: a copy must not find this tree's folders first
    )
    first = last = None
    summary = ""
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if "Task run" in line:
            first = now if first is None else first
            if "Finished" in line:
                last = now
        summary = line if line.startswith("fineflow: ") else summary
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0 or first is None:
        raise RuntimeError(f"fineflow run exited {rc}: {summary}")
    return {"wall": wall, "first": first, "after": wall - (last or wall), "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="a data root (default: a new temporary one)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--before", default=None, help="the revision of 'before' (see above)")
    ap.add_argument("--now", default=None, help="a revision for 'now' (default: this tree)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root, home = args.root or tmp_path / "data", tmp_path / "prefect-home"
        home.mkdir()
        before = args.before or before_this_work()
        paths = {"before": tree_at(before, tmp_path / "before")}
        paths["now"] = paths["per-run"] = tree_at(args.now, tmp_path / "now") if args.now else None
        ways = {"before": "0", "per-run": "0", "now": "600"}  # FINEFLOW_SERVER_IDLE_S
        try:
            print(f"filling the cache (before = {before}; a whole run the first time)...")
            for name in ("now", "before"):
                timed_run(root, home, paths[name], ways[name])
            runs: dict[str, list[dict]] = {name: [] for name in ways}
            for _ in range(args.reps):
                for name, idle in ways.items():  # alternated
                    r = timed_run(root, home, paths[name], idle)
                    if " 0 ran," not in r["summary"]:
                        raise RuntimeError(f"{name}: not all cached: {r['summary']}")
                    runs[name].append(r)
                    print(f"  {name}: {r['wall']:.1f} s, first task at {r['first']:.1f} s")
        finally:
            env = {**os.environ, "PREFECT_HOME": str(home)}
            subprocess.run([sys.executable, "-m", "fineflow.cli", "server", "--stop"], env=env)
    load = os.getloadavg()[0]
    print(f"fully cached `fineflow run` on the sample, {os.cpu_count()} cores, load {load:.1f}:")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "first", "after")}
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        print(
            f"{name:8s} wall {med['wall']:5.1f} s ({walls}); first task at {med['first']:.1f} s;"
            f" {med['after']:.1f} s after the last task"
        )


if __name__ == "__main__":
    sys.exit(main())
