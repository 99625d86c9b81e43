"""The model flow: corpus -> tokenizer -> shard -> train -> evaluate.

Runs in-process (one task after another: each needs the previous one's output);
training uses every core, or the GPU, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from fineflow.config import PipelineConfig
from fineflow.flows.data import staged
from fineflow.flows.stages import CORPUS, until
from fineflow.flows.summary import StageClock, StageLine
from fineflow.storage.artifacts import Manifest


@dataclass(frozen=True)
class ModelResult:
    report: Manifest | None  # the evaluate artifact; None when stop_after ends earlier
    outputs: dict[str, Manifest]
    lines: list[StageLine]


@flow(name="fineflow-model", log_prints=True)
def train_on_corpus(cfg: PipelineConfig, corpus: Manifest) -> ModelResult:
    """Train the tokenizer, shard the corpus, train the GPT and evaluate it."""
    # the stage table imports a task when it is used: train's and evaluate's torch is not
    # imported by a data-only run (the scheduled crawl growth, every process-pool worker)
    root = str(cfg.data_root)
    clock = StageClock(cfg.data_root)
    out: dict[str, Manifest] = {"dedup": corpus}
    for stage in until(cfg.stop_after, CORPUS):
        if stage.reads_warcs:  # dedup before, the report after: flows/pipeline.py
            continue
        future = staged(stage.task, cfg, stage.name).submit(root, *stage.args(cfg, out))
        out[stage.name] = clock.finish(stage.name, [future])[0]
    out.pop("dedup")
    return ModelResult(out.get("evaluate"), out, clock.lines)
