"""Two runs on one data root at once (a schedule firing during a manual run).

Every task key is locked (SERIALIZABLE isolation, flock), so for each stage the
two runs together execute each task exactly once: whichever gets the lock second
finds the committed result and reports it Cached. Both runs succeed and every
artifact on disk is intact.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from fineflow.storage.artifacts import Manifest, verify
from tests.helpers.e2e import small_config

LINE = re.compile(r"^(\w+)\s+(cached|ran(?: (\d+)/(\d+))?)\s+[\d.]+s", re.M)


def executed(stdout: str, runs_per_stage: dict[str, int]) -> dict[str, int]:
    """How many task runs of each stage this run executed (not Cached)."""
    out = {}
    for stage, status, k, _n in LINE.findall(stdout):
        out[stage] = 0 if status == "cached" else int(k) if k else runs_per_stage[stage]
    return out


def test_two_overlapping_runs_execute_each_task_once(prefect_server, warcs, tmp_path):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path / "data"
    cfg = small_config(root, warcs[:2], stop_after="tokenizer")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.model_dump_json())
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "fineflow.cli", "run", "--config", str(cfg_file)]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]

    per_warc = {"download", "url_filter", "extract", "filter", "minhash"}
    runs = {s: 2 if s in per_warc else 1 for s in (*per_warc, "dedup", "tokenizer")}
    done = [executed(stdout, runs) for stdout, _ in outs]
    assert set(done[0]) == set(runs), outs[0][0]
    for stage, n in runs.items():
        assert done[0][stage] + done[1][stage] == n, (stage, done)

    manifests = [
        Manifest.model_validate(json.loads(p.read_text())) for p in root.glob("*/*/manifest.json")
    ]
    assert len(manifests) == sum(runs.values())
    assert all(verify(root, m) is None for m in manifests)
    assert not list(root.glob("*/.*tmp*")), "an unfinished write was left behind"
