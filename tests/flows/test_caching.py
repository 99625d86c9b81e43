"""Exact caching, end to end: a moved root stays cached, an unchanged output stops the rerun
(early cutoff), settings that cannot change an output rerun nothing and rebuild the same
bytes, and every stage that runs says why."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from fineflow.config import STAGES, PipelineConfig
from fineflow.storage.fingerprint import affects_output
from tests.helpers.e2e import leaf_fields, small_config, value_at, with_value

# Files whose bytes differ between identical runs; their manifests carry a content
# fingerprint instead (a DuckDB file's header, training's timings).
# report.html shows training's tokens/s and seconds (report.json, its numbers, is stable)
NOT_BYTE_STABLE = {"corpus.duckdb", "metrics.duckdb", "report.html"}
# Runtime settings this test cannot change here, and where they are held instead.
ELSEWHERE = {
    "dask_address": "needs a Dask cluster: tests/flows/test_dask.py",
    "sources.min_good_warcs": "fails a run with fewer good WARCs: tests/flows/test_failures.py",
}


def ran(result) -> set[str]:
    return {line.stage for line in result.lines if line.ran}


def manifests(result) -> dict[tuple[str, str | None], Any]:
    return {(ln.stage, m.warc): m for ln in result.lines for m in ln.manifests}


@pytest.fixture(scope="module")
def base(prefect_server, warcs, tmp_path_factory):
    from fineflow.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("cache-base")
    cfg = small_config(root, warcs[:1])
    return root, cfg, pipeline(cfg)


def runtime_fields() -> list[str]:
    """Every config leaf declared unable to change an output."""
    return [p for p, f in leaf_fields(PipelineConfig()) if not affects_output(f)]


def another_value(path: str, current: Any) -> Any:
    """A valid value other than `current` for a runtime field."""
    if path.endswith("memory_limit"):
        return "1GB"
    if path.endswith("on_error"):
        return "fail" if current == "skip" else "skip"
    if isinstance(current, bool):
        return not current
    if isinstance(current, float):
        return current * 2
    if isinstance(current, int) and not isinstance(current, bool):
        return current + 1 if current > 1 else current + 2
    if current is None:
        return 1  # threads=None (all cores) -> one thread
    raise AssertionError(f"no other value known for runtime field {path} = {current!r}")


def changed_runtime(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` with every runtime field this test can change set to another value."""
    for path in runtime_fields():
        if path not in ELSEWHERE:
            cfg = with_value(cfg, path, another_value(path, value_at(cfg, path)))
    return cfg


def test_the_schema_declares_the_settings_that_cannot_change_an_output():
    declared = set(runtime_fields())
    assert {
        "workers",
        "extract.workers",
        "dedup.threads",
        "dedup.memory_limit",
        "train.threads",
        "train.checkpoint_every",
        "download.retries",
    } <= declared
    assert not declared & {"extract.min_chars", "train.steps", "tokenizer.vocab_size"}


def test_a_data_root_copied_elsewhere_is_all_cached(base, tmp_path):
    from fineflow.flows.pipeline import pipeline

    root, cfg, result = base
    assert ran(result) == set(STAGES)
    copy = tmp_path / "moved" / "data"
    shutil.copytree(root, copy)
    again = pipeline(cfg.model_copy(update={"data_root": copy}))
    assert ran(again) == set()
    assert manifests(again) == manifests(result)


def test_a_stage_whose_output_comes_out_the_same_stops_the_rerun_there(base, warcs):
    from fineflow.flows.pipeline import pipeline

    root, _, result = base
    soft = pipeline(small_config(root, warcs[:1], url_filter={"soft_word_threshold": 1}))
    assert ran(soft) == {"url_filter"}  # same records kept: extraction and the rest cached
    line = next(ln for ln in soft.lines if ln.stage == "url_filter")
    assert line.why == "url_filter.soft_word_threshold 2 -> 1"
    scope = pipeline(small_config(root, warcs[:1], dedup={"scope": "global"}))
    assert ran(scope) == {"dedup"}  # one crawl: the same corpus, so no retraining
    assert (
        manifests(scope)[("dedup", None)].fingerprint
        == manifests(result)[("dedup", None)].fingerprint
    )


def test_a_changed_setting_reruns_its_stage_and_says_so(base, warcs):
    from fineflow.flows.pipeline import pipeline

    root, _, _ = base
    result = pipeline(small_config(root, warcs[:1], evaluate={"max_new_tokens": 9}))
    lines = {ln.stage: ln for ln in result.lines}
    assert "evaluate" in ran(result) and lines["evaluate"].why == "evaluate.max_new_tokens 8 -> 9"
    assert not ran(result) & {"download", "extract", "dedup", "tokenizer", "shard", "train"}


def test_runtime_settings_rerun_nothing_and_forced_stages_rebuild_the_same_bytes(base):
    from fineflow.flows.pipeline import pipeline

    root, cfg, result = base
    tuned = changed_runtime(cfg)
    assert ran(pipeline(tuned)) == set()
    forced = pipeline(tuned.model_copy(update={"force": list(STAGES)}))
    assert ran(forced) == set(STAGES)
    before, after = manifests(result), manifests(forced)
    assert before.keys() == after.keys()
    for where, m in before.items():
        again = after[where]
        assert (again.fingerprint, again.counts) == (m.fingerprint, m.counts), where
        stable = {f.path: f.sha256 for f in m.files if f.path not in NOT_BYTE_STABLE}
        assert {f.path: f.sha256 for f in again.files if f.path in stable} == stable, where
