"""The data flow: sources -> download -> url_filter -> extract -> filter -> minhash -> dedup.

Per-WARC stages are mapped, one task run per WARC, on a process pool; dedup takes
the list of per-WARC manifests and writes the corpus DuckDB file.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, unmapped

from fineflow.config import PipelineConfig, StageName
from flows.summary import StageClock, StageLine
from storage.artifacts import Manifest
from storage.cache import bind
from tasks.dedup import dedup_docs
from tasks.download import describe_sources, download_warc, list_common_crawl
from tasks.extract import extract_text
from tasks.filter_docs import filter_documents
from tasks.minhash import minhash_docs
from tasks.url_filter import filter_urls


@dataclass(frozen=True)
class CorpusResult:
    corpus: Manifest | None  # None when stop_after ends the run before dedup
    lines: list[StageLine]


def staged(task, cfg: PipelineConfig, stage: StageName):
    """`task` with the project's cache policy, refreshed if the user forced `stage`."""
    return bind(task, cfg.data_root, refresh=stage in cfg.force, remote=cfg.remote_root)


@flow(name="fineflow-data", log_prints=True)
def build_corpus(cfg: PipelineConfig) -> CorpusResult:
    """Download, filter, extract and deduplicate the configured WARCs."""
    root = str(cfg.data_root)
    clock = StageClock()
    uris = list(cfg.sources.warcs)
    if cfg.sources.common_crawl is not None:
        listing = staged(list_common_crawl, cfg, "download").submit(root, cfg.sources.common_crawl)
        uris += clock.finish("resolve_crawl", [listing])[0]
    sources = describe_sources(uris)

    # Submit the whole per-WARC chain at once so WARC 2 downloads while WARC 1 extracts.
    stop = cfg.stop_after
    chain = {
        "download": staged(download_warc, cfg, "download").map(
            unmapped(root), sources, unmapped(cfg.download)
        )
    }
    if stop != "download":
        chain["url_filter"] = staged(filter_urls, cfg, "url_filter").map(
            unmapped(root), chain["download"], unmapped(cfg.url_filter)
        )
    if stop not in ("download", "url_filter"):
        chain["extract"] = staged(extract_text, cfg, "extract").map(
            unmapped(root), chain["download"], chain["url_filter"], unmapped(cfg.extract)
        )
    if stop not in ("download", "url_filter", "extract"):
        chain["filter"] = staged(filter_documents, cfg, "filter").map(
            unmapped(root), chain["extract"], unmapped(cfg.filter)
        )
    if stop not in ("download", "url_filter", "extract", "filter"):
        chain["minhash"] = staged(minhash_docs, cfg, "minhash").map(
            unmapped(root), chain["filter"], unmapped(cfg.minhash)
        )
    done = {stage: clock.finish(stage, list(futures)) for stage, futures in chain.items()}
    if "minhash" not in done or stop == "minhash":
        return CorpusResult(None, clock.lines)

    funnel = done["url_filter"] + done["extract"] + done["filter"]
    dedup = staged(dedup_docs, cfg, "dedup").submit(
        root, done["filter"], done["minhash"], cfg.dedup, funnel, sources
    )
    corpus = clock.finish("dedup", [dedup])[0]
    return CorpusResult(corpus, clock.lines)
