"""The model flow: corpus -> tokenizer -> shard -> train -> evaluate.

Runs in-process (one task after another: each needs the previous one's output);
training uses every core, or the GPU, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from fineflow.config import PipelineConfig
from fineflow.flows.data import staged
from fineflow.flows.summary import StageClock, StageLine
from fineflow.storage.artifacts import Manifest
from fineflow.tasks.shard import shard_tokens
from fineflow.tasks.tokenizer import train_tokenizer


@dataclass(frozen=True)
class ModelResult:
    report: Manifest | None  # the evaluate artifact; None when stop_after ends earlier
    outputs: dict[str, Manifest]
    lines: list[StageLine]


@flow(name="fineflow-model", log_prints=True)
def train_on_corpus(cfg: PipelineConfig, corpus: Manifest) -> ModelResult:
    """Train the tokenizer, shard the corpus, train the GPT and evaluate it."""
    # torch is imported here, not with the module: a data-only run (the scheduled crawl
    # growth, every process-pool worker) never pays for it
    from fineflow.tasks.evaluate import evaluate_model
    from fineflow.tasks.train import train_model

    root = str(cfg.data_root)
    clock = StageClock()
    out: dict[str, Manifest] = {}
    steps = (
        ("tokenizer", train_tokenizer, lambda: (corpus, cfg.tokenizer)),
        ("shard", shard_tokens, lambda: (corpus, out["tokenizer"], cfg.shard)),
        ("train", train_model, lambda: (out["shard"], out["tokenizer"], cfg.train)),
        (
            "evaluate",
            evaluate_model,
            lambda: (out["train"], out["shard"], out["tokenizer"], cfg.evaluate),
        ),
    )
    for stage, task, args in steps:
        future = staged(task, cfg, stage).submit(root, *args())
        out[stage] = clock.finish(stage, [future])[0]
        if cfg.stop_after == stage:
            break
    return ModelResult(out.get("evaluate"), out, clock.lines)
