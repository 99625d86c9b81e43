"""Grow a Common Crawl corpus batch by batch, and train on whatever has been grown so far.

A crawl's `warc.paths.gz` lists its WARCs in a fixed order, and a data root's corpus of
that crawl is a prefix of the list (from `common_crawl.offset`). `grow_corpus` reads
how long a prefix is already in the artifact store (a WARC counts once its download
artifact is committed; the download key is the WARC's URL), then runs the data flow
over that prefix plus the next `batch` WARCs: the prefix's per-WARC stages come back
Cached, only the new WARCs are fetched and processed, and dedup rebuilds the corpus
catalog over all of them, so new documents are deduplicated against every kept one.

`train_current_corpus` is the same with a batch of 0 (the data flow all Cached, which
yields the current corpus manifest), then the model flow: training on demand.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from fineflow.config import STAGES, CommonCrawlConfig, DownloadConfig, PipelineConfig
from fineflow.flows.pipeline import PipelineResult, run_data, run_model
from fineflow.storage.artifacts import MANIFEST_NAME, load_manifest
from fineflow.storage.remote import Remote
from fineflow.tasks import download

log = logging.getLogger("fineflow.grow")


def taken_prefix(root: Path, urls: list[str], remote: str | None = None) -> int:
    """How many of `urls`, from the first, already have a download artifact under `root`
    (or, with a `remote` data root, on the remote: a fresh machine's working copy is empty)."""
    mirror = Remote(remote) if remote else None
    n = 0
    for source in download.describe_sources(urls):
        key = download.artifact_key(source)
        if load_manifest(root, "download", key) is None and not (
            mirror and mirror.has(f"download/{key}/{MANIFEST_NAME}")
        ):
            break
        n += 1
    return n


def _slice(cc: CommonCrawlConfig, n: int) -> CommonCrawlConfig:
    return CommonCrawlConfig.model_validate({**cc.model_dump(), "num_warcs": n})


def _listing(cc: CommonCrawlConfig, n: int, dl: DownloadConfig) -> tuple[list[str], bool]:
    """Up to `n` WARC URLs from the crawl's offset, and whether the list ran out first."""
    try:
        return download.resolve_common_crawl(_slice(cc, n), dl), False
    except ValueError:  # the crawl lists fewer: find how many by halving (log2(n) reads)
        lo, hi, urls = 0, n, []
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                urls, lo = download.resolve_common_crawl(_slice(cc, mid), dl), mid
            except ValueError:
                hi = mid
        return urls, True


def next_slice(
    root: Path, cc: CommonCrawlConfig, batch: int, dl: DownloadConfig, remote: str | None = None
) -> CommonCrawlConfig:
    """The slice that is everything already taken plus the next `batch` WARCs."""
    n = max(batch, 8)
    while True:
        urls, ended = _listing(cc, n, dl)
        have = taken_prefix(root, urls, remote)
        if have + batch <= len(urls) or ended:
            break
        n = max(2 * n, have + batch)
    take = min(have + batch, len(urls))
    if take == 0:
        raise ValueError(
            f"no WARC of {cc.crawl} is in {root} yet and the batch is 0: grow the corpus first"
        )
    if have + batch > len(urls):
        log.warning("%s: the crawl lists %d WARCs; all of them are taken", cc.crawl, len(urls))
    log.info("%s: %d WARC(s) in the corpus, taking %d more", cc.crawl, have, take - have)
    return _slice(cc, take)


@task(name="plan_growth", task_run_name="plan_growth[{cc.crawl}+{batch}]", cache_policy=NO_CACHE)
def plan_growth(
    root: str, cc: CommonCrawlConfig, batch: int, dl: DownloadConfig, remote: str | None = None
) -> CommonCrawlConfig:
    """The Common Crawl slice of this run: the WARCs already taken plus `batch` new ones."""
    return next_slice(Path(root), cc, batch, dl, remote)


def _grown(cfg: PipelineConfig, batch: int) -> PipelineConfig:
    cc = cfg.sources.common_crawl
    if cc is None:
        return cfg  # explicit WARCs only: the corpus is what `sources.warcs` lists
    grown = plan_growth(str(cfg.data_root), cc, batch, cfg.download, cfg.remote_root)
    return cfg.model_copy(
        update={"sources": cfg.sources.model_copy(update={"common_crawl": grown})}
    )


@flow(name="fineflow-grow", log_prints=True)
def grow_corpus(cfg: PipelineConfig, batch: int = 1) -> PipelineResult:
    """Add the next `batch` WARCs of the crawl to the corpus; never trains."""
    if cfg.sources.common_crawl is None:
        raise ValueError("grow_corpus needs sources.common_crawl (a crawl to take WARCs from)")
    cfg = _grown(cfg, batch)
    if cfg.stop_after is None or STAGES.index(cfg.stop_after) > STAGES.index("dedup"):
        cfg = cfg.model_copy(update={"stop_after": "dedup"})
    return run_model(cfg, run_data(cfg))


@flow(name="fineflow-train-current", log_prints=True)
def train_current_corpus(cfg: PipelineConfig) -> PipelineResult:
    """Train and evaluate on the corpus grown so far (the data flow comes back Cached)."""
    cfg = _grown(cfg, 0)
    return run_model(cfg, run_data(cfg))
