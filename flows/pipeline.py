"""The whole story as one flow: crawl -> clean corpus -> tokens -> GPT -> samples.

`fineflow run` (and `make run`) call `run_pipeline`, which runs this flow and prints
one line per stage and where the outputs are.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner

from fineflow.config import PipelineConfig
from flows.data import build_corpus
from flows.summary import StageLine
from flows.train import train_on_corpus
from storage.artifacts import Manifest


@dataclass(frozen=True)
class PipelineResult:
    lines: list[StageLine]
    outputs: dict[str, Manifest]


@flow(name="fineflow", log_prints=True)
def pipeline(cfg: PipelineConfig | None = None) -> PipelineResult:
    """Build the corpus from the configured WARCs, then train and evaluate a GPT on it."""
    cfg = cfg or PipelineConfig()
    data_flow = build_corpus.with_options(task_runner=ProcessPoolTaskRunner(cfg.workers))
    data = data_flow(cfg)
    if data.corpus is None or cfg.stop_after == "dedup":
        return PipelineResult(data.lines, {"dedup": data.corpus} if data.corpus else {})
    model = train_on_corpus(cfg, data.corpus)
    return PipelineResult(data.lines + model.lines, {"dedup": data.corpus, **model.outputs})
