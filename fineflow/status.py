"""`fineflow status`: what a run of a config would take from the cache, without running it.

Each stage's cache key is computed the way `storage.cache.StageCache` computes it
(task name + the named key parts of storage/why.py), walking the DAG in
run order: a stage's inputs are the manifests its upstream stages would hand it,
read from their cache records. So the answer is exact while every upstream stage is
cached; below the first stage that will run, its inputs are not known until it runs
(its output may come out the same, and then downstream stays cached), and the stage
says `unknown`. A Common Crawl slice is known once its listing is in the cache.
With `--why`, each stage that would run says why: what changed since its last run here
(a setting old -> new, an upstream output, a definition of the code it runs), forced,
or a damaged output.

The wiring is the flows' own: flows/stages.py says which arguments each task gets, for
the flows and for this; tests/cli/test_cli.py holds the two together (a finished run reads
all cached).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineflow.config import PipelineConfig
from fineflow.storage import cache, why
from fineflow.storage.cache import CACHED, FORCED, RESTORES, RUNS, STALE, UNKNOWN

# the states, defined with the lookup (storage.cache); fineflow.sample and tests read them here
__all__ = ["CACHED", "FORCED", "RESTORES", "RUNS", "STALE", "UNKNOWN", "describe", "lookup"]


@dataclass(frozen=True)
class StageStatus:
    stage: str
    states: tuple[str, ...]  # one per task run (per WARC for per-WARC stages)
    detail: str = ""
    output: Any = None  # a corpus stage's manifest, when its cache holds one
    why: str = ""  # why the runs that will run do (storage/why.py)

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


def why_runs(task: Any, cfg: PipelineConfig, state: str, *args: Any) -> str:
    """Why a task run in `state` runs: forced, damaged, or what changed since its last run."""
    if state == FORCED:
        return "forced (--force / rerun)"
    if state == STALE:
        return "cached output not intact (fineflow verify names the files)"
    if state != RUNS:
        return ""
    inputs = dict(inspect.signature(task.fn).bind(str(cfg.data_root), *args).arguments)
    parts = why.key_parts(task.fn, inputs, cfg.remote_root)
    record = why.read(cfg.data_root, task.name, why.slot(inputs))
    return why.explain(task.name, record.get("parts"), parts)


def lookup(task: Any, cfg: PipelineConfig, stage: str, *args: Any) -> tuple[str, Any]:
    """(state, cached result or None) of one task run with these inputs."""
    return cache.lookup(task, cfg.data_root, args, cfg.remote_root, stage in cfg.force)


def pipeline_status(cfg: PipelineConfig) -> list[StageStatus]:
    """Per stage, in run order: cached / stale / will run / forced / unknown."""
    from fineflow.flows.data import describe_sources, lookups
    from fineflow.flows.stages import BY_NAME, CORPUS, until
    from fineflow.tasks.download import list_common_crawl

    out: list[StageStatus] = []
    uris = list(cfg.sources.warcs)
    if cfg.sources.common_crawl is not None:
        state, urls = lookup(list_common_crawl, cfg, "download", cfg.sources.common_crawl)
        if urls is None:
            return [StageStatus("download", (), "the crawl's WARC list is not cached yet")]
        uris += urls

    sources = describe_sources(uris)
    columns: dict[str, list[Any]] = {}
    for stage, looked in lookups(cfg, sources):
        states = tuple(state for state, _, _ in looked)
        columns[stage.name] = [got for _, got, _ in looked]
        reasons = [why_runs(stage.task, cfg, s, *args) for s, _, args in looked if s != UNKNOWN]
        said = why.summarize([r for r in reasons if r])
        out.append(StageStatus(stage.name, states, f"{len(sources)} WARCs", why=said))

    m: dict[str, Any] = {}
    if any(v is None for column in columns.values() for v in column):
        m["dedup"] = None
        out.append(StageStatus("dedup", (UNKNOWN,), "a per-WARC stage will run first"))
    else:
        dedup = BY_NAME["dedup"]
        args = dedup.args(cfg, {}, columns=columns, sources=sources)
        state, m["dedup"] = lookup(dedup.task, cfg, "dedup", *args)
        said = why_runs(dedup.task, cfg, state, *args)
        detail = m["dedup"].dir if m["dedup"] else ""
        out.append(StageStatus("dedup", (state,), detail, m["dedup"], said))

    for stage in CORPUS[1:]:
        if any(v is None for v in m.values()):
            m[stage.name] = None
            out.append(StageStatus(stage.name, (UNKNOWN,), "an upstream stage will run first"))
            continue
        args = stage.args(cfg, m, columns=columns)  # the report reads every WARC's outputs
        state, got = lookup(stage.task, cfg, stage.name, *args)
        m[stage.name] = got
        said = why_runs(stage.task, cfg, state, *args)
        out.append(StageStatus(stage.name, (state,), got.dir if got else "", got, said))
    kept = {s.name for s in until(cfg.stop_after)}
    return [s for s in out if s.stage in kept]


def last_failures(cfg: PipelineConfig, sources: list[Any]) -> list[dict[str, str]]:
    """The failure records (storage.failures) of this config's WARCs: why each failed last."""
    from fineflow.storage import failures
    from fineflow.tasks.download import artifact_key

    found = (failures.load(cfg.data_root, artifact_key(s)) for s in sources)
    return [f for f in found if f is not None]


def describe(cfg: PipelineConfig, show_why: bool = False) -> str:
    from fineflow.flows.data import describe_sources

    lines = [f"fineflow status of {Path(cfg.data_root)} (nothing was run)"]
    lines.append(f"{'stage':<11} {'status':<22} detail")
    stages = pipeline_status(cfg)
    lines += [str(s) for s in stages]
    if show_why and (said := [s for s in stages if s.why]):
        lines.append("why they would run:")
        lines += [f"  {s.stage:<11} {s.why}" for s in said]
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
