"""Progress in the terminal, through the real CLI: `fineflow run` says what long stages are
doing while they run (pages/s per WARC, training steps, encoding MB/s), `--quiet` keeps
those lines to the log file, and the run ends with the report's path, which
`fineflow report` prints again.

"During": the terminal is one stream, so the first training step's line coming before
Prefect's line saying the train task finished means it was written while training ran.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.helpers.cli import fineflow
from tests.helpers.e2e import SAMPLE_WARCS, head_warc, small_config

STEPS = 12


@pytest.fixture(scope="module")
def setup(prefect_server, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    base = tmp_path_factory.mktemp("progress")
    warc = head_warc(SAMPLE_WARCS[0], base / SAMPLE_WARCS[0].name, 40)
    cfg = small_config(base / "data", [str(warc)], train={"steps": STEPS, "log_every": 2})
    path = base / "cfg.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    # the session's test server: no temporary server started per run
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return cfg, str(path), env, fineflow("run", "--config", str(path), env=env)


def test_progress_lines_appear_while_the_stages_run(setup):
    cfg, _, _, (rc, out) = setup
    assert rc == 0, out[-3000:]
    lines = out.splitlines()

    def first(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matches {pattern!r}:\n{out[-3000:]}"
        return hits[0]

    step_1 = first(rf"train: step 1/{STEPS}  loss \d+\.\d{{4}}  lr .* tok/s .*s left")
    last = first(rf"train: step {STEPS}/{STEPS} ")
    train_done = first(r"Task run 'train' - Finished in state")
    assert step_1 < last < train_done  # written while training ran, not after it
    extract = first(r"extract .*\.warc\.gz: \d+ of \d+ pages kept, \d+/\d+ pages in .* pages/s")
    assert extract < first(r"Task run 'dedup' - Finished")
    assert first(r"shard: [\d,]+ train \+ [\d,]+ val tokens, .* MB/s") < train_done
    # the summary names the report, which exists
    said = re.search(r"the run, step by step: file://(\S+)", out)
    assert said, out[-3000:]
    page = Path(said.group(1))
    assert page.is_file() and page.parent.parent.parent == cfg.data_root


def test_fineflow_report_prints_the_configs_report(setup, tmp_path):
    cfg, path, env, (_, out) = setup
    rc, printed = fineflow("report", "--config", path, env=env)
    assert rc == 0 and printed.strip().endswith("report.html"), printed
    assert Path(printed.strip().splitlines()[-1]).as_uri() in out

    other = tmp_path / "other.json"  # a config whose report was never made
    tree = json.loads(Path(path).read_text())
    tree["report"]["pages"] = 1
    other.write_text(json.dumps(tree))
    rc, printed = fineflow("report", "--config", str(other), env=env)
    assert rc == 2 and "no run report for this configuration" in printed, printed
    assert "(report: will run)" in printed


def test_quiet_keeps_the_progress_lines_out_of_the_terminal(setup):
    cfg, path, env, _ = setup
    rc, out = fineflow("run", "--quiet", "--force", "train", "--config", path, env=env)
    assert rc == 0, out[-3000:]
    assert re.search(r"^train\s+ran\s", out, re.M), out[-3000:]  # training did run again
    assert "train: step" not in out and "pages/s" not in out
    assert "the run, step by step: file://" in out  # the summary is not progress
    newest = max((cfg.data_root / "_logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime)
    assert f"train: step {STEPS}/{STEPS}" in newest.read_text()  # the log file has them
