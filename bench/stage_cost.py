"""Orchestration cost of a stage that runs: the wall it adds to a run, less its own work.

    .venv/bin/python bench/stage_cost.py [--root DIR] [--reps 3] [--stages dedup tokenizer]

On a data root where the sample's run is cached (filled first if it is not), each rep
runs `fineflow rerun STAGE` for every stage named (the real CLI, the shared local
server): that stage runs, forced, and everything else comes from the cache (its output
comes out the same, so nothing downstream reruns). Per run it reads

- the stage's line of the run's summary: the seconds the stage added to the run, from
  the previous stage's last task to its own end (submission, cache key, the work,
  writing and committing the artifact, the result record, state changes);
- the stage's own log line in the run's log file (DATA_ROOT/_logs/run-*.log): the
  seconds of its work inside the task (dedup: "(N.Ns)", tokenizer: "in N.Ns");

and prints, per stage, the medians and their difference: what orchestration costs on
top of the work. Also the run's wall against a fully cached run's (the fixed cost).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORK = {  # the stage's own "done in N s" log line
    "dedup": re.compile(r"dedup: \d+ docs, .*\((\d+\.\d+)s\)"),
    "tokenizer": re.compile(r"tokenizer: \d+ ids from .* in (\d+\.\d+)s"),
}
STAGE_LINE = r"^\s*{stage}\s+(\S+(?: \S+)?)\s+(\d+\.\d+)s"


def fineflow(root: Path, home: Path, *args: str) -> tuple[float, str]:
    env = {**os.environ, "FINEFLOW_DATA_ROOT": str(root), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fineflow.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"fineflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}")
    log = max((root / "_logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime)
    return wall, proc.stdout + proc.stderr + log.read_text()


def read(stage: str, out: str) -> tuple[float, float]:
    """(seconds the stage added to the run, seconds of its own work) from a run's output."""
    line = re.search(STAGE_LINE.format(stage=stage), out, re.M)
    work = WORK[stage].search(out)
    if line is None or work is None or not line.group(1).startswith("ran"):
        raise RuntimeError(f"{stage} did not run, or its lines are missing:\n{out[-3000:]}")
    return float(line.group(2)), float(work.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="a data root (default: a new temporary one)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stages", nargs="+", default=list(WORK), choices=list(WORK))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, home = args.root or Path(tmp) / "data", Path(tmp) / "prefect-home"
        home.mkdir()
        try:
            print("filling the cache (a whole run the first time)...", flush=True)
            fineflow(root, home, "run")
            cached = []
            added: dict[str, list[float]] = {s: [] for s in args.stages}
            work: dict[str, list[float]] = {s: [] for s in args.stages}
            walls: dict[str, list[float]] = {s: [] for s in args.stages}
            for _ in range(args.reps):
                wall, out = fineflow(root, home, "run")
                if " 0 ran," not in out:
                    raise RuntimeError(f"not all cached:\n{out[-2000:]}")
                cached.append(wall)
                for stage in args.stages:
                    wall, out = fineflow(root, home, "rerun", stage)
                    a, w = read(stage, out)
                    added[stage].append(a)
                    work[stage].append(w)
                    walls[stage].append(wall)
                    print(f"  rerun {stage}: wall {wall:.1f} s, stage {a:.1f} s, work {w:.1f} s")
        finally:
            env = {**os.environ, "PREFECT_HOME": str(home)}
            subprocess.run(
                [sys.executable, "-m", "fineflow.cli", "server", "--stop"],
                env=env,
                capture_output=True,
            )
    med = statistics.median
    load = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} core(s), load {load:.1f}; fully cached run {med(cached):.1f} s wall")
    for stage in args.stages:
        a, w = med(added[stage]), med(work[stage])
        print(
            f"{stage:9s} added {a:.2f} s to the run, its own work {w:.2f} s: orchestration "
            f"{a - w:.2f} s (runs: {', '.join(f'{x:.1f}' for x in added[stage])}); "
            f"`fineflow rerun {stage}` wall {med(walls[stage]):.1f} s"
        )


if __name__ == "__main__":
    sys.exit(main())
