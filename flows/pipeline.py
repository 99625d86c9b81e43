"""The whole story as one flow: crawl -> clean corpus -> tokens -> GPT -> samples.

`fineflow run` (and `make run`) call this flow and print one line per stage and where
the outputs are; in the Prefect UI the run carries a funnel table and a run summary.
The per-WARC stages run on a local process pool (`workers`), or on an existing Dask
cluster when `dask_address` is set; when every per-WARC task run is cached already, on
threads of this process (each comes back Cached, in the UI and the summary, without a
process pool to start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from fineflow.config import PipelineConfig
from fineflow.flows.data import CorpusResult, all_cached, build_corpus, staged
from fineflow.flows.stages import CORPUS, until
from fineflow.flows.summary import StageClock, StageLine, WarcFailure, publish_run_artifacts
from fineflow.flows.train import train_on_corpus
from fineflow.storage.artifacts import Manifest
from fineflow.storage.remote import Remote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    lines: list[StageLine]
    outputs: dict[str, Manifest]
    failures: tuple[WarcFailure, ...] = ()  # WARCs left out of the corpus, and why
    warcs: int = 0  # WARCs the run was given


def data_task_runner(cfg: PipelineConfig, cached: bool = False):
    """Where the per-WARC stages run: the configured Dask cluster, else local processes;
    threads of this process when every per-WARC task run is `cached` (no work to spread:
    a process pool would spend seconds starting and importing only to find each task's
    cache record). Should a record turn stale between that check and its task, the task
    runs on its thread: the same work and outputs, on this process."""
    if cfg.dask_address:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError(
                "dask_address is set but prefect-dask is not installed: pip install -e '.[dask]'"
            ) from exc
        return DaskTaskRunner(address=cfg.dask_address)
    if cached:
        return ThreadPoolTaskRunner(cfg.workers)
    return ProcessPoolTaskRunner(cfg.workers)


def abandon_running_tasks() -> None:
    """Stop this process's pool workers now (their sandboxes follow: their pipe closes).

    For a run that has already failed: the pool would otherwise finish every running
    per-WARC task before the flow could end. Their scratch directories are swept by the
    next writer; nothing they leave is trusted (storage.artifacts).
    """
    import gc
    import multiprocessing
    from multiprocessing.queues import Queue

    for child in multiprocessing.active_children():
        child.kill()
    # A worker killed while it wrote to a queue it shares with this process (Prefect's
    # pool forwards the workers' log lines through one) leaves the queue's lock held by
    # a dead process: this process's own writes then wait for it forever, and so would
    # its exit, which joins each queue's writer thread. Exit without waiting for them.
    # The type is read without touching the object: isinstance() would dereference a
    # dead weak proxy (ReferenceError) or wake a lazy module's deprecation hooks.
    for obj in gc.get_objects():
        if issubclass(type(obj), Queue):
            obj.cancel_join_thread()


def run_data(cfg: PipelineConfig) -> CorpusResult:
    """The data flow (a subflow of the caller) on the configured task runner."""
    cached = not cfg.dask_address and all_cached(cfg)
    if cached:
        log.info("every per-WARC task run is cached: they run on threads, no process pool")
    return build_corpus.with_options(task_runner=data_task_runner(cfg, cached))(cfg)


def run_report(
    cfg: PipelineConfig, outputs: dict[str, Manifest], columns: dict[str, list[Manifest]]
) -> tuple[list[StageLine], dict[str, Manifest]]:
    """The corpus stages after the model flow that read every WARC's outputs too (the run
    report), in this flow: the model subflow's parameters stay one manifest, not a list
    per WARC (a subflow's parameters are stored with its run)."""
    clock, out = StageClock(cfg.data_root), dict(outputs)
    root = str(cfg.data_root)
    for stage in until(cfg.stop_after, CORPUS):
        if stage.name in out or not stage.reads_warcs:
            continue
        future = staged(stage.task, cfg, stage.name).submit(
            root, *stage.args(cfg, out, columns=columns)
        )
        out[stage.name] = clock.finish(stage.name, [future])[0]
    return clock.lines, out


def run_model(cfg: PipelineConfig, data: CorpusResult) -> PipelineResult:
    """The model flow on `data`'s corpus (unless stop_after ends the run first), then the
    report; publishes."""
    lines, outputs = data.lines, {"dedup": data.corpus} if data.corpus else {}
    if data.corpus is not None and cfg.stop_after != "dedup":
        model = train_on_corpus(cfg, data.corpus)
        lines, outputs = lines + model.lines, {**outputs, **model.outputs}
        report_lines, outputs = run_report(cfg, outputs, data.columns)
        lines = lines + report_lines
    result = PipelineResult(lines, outputs, data.failures, data.warcs)
    if cfg.remote_root is not None:  # stages fetch lazily: bring what the run reports here
        Remote(cfg.remote_root).localize(cfg.data_root, result.outputs.values())
    publish_run_artifacts(result.lines, result.outputs, cfg.data_root, result.failures)
    return result


@flow(name="fineflow", log_prints=True)
def pipeline(cfg: PipelineConfig | None = None) -> PipelineResult:
    """Build the corpus from the configured WARCs, then train and evaluate a GPT on it."""
    cfg = cfg or PipelineConfig()
    return run_model(cfg, run_data(cfg))
