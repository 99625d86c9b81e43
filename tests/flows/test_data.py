"""flows/data.py: the per-WARC stages' workers left to the flow (None) sized to the cores."""

from __future__ import annotations

from fineflow.config import ExtractConfig, FilterConfig, PipelineConfig
from fineflow.flows.data import sized
from fineflow.tasks.sandbox import available_cores


def test_one_warc_gets_every_core_and_a_crawl_one_per_task() -> None:
    cores = available_cores()
    cfg = PipelineConfig(workers=2)

    one = sized(cfg, 1)
    many = sized(cfg, 10_000)

    assert (one.extract.workers, one.filter.workers, one.minhash.workers) == (cores,) * 3
    assert (many.extract.workers, many.filter.workers) == (max(1, cores // 2),) * 2
    assert many.minhash.workers == max(1, cores // 2)
    assert cfg.extract.workers is None  # the caller's config is left as it was


def test_a_count_given_is_kept_and_dask_gets_one() -> None:
    cfg = PipelineConfig(extract=ExtractConfig(workers=0), filter=FilterConfig(workers=5))
    assert (sized(cfg, 1).extract.workers, sized(cfg, 1).filter.workers) == (0, 5)

    dask = sized(PipelineConfig(dask_address="tcp://127.0.0.1:8786"), 1)
    assert (dask.extract.workers, dask.filter.workers, dask.minhash.workers) == (1, 1, 1)
