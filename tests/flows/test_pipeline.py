"""End to end under Prefect's test server: the caching promises that docs/TESTS.md lists.

The corpus is the first pages of the bundled sample's WARCs (real records, copied
byte for byte), so each flow run takes seconds, not minutes.
"""

from __future__ import annotations

import pytest

from fineflow.config import STAGES
from tests.helpers.e2e import small_config


def statuses(result) -> dict[str, str]:
    return {line.stage: line.status for line in result.lines}


ALL = list(STAGES)


@pytest.fixture(scope="module")
def first_run(prefect_server, warcs, tmp_path_factory):
    from fineflow.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("data")
    cfg = small_config(root, warcs[:2])
    return root, cfg, pipeline(cfg)


def test_first_run_runs_every_stage_and_keeps_results_in_data_root(first_run):
    root, _, result = first_run
    assert statuses(result) == {s: "ran" for s in ALL}
    assert any((root / "_prefect" / "results").iterdir())
    report = result.outputs["evaluate"].path(root, "report.md").read_text()
    assert "bits per byte" in report.lower()


def test_second_run_is_all_cached_with_identical_manifests(first_run):
    from fineflow.flows.pipeline import pipeline

    root, cfg, result = first_run
    again = pipeline(cfg)
    assert statuses(again) == {s: "cached" for s in ALL}
    assert again.outputs == result.outputs


def test_a_rerun_with_every_per_warc_task_cached_starts_no_process_pool(
    first_run, warcs, monkeypatch
):
    """Each per-WARC task run still comes back Cached (the UI, the summary), but on threads
    of this process: a process pool would only start, import and find the cache records.
    Anything that will run (a new WARC, a forced stage, a damaged output) gets the pool."""
    import fineflow.flows.pipeline as flows
    from fineflow.flows.data import all_cached

    root, cfg, result = first_run
    runners: list[str] = []
    chosen = flows.data_task_runner

    def spy(cfg, cached=False):
        runner = chosen(cfg, cached)
        runners.append(type(runner).__name__)
        return runner

    monkeypatch.setattr(flows, "data_task_runner", spy)
    again = flows.pipeline(cfg)
    assert statuses(again) == {s: "cached" for s in ALL}
    assert again.outputs == result.outputs
    assert runners == ["ThreadPoolTaskRunner"]

    assert not all_cached(small_config(root, warcs[:3]))  # a new WARC
    assert not all_cached(cfg.model_copy(update={"force": ["minhash"]}))
    assert all_cached(cfg.model_copy(update={"force": ["dedup"]}))  # not a per-WARC stage
    extract = result.lines[[line.stage for line in result.lines].index("extract")]
    docs = extract.manifests[0].path(root, "docs.parquet")
    body = docs.read_bytes()
    docs.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # damaged: its record is stale
    try:
        assert not all_cached(cfg)
    finally:
        docs.write_bytes(body)
    assert all_cached(cfg)


def test_vocab_change_reruns_only_tokenizer_and_downstream(first_run, warcs):
    from fineflow.flows.pipeline import pipeline

    root, _, _ = first_run
    result = pipeline(small_config(root, warcs[:2], tokenizer={"vocab_size": 600}))
    s = statuses(result)
    assert {k: s[k] for k in ALL[:6]} == {k: "cached" for k in ALL[:6]}
    assert {k: s[k] for k in ALL[6:]} == {k: "ran" for k in ALL[6:]}


def test_new_warc_runs_only_its_own_per_warc_stages(first_run, warcs):
    from fineflow.flows.pipeline import pipeline

    root, _, _ = first_run
    result = pipeline(small_config(root, warcs[:3], stop_after="dedup"))
    lines = {line.stage: line for line in result.lines}
    for stage in ALL[:5]:
        assert (lines[stage].ran, lines[stage].cached) == (1, 2), stage
    assert lines["dedup"].status == "ran"
    assert "tokenizer" not in lines  # stop_after ends the run after dedup


def test_deleted_output_reruns_that_stage_instead_of_trusting_it(first_run):
    from fineflow.flows.pipeline import pipeline

    root, cfg, result = first_run
    result.outputs["tokenizer"].path(root, "tokenizer.json").unlink()
    again = pipeline(cfg)
    s = statuses(again)
    assert s["tokenizer"] == "ran"
    assert again.outputs["tokenizer"] == result.outputs["tokenizer"]  # same bytes rebuilt
    assert s["shard"] == "cached"  # its input did not actually change


def test_force_reruns_a_stage_and_only_what_actually_changes(first_run):
    from fineflow.flows.pipeline import pipeline

    root, cfg, result = first_run
    forced = cfg.model_copy(update={"force": ["extract"], "stop_after": "dedup"})
    s = statuses(pipeline(forced))
    assert s["extract"] == "ran"
    assert s["download"] == s["url_filter"] == s["minhash"] == s["dedup"] == "cached"
    assert s["filter"] == "cached"  # extract's output did not change


def test_stop_after_stops_the_flow(first_run, warcs):
    from fineflow.flows.pipeline import pipeline

    root, cfg, _ = first_run
    result = pipeline(cfg.model_copy(update={"stop_after": "url_filter"}))
    assert [line.stage for line in result.lines] == ["download", "url_filter"]


def test_run_summary_carries_the_funnel_from_the_catalog(first_run):
    from fineflow.flows.summary import summary_markdown

    root, _, result = first_run
    md = summary_markdown(result.lines, result.outputs, root)
    assert "## Funnel" in md
    funnel = md.split("## Funnel", 1)[1].split("## Outputs", 1)[0]
    assert "**total**" in funnel
    warcs = [m.warc for ln in result.lines if ln.stage == "download" for m in ln.manifests]
    assert len(warcs) == 2 and all(w in funnel for w in warcs)
