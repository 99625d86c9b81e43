"""The ablation flow: a corpus per variant, models per seed, one yardstick, one report.

`fineflow ablate SPEC.yaml` (and the `ablate-sample` deployment) run this flow on an
AblationSpec (fineflow/ablation.py):

1. data: each variant's data flow (flows/data.py), one after another, each on the
   process pool; they share the cache, so a stage whose inputs a variant does not
   change (download and extraction, for a filter variant) runs once for all of them;
2. the yardstick: the held-out documents from the base corpus (or eval.texts), the
   leak check of every variant's train split against them (the spec is refused here,
   before any training, if one leaks), the choice questions;
3. tokens: one tokenizer on the base corpus for every variant (`tokenizer: shared`) or
   one each, then each variant's shards;
4. models: every (variant, seed) trained for the spec's token budget and scored, `parallel`
   at a time on a process pool (the cores shared out among them: train.threads);
5. the report (tasks/ablation_report.py), also a Prefect artifact.

Every step is a cached task; a rerun with nothing changed is all Cached.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner
from pydantic import BaseModel, ConfigDict

from fineflow.ablation import BASE, AblationSpec
from fineflow.config import PipelineConfig, TrainConfig
from fineflow.errors import FineflowError
from fineflow.flows.data import CorpusResult, staged
from fineflow.flows.pipeline import run_data
from fineflow.flows.stages import BY_NAME, PER_WARC
from fineflow.flows.summary import StageClock, StageLine
from fineflow.storage.artifacts import Manifest
from fineflow.tasks.ablation_report import publish, report_ablation
from fineflow.tasks.sandbox import available_cores
from fineflow.tasks.yardstick import build_choices, check_leaks, hold_out, score_model


class Job(BaseModel):
    """One model of the ablation: what it trains on and how."""

    model_config = ConfigDict(frozen=True)
    variant: str
    seed: int
    shard: Manifest
    tokenizer: Manifest
    train: TrainConfig


class VariantRun(BaseModel):
    """A variant's corpus, its models and their scores: what the report reads."""

    model_config = ConfigDict(frozen=True)
    name: str
    funnel: dict[str, int]  # documents after each data stage, summed over the WARCs
    corpus: Manifest
    shard: Manifest
    leaks: Manifest
    trains: list[Manifest]
    scores: list[Manifest]


@dataclass(frozen=True)
class AblationResult:
    lines: list[StageLine]  # every stage of every variant, in the order they finished
    runs: list[VariantRun]
    eval_set: Manifest  # the held-out documents every model was scored on
    report: Manifest


class LeakingSpec(FineflowError):
    """A variant would train on held-out documents."""


def funnel(data: CorpusResult) -> dict[str, int]:
    """Responses, then documents kept after each per-WARC stage and dedup."""
    cols = data.columns
    out = {"responses": sum(m.counts.get("total", 0) for m in cols.get("url_filter", []))}
    for stage in PER_WARC[1:-1]:  # url_filter, extract, filter (minhash keeps all)
        out[stage.name] = sum(m.counts.get("kept", 0) for m in cols.get(stage.name, []))
    out["dedup"] = data.corpus.counts.get("kept", 0) if data.corpus else 0
    return out


def refuse_leaks(names: list[str], leaks: list[Manifest]) -> None:
    """Raise LeakingSpec naming every variant whose train split holds held-out documents."""
    bad = [
        f"{name}: {m.counts['same_id']} by id, {m.counts['near_duplicate']} near-duplicate"
        f" ({m.stats['shown']})"
        for name, m in zip(names, leaks, strict=True)
        if m.counts["same_id"] or m.counts["near_duplicate"]
    ]
    if bad:
        raise LeakingSpec(
            "held-out documents in training data: " + "; ".join(bad),
            hint="a variant must keep shard.val_fraction, the MinHash settings and the dedup"
            " scope of base (its near-duplicate clusters decide the split), or give"
            " eval.texts that no variant crawls",
            stage="leaks",
        )


def parallel_models(spec: AblationSpec, jobs: int, device: str) -> int:
    """Models trained at once: spec.parallel, else one on a GPU, one per core on a CPU."""
    if spec.parallel is not None:
        return min(spec.parallel, jobs)
    if device != "cpu":
        from fineflow.training.runtime import pick_device

        if pick_device(device).type != "cpu":
            return 1
    return max(1, min(jobs, available_cores()))


def _with_threads(train: TrainConfig, threads: int | None) -> TrainConfig:
    """`train` with the cores a model gets, unless the spec's base set train.threads."""
    return train if train.threads is not None else train.model_copy(update={"threads": threads})


def model_task_runner(cfg: PipelineConfig, width: int):
    """Where the models train: the configured Dask cluster (as the data flow's per-WARC
    stages), else `width` local processes."""
    if cfg.dask_address:
        from fineflow.flows.pipeline import data_task_runner

        return data_task_runner(cfg)
    return ProcessPoolTaskRunner(width)


@flow(name="fineflow-ablate-models", log_prints=True)
def train_models(
    cfg: PipelineConfig, jobs: list[Job], eval_set: Manifest, choices: Manifest
) -> tuple[list[StageLine], list[Manifest], list[Manifest]]:
    """Train and score every job (on the caller's task runner); (lines, trains, scores)."""
    root, clock = str(cfg.data_root), StageClock()
    train, score = staged(BY_NAME["train"].task, cfg, "train"), staged(score_model, cfg, "train")
    trains = [train.submit(root, j.shard, j.tokenizer, j.train) for j in jobs]
    scores = [
        score.submit(root, t, j.tokenizer, eval_set, choices)
        for t, j in zip(trains, jobs, strict=True)
    ]
    return clock.finish("train", trains), clock.finish("score", scores), clock.lines


@flow(name="fineflow-ablate", log_prints=True)
def ablate(spec: AblationSpec) -> AblationResult:
    """Build each variant's corpus, train `seeds` models on each, score all on one yardstick."""
    configs = spec.configs()
    base = configs[BASE]
    root, names = str(base.data_root), list(configs)
    lines: list[StageLine] = []
    data: dict[str, CorpusResult] = {}
    for name, cfg in configs.items():
        data[name] = run_data(cfg)
        lines += data[name].lines
        if data[name].corpus is None:
            raise FineflowError(f"variant {name}: no corpus was built", stage="dedup")

    clock = StageClock()
    eval_set = clock.finish(
        "eval_set", [staged(hold_out, base, "shard").submit(root, data[BASE].corpus, spec.eval)]
    )[0]
    leaks = clock.finish(
        "leaks",
        [
            staged(check_leaks, base, "shard").submit(
                root, eval_set, data[n].corpus, configs[n].shard, base.minhash
            )
            for n in names
        ],
    )
    refuse_leaks(names, leaks)
    choices = staged(build_choices, base, "evaluate").submit(root, eval_set, spec.choice)

    tokenize = staged(BY_NAME["tokenizer"].task, base, "tokenizer")
    owners = [BASE] if spec.tokenizer == "shared" else names
    toks = clock.finish(
        "tokenizer",
        [tokenize.submit(root, data[n].corpus, configs[n].tokenizer) for n in owners],
    )
    tok_of = {n: toks[0 if spec.tokenizer == "shared" else i] for i, n in enumerate(names)}
    shard = staged(BY_NAME["shard"].task, base, "shard")
    shards = clock.finish(
        "shard", [shard.submit(root, data[n].corpus, tok_of[n], configs[n].shard) for n in names]
    )
    choices_m = clock.finish("choices", [choices])[0]

    models = [(n, seed) for n in names for seed in range(spec.seeds)]
    width = parallel_models(spec, len(models), base.train.device)
    threads = None if base.dask_address else max(1, available_cores() // width)
    jobs = [
        Job(variant=n, seed=seed, shard=shards[names.index(n)], tokenizer=tok_of[n],
            train=_with_threads(spec.seeded(configs[n], seed).train, threads))
        for n, seed in models
    ]  # fmt: skip
    where = base.dask_address or f"{width} at a time, {threads} thread(s) each"
    print(f"ablate: {len(jobs)} models, {where}")
    runner = train_models.with_options(task_runner=model_task_runner(base, width))
    trains, scores, model_lines = runner(base, jobs, eval_set, choices_m)

    runs = [
        VariantRun(
            name=n,
            funnel=funnel(data[n]),
            corpus=data[n].corpus,
            shard=shards[i],
            leaks=leaks[i],
            trains=[t for t, j in zip(trains, jobs, strict=True) if j.variant == n],
            scores=[s for s, j in zip(scores, jobs, strict=True) if j.variant == n],
        )
        for i, n in enumerate(names)
    ]
    done = StageClock()
    report = done.finish(
        "ablation_report",
        [staged(report_ablation, base, "report").submit(root, spec, runs, eval_set, choices_m)],
    )[0]
    publish(base.data_root, report)
    return AblationResult(lines + clock.lines + model_lines + done.lines, runs, eval_set, report)
