"""`fineflow status`: what a run of a config would take from the cache, without running it.

Each stage's cache key is computed the way `storage.cache.StageCache` computes it
(task name + STAGE_VERSION + task source + the task's inputs), walking the DAG in
run order: a stage's inputs are the manifests its upstream stages would hand it,
read from their cache records. So the answer is exact while every upstream stage is
cached; below the first stage that will run, its inputs are not known until it runs
(its output may come out the same, and then downstream stays cached), and the stage
says `unknown`. A Common Crawl slice is known once its listing is in the cache.

This mirrors the wiring of flows/data.py and flows/train.py (which arguments each
task gets); tests/test_cli.py holds the two together (a finished run reads all cached).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineflow.config import PipelineConfig
from fineflow.storage import layout
from fineflow.storage.artifacts import manifests, verify
from fineflow.storage.cache import task_cache_key
from fineflow.storage.remote import Remote

CACHED, STALE, RUNS, FORCED, UNKNOWN = "cached", "stale", "will run", "forced", "unknown"
RESTORES = "cached remotely"  # remote_root holds it: reused; fetched if a running stage reads it


@dataclass(frozen=True)
class StageStatus:
    stage: str
    states: tuple[str, ...]  # one per task run (per WARC for per-WARC stages)
    detail: str = ""
    output: Any = None  # a corpus stage's manifest, when its cache holds one

    @property
    def summary(self) -> str:
        if not self.states:
            return UNKNOWN
        counts = {s: self.states.count(s) for s in dict.fromkeys(self.states)}
        if len(counts) == 1:
            return self.states[0]
        return ", ".join(f"{s} {n}/{len(self.states)}" for s, n in counts.items())

    def __str__(self) -> str:
        return f"{self.stage:<11} {self.summary:<22} {self.detail}"


def cache_key(task: Any, root: str, *args: Any, remote: str | None = None) -> str:
    """The key StageCache gives `task` called with (root, *args)."""
    inputs = dict(inspect.signature(task.fn).bind(root, *args).arguments)
    return task_cache_key(task, inputs, remote)


def lookup(task: Any, cfg: PipelineConfig, stage: str, *args: Any) -> tuple[str, Any]:
    """(state, cached result or None) of one task run with these inputs."""
    from prefect._internal.result_records import ResultRecord

    root = cfg.data_root
    if stage in cfg.force:
        return FORCED, None
    key = cache_key(task, str(root), *args, remote=cfg.remote_root)
    record = layout.results_dir(root) / key
    remote = Remote(cfg.remote_root) if cfg.remote_root else None
    local = record.is_file()
    body = record.read_bytes() if local else remote.record(key) if remote else None
    if body is None:
        return RUNS, None
    try:
        result = ResultRecord.deserialize(body).result
    except Exception:
        return (STALE, None) if local else (RUNS, None)
    if remote is not None:  # as Remote.restore decides
        held = remote.held(root, result)
        if held is None:
            return (STALE, None) if local else (RUNS, None)
        return (CACHED, result) if local and not held else (RESTORES, result)
    if any(verify(root, m) for m in manifests(result)):
        return STALE, None
    return CACHED, result


def pipeline_status(cfg: PipelineConfig) -> list[StageStatus]:
    """Per stage, in run order: cached / stale / will run / forced / unknown."""
    from fineflow.flows.data import describe_sources
    from fineflow.tasks.dedup import dedup_docs
    from fineflow.tasks.download import download_warc, list_common_crawl
    from fineflow.tasks.evaluate import evaluate_model
    from fineflow.tasks.extract import extract_text
    from fineflow.tasks.filter_docs import filter_documents
    from fineflow.tasks.minhash import minhash_docs
    from fineflow.tasks.shard import shard_tokens
    from fineflow.tasks.tokenizer import train_tokenizer
    from fineflow.tasks.train import train_model
    from fineflow.tasks.url_filter import filter_urls

    out: list[StageStatus] = []
    uris = list(cfg.sources.warcs)
    if cfg.sources.common_crawl is not None:
        state, urls = lookup(list_common_crawl, cfg, "download", cfg.sources.common_crawl)
        if urls is None:
            return [StageStatus("download", (), "the crawl's WARC list is not cached yet")]
        uris += urls

    per_warc = (
        ("download", download_warc, lambda m, s: (s, cfg.download)),
        ("url_filter", filter_urls, lambda m, s: (m["download"], cfg.url_filter)),
        ("extract", extract_text, lambda m, s: (m["download"], m["url_filter"], cfg.extract)),
        ("filter", filter_documents, lambda m, s: (m["extract"], cfg.filter)),
        ("minhash", minhash_docs, lambda m, s: (m["filter"], cfg.minhash)),
    )
    chains: list[dict[str, Any]] = [{} for _ in uris]
    sources = describe_sources(uris)
    for stage, task, args in per_warc:
        states = []
        for chain, source in zip(chains, sources, strict=True):
            if any(v is None for v in chain.values()):
                states.append(UNKNOWN)
                chain[stage] = None
                continue
            state, chain[stage] = lookup(task, cfg, stage, *args(chain, source))
            states.append(state)
        out.append(StageStatus(stage, tuple(states), f"{len(sources)} WARCs"))

    if any(v is None for c in chains for v in c.values()):
        corpus = None
        out.append(StageStatus("dedup", (UNKNOWN,), "a per-WARC stage will run first"))
    else:
        col = {s: [c[s] for c in chains] for s in chains[0]} if chains else {}
        funnel = col["url_filter"] + col["extract"] + col["filter"]
        state, corpus = lookup(
            dedup_docs, cfg, "dedup", col["filter"], col["minhash"], cfg.dedup, funnel, sources
        )
        out.append(StageStatus("dedup", (state,), corpus.dir if corpus else "", corpus))

    m: dict[str, Any] = {"corpus": corpus}
    corpus_stages = (
        ("tokenizer", train_tokenizer, lambda: (m["corpus"], cfg.tokenizer)),
        ("shard", shard_tokens, lambda: (m["corpus"], m["tokenizer"], cfg.shard)),
        ("train", train_model, lambda: (m["shard"], m["tokenizer"], cfg.train)),
        (
            "evaluate",
            evaluate_model,
            lambda: (m["train"], m["shard"], m["tokenizer"], cfg.evaluate),
        ),
    )
    for stage, task, args in corpus_stages:
        if any(v is None for v in m.values()):
            m[stage] = None
            out.append(StageStatus(stage, (UNKNOWN,), "an upstream stage will run first"))
            continue
        state, m[stage] = lookup(task, cfg, stage, *args())
        out.append(StageStatus(stage, (state,), m[stage].dir if m[stage] else "", m[stage]))
    if cfg.stop_after:
        from fineflow.config import STAGES

        last = STAGES.index(cfg.stop_after)
        out = [s for s in out if STAGES.index(s.stage) <= last]
    return out


def last_failures(cfg: PipelineConfig, sources: list[Any]) -> list[dict[str, str]]:
    """The failure records (storage.failures) of this config's WARCs: why each failed last."""
    from fineflow.storage import failures
    from fineflow.tasks.download import artifact_key

    found = (failures.load(cfg.data_root, artifact_key(s)) for s in sources)
    return [f for f in found if f is not None]


def describe(cfg: PipelineConfig) -> str:
    from fineflow.flows.data import describe_sources

    lines = [f"fineflow status of {Path(cfg.data_root)} (nothing was run)"]
    lines.append(f"{'stage':<11} {'status':<22} detail")
    lines += [str(s) for s in pipeline_status(cfg)]
    uris = list(cfg.sources.warcs)  # a Common Crawl slice's WARCs: as its listing is cached
    if failed := last_failures(cfg, describe_sources(uris)):
        lines.append(f"{len(failed)} WARC(s) failed last time and will be tried again:")
        lines += [f"  {f['warc']} ({f['stage']}): {f['reason']}" for f in failed]
    lines.append(
        "cached: reused as is; cached remotely: reused from remote_root (fetched only if a "
        "stage that runs reads it); "
        "stale: a cache record whose files changed, reruns; "
        "unknown: depends on the output of a stage that will run"
    )
    return "\n".join(lines)
