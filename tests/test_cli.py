"""`fineflow status` reads the cache exactly as a run would use it, and runs nothing."""

from __future__ import annotations

import json

import pytest
from e2e import small_config

from fineflow.cli import main
from fineflow.config import STAGES
from fineflow.status import pipeline_status


def summary(cfg) -> dict[str, str]:
    return {s.stage: s.summary for s in pipeline_status(cfg)}


@pytest.fixture(scope="module")
def ran(prefect_server, warcs, tmp_path_factory):
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("data")
    cfg = small_config(root, warcs[:2])
    before = summary(cfg)
    result = pipeline(cfg)
    return cfg, before, result


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
    from e2e import SAMPLE_WARCS, head_warc

    d = tmp_path_factory.mktemp("warcs")
    return [str(head_warc(p, d / p.name, 30)) for p in SAMPLE_WARCS[:2]]


def test_before_any_run_only_the_first_stage_is_known(ran):
    _, before, _ = ran
    assert before["download"] == "will run"
    assert all(before[s] == "unknown" for s in STAGES[1:])


def test_after_a_run_every_stage_reads_cached_and_nothing_runs(ran):
    cfg, _, result = ran
    assert summary(cfg) == {s: "cached" for s in STAGES}
    assert {ln.stage for ln in result.lines} == set(STAGES)  # the wiring matches the flow


def test_a_changed_parameter_or_file_or_force_shows_as_such(ran):
    cfg, _, result = ran
    s = summary(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 13})}))
    assert s["shard"] == "cached" and s["train"] == "will run" and s["evaluate"] == "unknown"
    assert summary(cfg.model_copy(update={"force": ["tokenizer"]}))["tokenizer"] == "forced"

    shard = result.outputs["shard"]
    victim = shard.paths(cfg.data_root, ".bin")[0]
    victim.write_bytes(victim.read_bytes()[:-4] + b"\0\0\0\1")  # same size, other content
    s = summary(cfg)
    assert s["shard"] == "stale" and s["tokenizer"] == "cached" and s["train"] == "unknown"


def test_cli_status_prints_a_line_per_stage(ran, tmp_path, capsys):
    cfg, _, _ = ran
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["status", "--config", str(path), "--stop-after", "dedup"]) == 0
    out = capsys.readouterr().out
    assert "nothing was run" in out
    assert [ln.split()[0] for ln in out.splitlines()[2:8]] == list(STAGES[:6])
