"""prefect.yaml's `common-crawl` deployment, its schedule seen firing under a real worker.

The deployment is the one in prefect.yaml (entrypoint, work pool, pull step, concurrency
limit), deployed with `prefect deploy` and changed only where a test must: the nightly
cron becomes an interval of a few seconds, the crawl is the local crawl server's (three
WARCs), one WARC a run, the data root a temporary folder. Nobody creates a run: the
server's scheduler service (its loop lowered to 2 s) does, and a process worker runs
them. Checked through Prefect's client: two auto-scheduled runs, one after the other,
both Completed; the second fetched and processed only the new WARC (the first one's
per-WARC stages Cached) and the corpus grew.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fineflow.config import deep_merge
from tests.helpers.crawl_server import Crawl, serve
from tests.helpers.e2e import SAMPLE_WARCS, head_warc
from tests.helpers.live_prefect import PREFECT, prefect_server, process_worker, task_runs

REPO_ROOT = Path(__file__).resolve().parents[2]

CRAWL = "CC-MAIN-2024-10"
PER_WARC = ("download", "url_filter", "extract", "filter", "minhash")
# 88 s on the quiet 2-core dev box, 175 s with other test suites running (load average
# 6.5): two runs, each a fresh process (5 s to start, 20 s under that load) and pool.
pytestmark = pytest.mark.slow

EVERY_S = 20  # the schedule's interval; a run that outlasts it holds the next one back
SERVER_SETTINGS = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",  # default 60
    # a few runs ahead, not 100: fewer rows to write and to clear away at the end
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "2",
    # a run due while the other holds the deployment's one slot retries this soon (default 30)
    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    # SQLite waits this long for a lock (default 10 s): the box may be busy with other tests
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
}
WORKER_SETTINGS = {
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    # take a run when it is due, not 10 s early: a waiting run is not proposed again and
    # again before its next try
    "PREFECT_WORKER_PREFETCH_SECONDS": "1",
}


def deployment_for_test(base_url: str, data_root: Path, every_s: int) -> dict:
    """prefect.yaml with only the `common-crawl` deployment, pointed at a test crawl."""
    project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    (dep,) = [d for d in project["deployments"] if d["name"] == "common-crawl"]
    dep["schedules"] = [{"interval": every_s}]
    cfg = deep_merge(
        dep["parameters"]["cfg"],
        {
            "data_root": str(data_root),
            "sources": {"common_crawl": {"base_url": base_url}},
            "download": {"retries": 2, "backoff_s": 0.1, "timeout_s": 20},
            "extract": {"workers": 0},  # in-process: one fewer process to start per WARC
            "workers": 1,
        },
    )
    dep["parameters"] = {"cfg": cfg, "batch": 1}
    project["deployments"] = [dep]
    project.pop("definitions")  # YAML anchors, already expanded by the load
    return project


async def _runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    return await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
    )


async def _task_runs(client, flow_run_id) -> dict[str, str]:
    """Task run name -> state name, over the run and its subflows."""
    return {t.name: t.state.name for t in await task_runs(client, [flow_run_id]) if t.state}


async def _funnel_total(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    (funnel,) = [a for a in artifacts if a.key == "fineflow-funnel"]
    return json.loads(funnel.data)[-1]


async def _two_scheduled_runs(client, deployment_id, timeout_s: float) -> list:
    """Wait until two runs have started, stop the schedule, wait for them to finish."""
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    while True:
        runs = await _runs(client, deployment_id)
        started = [r for r in runs if r.state_type not in (StateType.SCHEDULED, StateType.PENDING)]
        failed = [r for r in started if r.state.is_final() and not r.state.is_completed()]
        assert not failed, f"a scheduled run ended {failed[0].state}"
        if len(started) >= 2:
            break
        states = sorted(f"{r.state_name}" for r in runs)
        assert time.monotonic() < deadline, f"only {len(started)} run(s) started: {states}"
        await asyncio.sleep(2)
    # The second holds the deployment's one slot: stop the schedule, drop the runs waiting
    # for the slot (again while any appear: a scheduler pass that began before the pause
    # may still insert some), wait for the two to finish.
    await client.pause_deployment(deployment_id)
    while True:
        runs = await _runs(client, deployment_id)
        waiting = [r for r in runs if r.state_type == StateType.SCHEDULED]
        for r in waiting:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_flow_run(r.id)
        if not waiting and all(r.state.is_final() for r in runs):
            return sorted(runs, key=lambda r: r.start_time)
        assert time.monotonic() < deadline, sorted(r.state_name for r in runs)
        await asyncio.sleep(2)


def test_schedule_fires_and_each_run_grows_the_corpus_by_the_next_warc(tmp_path_factory):
    from prefect.client.orchestration import PrefectClient

    tmp = tmp_path_factory.mktemp("schedule")
    warcs = [head_warc(p, tmp / p.name, 25) for p in SAMPLE_WARCS[:3]]
    crawl = Crawl(CRAWL, warcs)
    home = tmp / "prefect-home"
    home.mkdir()
    with serve(crawl) as base, prefect_server(home, settings=SERVER_SETTINGS) as url:
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"{url}/api",
            "FINEFLOW_HOME": str(REPO_ROOT),
            **WORKER_SETTINGS,
        }
        project = tmp / "prefect.yaml"
        project.write_text(yaml.safe_dump(deployment_for_test(base, tmp / "data", every_s=EVERY_S)))
        run = dict(env=env, cwd=REPO_ROOT, check=True, capture_output=True)
        subprocess.run([PREFECT, "work-pool", "create", "fineflow-process", "-t", "process"], **run)
        subprocess.run(
            [PREFECT, "--no-prompt", "deploy", "--name", "common-crawl", "--prefect-file", project],
            **run,
        )

        async def observe():
            # this server, whatever test harness an earlier test left in Prefect's settings
            async with PrefectClient(f"{url}/api") as client:
                dep = await client.read_deployment_by_name("fineflow-grow/common-crawl")
                runs = await _two_scheduled_runs(client, dep.id, timeout_s=300)
                tasks = [await _task_runs(client, r.id) for r in runs]
                totals = [await _funnel_total(client, r.id) for r in runs]
                return dep, runs, tasks, totals

        with process_worker(home, env, REPO_ROOT):
            dep, runs, tasks, totals = asyncio.run(observe())

    assert dep.global_concurrency_limit.limit == 1  # prefect.yaml's, as deployed
    assert dep.schedules[0].schedule.interval.total_seconds() == EVERY_S
    first, second = runs[:2]
    for r in (first, second):
        assert r.auto_scheduled and "auto-scheduled" in r.tags  # the scheduler made them
        assert r.state.is_completed(), r.state
    assert second.start_time >= first.end_time  # one growth at a time
    w1, w2, w3 = (p.name for p in warcs)
    assert tasks[0][f"plan_growth[{CRAWL}+1]"] == "Completed"
    for stage in PER_WARC:
        assert tasks[0][f"{stage}[{w1}]"] == "Completed", (stage, tasks[0])
        assert f"{stage}[{w2}]" not in tasks[0]
        assert tasks[1][f"{stage}[{w1}]"] == "Cached", (stage, tasks[1])  # not re-executed
        assert tasks[1][f"{stage}[{w2}]"] == "Completed", (stage, tasks[1])
        assert f"{stage}[{w3}]" not in tasks[1]
    assert tasks[1]["dedup"] == "Completed"  # the catalog is rebuilt over both WARCs
    assert totals[0]["warc"] == "total (1 WARCs)" and totals[1]["warc"] == "total (2 WARCs)"
    assert totals[1]["after dedup"] > totals[0]["after dedup"] > 0  # the corpus grew
    fetched = [p for p, _, code in crawl.requests if p.endswith(".warc.gz") and code == 200]
    assert sorted(fetched) == sorted(crawl.warc_path(w) for w in (w1, w2))  # each once
