"""Fixed cost of `fineflow run`: a fully cached run on the sample, wall and first task.

    .venv/bin/python bench/fixed_cost.py [--root DIR] [--reps 3]

Runs the real CLI (`fineflow run`, the sample, default settings) on a data root where
everything is cached (it runs once first if the root has nothing yet), alternating two
ways of starting Prefect's temporary API server, and prints per way the median of:

- wall: the command's whole wall-clock time;
- first task: seconds from the command's start to the first "Task run" line it prints;
- after last task: seconds from the last "Task run ... Finished" line to the exit.

"now": fineflow's own start (fineflow.cli.TemporaryServer: the server process launched
before Prefect is imported, so its start overlaps the CLI's imports). "before": Prefect's
SubprocessASGIServer started after the imports, as fineflow did before (the way is
swapped in a wrapper that imports fineflow.cli and replaces its server class).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEFORE = """
import sys
import fineflow.cli as cli

class SubprocessServer:  # what fineflow.cli did before: Prefect's own, after the imports
    def __init__(self):
        from prefect.server.api.server import SubprocessASGIServer
        self.server = SubprocessASGIServer()
        self.server.start()
        self.api_url = self.server.api_url
    def wait_ready(self):
        pass
    def stop(self):
        self.server.stop()

cli.start_server = lambda: None
cli.TemporaryServer = SubprocessServer
sys.exit(cli.main(sys.argv[1:]))
"""
NOW = "import sys, fineflow.cli as cli; sys.exit(cli.main(sys.argv[1:]))"


def timed_run(code: str, root: Path) -> dict[str, float]:
    env = {**os.environ, "FINEFLOW_DATA_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    first = last = None
    tail = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if "Task run" in line:
            first = now if first is None else first
            if "Finished" in line:
                last = now
        tail = (tail + [line])[-5:]
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0 or first is None:
        raise RuntimeError(f"fineflow run exited {rc}: {''.join(tail)}")
    return {"wall": wall, "first": first, "after": wall - (last or wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="a data root (default: a new temporary one)")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "data"
        print("filling the cache (a whole run, or what changed since the last)...", flush=True)
        timed_run(NOW, root)
        runs: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
        for _ in range(args.reps):
            for name, code in (("before", BEFORE), ("now", NOW)):  # alternated
                runs[name].append(timed_run(code, root))
                print(f"  {name}: {runs[name][-1]['wall']:.1f} s", flush=True)
    print(f"fully cached `fineflow run` on the sample, load average {os.getloadavg()[0]:.1f}:")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "first", "after")}
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        print(
            f"{name:6s} wall {med['wall']:5.1f} s ({walls}); first task at {med['first']:.1f} s;"
            f" {med['after']:.1f} s after the last task"
        )


if __name__ == "__main__":
    sys.exit(main())
