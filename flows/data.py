"""The data flow: sources -> download -> url_filter -> extract -> filter -> minhash -> dedup.

Per-WARC stages are mapped, one task run per WARC, on a process pool; dedup takes
the list of per-WARC manifests and writes the corpus DuckDB file.

A WARC is the unit of failure, not the run: a WARC that fails any per-WARC stage (its
later stages are then never started: Prefect marks them NotReady) is named with the
stage and the reason (`WarcFailure`), recorded under `_failed/` for `fineflow status`,
and left out; dedup and everything after it run on the WARCs that made it, exactly as
a run over those alone would. `sources.on_error = "fail"` makes the first failure end
the run instead; fewer good WARCs than `sources.min_good_warcs` always does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, unmapped
from prefect.futures import PrefectFuture

from fineflow.config import PipelineConfig, StageName
from fineflow.errors import FineflowError
from fineflow.flows.stages import BY_NAME, PER_WARC, Stage, until
from fineflow.flows.summary import StageClock, StageLine, WarcFailure, failure_of
from fineflow.storage import failures as failure_records
from fineflow.storage.artifacts import Manifest
from fineflow.storage.cache import HITS, UNKNOWN, bind, lookup
from fineflow.tasks.download import WarcSource, artifact_key, describe_sources, list_common_crawl
from fineflow.tasks.sandbox import available_cores


@dataclass(frozen=True)
class CorpusResult:
    corpus: Manifest | None  # None when stop_after ends the run before dedup
    lines: list[StageLine]
    failures: tuple[WarcFailure, ...] = ()  # WARCs left out, with the stage and the reason
    warcs: int = 0  # WARCs the run was given
    # per-WARC stage -> its manifests of the WARCs that made it (what the report reads)
    columns: dict[str, list[Manifest]] = field(default_factory=dict, repr=False)


class RunFailed(FineflowError):
    """The run cannot go on: a WARC failed under on_error=fail, or too few made it."""


def staged(task, cfg: PipelineConfig, stage: StageName):
    """`task` with the project's cache policy, refreshed if the user forced `stage`."""
    return bind(task, cfg.data_root, refresh=stage in cfg.force, remote=cfg.remote_root)


@flow(name="fineflow-data", log_prints=True)
def build_corpus(cfg: PipelineConfig) -> CorpusResult:
    """Download, filter, extract and deduplicate the configured WARCs."""
    root = str(cfg.data_root)
    clock = StageClock(cfg.data_root)
    uris = list(cfg.sources.warcs)
    if cfg.sources.common_crawl is not None:
        listing = staged(list_common_crawl, cfg, "download").submit(root, cfg.sources.common_crawl)
        uris += clock.finish("resolve_crawl", [listing])[0]
    sources = describe_sources(uris)
    cfg = sized(cfg, len(sources))

    # Submit the whole per-WARC chain at once so WARC 2 downloads while WARC 1 extracts.
    chain: dict[str, list[PrefectFuture]] = {}
    for stage in until(cfg.stop_after, PER_WARC):
        args = stage.args(cfg, chain, source=sources, wrap=unmapped)
        chain[stage.name] = staged(stage.task, cfg, stage.name).map(unmapped(root), *args)
    if cfg.sources.on_error == "fail":
        stop_at_first_failure(chain, sources)
    done = {stage: clock.finish(stage, list(fs), tolerate=True) for stage, fs in chain.items()}
    failures = warc_failures(chain, sources)
    good = [i for i in range(len(sources)) if all(done[s][i] is not None for s in done)]
    note_failures(cfg.data_root, sources, failures, good)
    check_enough(cfg, len(sources), failures, len(good))
    if len(done) < len(PER_WARC) or cfg.stop_after == PER_WARC[-1].name:
        return CorpusResult(None, clock.lines, failures, len(sources))

    kept = {stage: [done[stage][i] for i in good] for stage in done}
    dedup = BY_NAME["dedup"]
    args = dedup.args(cfg, {}, columns=kept, sources=[sources[i] for i in good])
    corpus = clock.finish("dedup", [staged(dedup.task, cfg, "dedup").submit(root, *args)])[0]
    return CorpusResult(corpus, clock.lines, failures, len(sources), kept)


def lookups(
    cfg: PipelineConfig, sources: list[WarcSource], stages: tuple[Stage, ...] = PER_WARC
) -> Iterator[tuple[Stage, list[tuple[str, Any, tuple]]]]:
    """Per per-WARC stage in run order, per WARC: (state, its cached manifest or None, the
    task's arguments after the root), read from the cache now as the run would find it
    (storage.cache.lookup). Below a WARC's first stage that will run, its inputs are not
    known until that runs: (UNKNOWN, None, ())."""
    chains: list[dict[str, Any]] = [{} for _ in sources]
    for stage in stages:
        looked = []
        for chain, source in zip(chains, sources, strict=True):
            if any(v is None for v in chain.values()):
                chain[stage.name] = None
                looked.append((UNKNOWN, None, ()))
                continue
            args = stage.args(cfg, chain, source=source)
            forced = stage.name in cfg.force
            state, chain[stage.name] = lookup(
                stage.task, cfg.data_root, args, cfg.remote_root, forced
            )
            looked.append((state, chain[stage.name], args))
        yield stage, looked


def all_cached(cfg: PipelineConfig) -> bool:
    """Whether every per-WARC task run of `cfg` would come back Cached, as the cache reads
    now (a Common Crawl slice: once its listing is cached too). Stops at the first miss,
    so a crawl that will run pays for one lookup, not one per WARC."""
    uris = list(cfg.sources.warcs)
    if cfg.sources.common_crawl is not None:
        forced = "download" in cfg.force
        args = (cfg.sources.common_crawl,)
        state, urls = lookup(list_common_crawl, cfg.data_root, args, cfg.remote_root, forced)
        if state not in HITS:
            return False
        uris += urls
    stages = until(cfg.stop_after, PER_WARC)

    def chain_cached(source: WarcSource) -> bool:  # one WARC at a time: a miss ends it at once
        return all(looked[0][0] in HITS for _, looked in lookups(cfg, [source], stages))

    return all(chain_cached(source) for source in describe_sources(uris))


def sized(cfg: PipelineConfig, warcs: int) -> PipelineConfig:
    """`cfg` with the per-WARC stages' workers left to the flow (None) made a count: the
    cores this process may use over the WARCs that run at once, so one big WARC gets
    every core and a crawl of thousands one per task (more would only contend). 1 on a
    Dask cluster, whose workers' cores are not known here. A runtime setting: the
    outputs are the same bytes for any count."""
    running = min(cfg.workers, max(warcs, 1))
    cores = 1 if cfg.dask_address else max(1, available_cores() // running)
    update = {
        name: sub.model_copy(update={"workers": cores})
        for name in ("extract", "filter", "minhash")
        if (sub := getattr(cfg, name)).workers is None
    }
    return cfg.model_copy(update=update) if update else cfg


def warc_failures(
    chain: dict[str, list[PrefectFuture]], sources: list[WarcSource]
) -> tuple[WarcFailure, ...]:
    """Per WARC, the first stage whose task failed (the later ones never started)."""
    out = []
    for i, source in enumerate(sources):
        for stage, futures in chain.items():
            if (failure := failure_of(futures[i], stage, source.name, source.uri)) is not None:
                out.append(failure)
                break
    return tuple(out)


def stop_at_first_failure(chain: dict[str, list[PrefectFuture]], sources: list) -> None:
    """on_error=fail: wait until every per-WARC task ends, but raise at the first failure."""
    from prefect.futures import as_completed

    stage_of = {id(f): (stage, i) for stage, fs in chain.items() for i, f in enumerate(fs)}
    for future in as_completed([f for fs in chain.values() for f in fs]):
        stage, i = stage_of[id(future)]
        failure = failure_of(future, stage, sources[i].name, sources[i].uri)
        if failure is not None:
            from fineflow.flows.pipeline import abandon_running_tasks

            abandon_running_tasks()  # the pool's other tasks must not hold the exit
            raise RunFailed(
                f"{failure.warc} failed at {failure.stage}: {failure.reason}",
                hint=(failure.hint + "; " if failure.hint else "")
                + "sources.on_error=skip builds the corpus from the other WARCs instead",
                stage=failure.stage,
                warc=failure.warc,
            )


def note_failures(
    root: Path, sources: list[WarcSource], failures: tuple[WarcFailure, ...], good: list[int]
) -> None:
    """Record why each failed WARC failed; forget the records of WARCs that now work."""
    by_name = {f.warc: f for f in failures}
    for i, source in enumerate(sources):
        key = artifact_key(source)
        if (f := by_name.get(source.name)) is not None:
            failure_records.record(root, key, f.as_record())
        elif i in good:
            failure_records.clear(root, key)


def check_enough(cfg: PipelineConfig, total: int, failures: tuple, good: int) -> None:
    """Fail the run, in one message, when too few WARCs made it through."""
    if good >= cfg.sources.min_good_warcs or not total:
        return
    listed = "; ".join(str(f) for f in failures[:5]) + (" ..." if len(failures) > 5 else "")
    what = "every WARC failed" if not good else f"only {good} of {total} WARCs made it through"
    raise RunFailed(
        f"{what} (sources.min_good_warcs = {cfg.sources.min_good_warcs}): {listed}",
        hint="fix or replace the WARCs named above (fineflow status lists them all), "
        "then run again: what finished stays cached",
    )
