"""The Common Crawl source end to end against a local server laid out like the public one.

The WARCs are the first pages of the bundled sample's, served under the public layout
(crawl-data/CC-MAIN-2024-10/warc.paths.gz and the segment paths it lists), with a
404, a slow WARC and a connection cut off halfway.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fineflow.storage.artifacts import verify
from fineflow.storage.fingerprint import file_sha256
from tests.helpers.crawl_server import Crawl, serve
from tests.helpers.e2e import SAMPLE_WARCS, head_warc, small_config

CRAWL = "CC-MAIN-2024-10"


@pytest.fixture(scope="module")
def warcs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("cc-warcs")
    return [head_warc(p, d / p.name, 25) for p in SAMPLE_WARCS[:3]]


def cc_config(root: Path, base_url: str, **over):
    source = {"warcs": [], "common_crawl": {"crawl": CRAWL, "num_warcs": 1, "base_url": base_url}}
    fast = {"retries": 3, "backoff_s": 0.05, "timeout_s": 10}
    return small_config(root, [], sources=source, download=fast, **over)


def lines(result) -> dict[str, tuple[int, int]]:
    return {ln.stage: (ln.ran, ln.cached) for ln in result.lines}


@pytest.mark.slow  # three flow runs, about 2 minutes on the 2-core dev box
def test_schedule_grows_the_corpus_by_the_next_batch_and_trains_on_demand(
    prefect_server, warcs, tmp_path
):
    from fineflow.flows.grow import grow_corpus, train_current_corpus

    crawl = Crawl(CRAWL, warcs)
    with serve(crawl) as base:
        cfg = cc_config(tmp_path, base)
        first = grow_corpus(cfg, batch=2)
        assert lines(first)["download"] == (2, 0)
        assert lines(first)["dedup"] == (1, 0)
        assert "tokenizer" not in lines(first)  # growing never trains

        second = grow_corpus(cfg, batch=2)  # the crawl lists 3: one is left to take
        for stage in ("download", "url_filter", "extract", "minhash"):
            assert lines(second)[stage] == (1, 2), stage
        corpus = second.outputs["dedup"]
        assert corpus.stats["crawls"] == CRAWL  # from the URLs; the names hold only timestamps
        assert corpus.counts["docs"] > first.outputs["dedup"].counts["docs"]
        fetched = [p for p, _, code in crawl.requests if p.endswith(".warc.gz") and code == 200]
        assert len(fetched) == len(set(fetched)) == 3  # nothing downloaded twice

        trained = train_current_corpus(cfg)
    assert lines(trained)["download"] == (0, 3) and lines(trained)["dedup"] == (0, 1)
    assert lines(trained)["train"] == (1, 0)
    assert trained.outputs["dedup"] == corpus  # trained on exactly the grown corpus


def test_a_missing_warc_is_named_with_its_url_and_the_others_go_on(prefect_server, warcs, tmp_path):
    from fineflow.flows.grow import grow_corpus

    crawl = Crawl(CRAWL, warcs, missing={warcs[1].name})
    with serve(crawl) as base:
        result = grow_corpus(cc_config(tmp_path, base), batch=3)
    (failure,) = result.failures
    assert failure.warc == warcs[1].name and failure.stage == "download"
    assert "HTTP 404" in failure.reason
    assert f"{base}{crawl.warc_path(warcs[1].name)}" in failure.reason
    assert result.outputs["dedup"] is not None  # built from the two that were there


def test_slow_server_and_dropped_connection_still_give_the_exact_warcs(
    prefect_server, warcs, tmp_path
):
    from fineflow.flows.grow import grow_corpus

    crawl = Crawl(CRAWL, warcs, slow={warcs[0].name}, drop={warcs[2].name})
    with serve(crawl) as base:
        result = grow_corpus(cc_config(tmp_path, base, stop_after="download"), batch=3)
    dl = {m.warc: m for ln in result.lines if ln.stage == "download" for m in ln.manifests}
    assert sorted(dl) == sorted(p.name for p in warcs)
    for p in warcs:
        assert verify(tmp_path, dl[p.name]) is None
        assert file_sha256(dl[p.name].path(tmp_path, p.name)) == file_sha256(p)
    resumed = [r for r in crawl.requests if r[0].endswith(warcs[2].name) and r[1]]
    assert resumed and resumed[0][2] == 206  # picked up where the cut left off
