"""The sample flow against a real Prefect server on loopback, checked through Prefect's client.

The run goes through a `prefect deploy` of prefect.yaml's `data` deployment and a process
worker, as `make ui` + `make deploy` set it up: task runs named by stage and WARC, the
funnel table and the run summary artifacts. A retried run resumes at the failed stage.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.crawl_server import Crawl, serve
from tests.helpers.e2e import SAMPLE_WARCS, head_warc
from tests.helpers.live_prefect import PREFECT, prefect_server, process_worker, task_runs

REPO_ROOT = Path(__file__).resolve().parents[2]


CRAWL = "CC-MAIN-2024-10"
# About 3.5 minutes on the 2-core dev box: every deployed run starts a fresh process.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A server, the `fineflow-process` pool, prefect.yaml's `data` deployment, a worker."""
    home = tmp_path_factory.mktemp("prefect-home")
    with prefect_server(home) as url:
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"{url}/api",
            "FINEFLOW_HOME": str(REPO_ROOT),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        run = dict(env=env, cwd=REPO_ROOT, check=True, capture_output=True)
        subprocess.run([PREFECT, "work-pool", "create", "fineflow-process", "-t", "process"], **run)
        subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "data"], **run)
        with process_worker(home, env, REPO_ROOT):
            old = os.environ.get("PREFECT_API_URL")
            os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
            try:
                yield url, home
            finally:
                if old is None:
                    os.environ.pop("PREFECT_API_URL", None)
                else:
                    os.environ["PREFECT_API_URL"] = old


async def _wait_final(client, flow_run_id, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while True:
        run = await client.read_flow_run(flow_run_id)
        if run.state and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run still {run.state.name}"
        await asyncio.sleep(1)


def _client():
    """A client of the live server (os.environ, set by `live`), not of whatever test
    harness an earlier test module left in Prefect's settings."""
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(os.environ["PREFECT_API_URL"])


def _run_deployment(cfg: dict) -> tuple:

    async def go():
        async with _client() as client:
            dep = await client.read_deployment_by_name("fineflow/data")
            fr = await client.create_flow_run_from_deployment(dep.id, parameters={"cfg": cfg})
            return await _wait_final(client, fr.id)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def warcs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("srv-warcs")
    return [head_warc(p, d / p.name, 25) for p in SAMPLE_WARCS[:3]]


@pytest.fixture(scope="module")
def completed_run(live, warcs, tmp_path_factory):
    root = tmp_path_factory.mktemp("srv-data")
    cfg = {
        "data_root": str(root),
        "sources": {"warcs": [str(p) for p in warcs[:2]]},
        "stop_after": "dedup",
    }
    return _run_deployment(cfg), root


def test_deployed_run_names_task_runs_by_stage_and_warc(completed_run, warcs):

    run, _ = completed_run
    assert run.state.is_completed(), run.state

    async def names():
        async with _client() as client:
            return {t.name for t in await task_runs(client, [run.id])}

    got = asyncio.run(names())
    for stage in ("download", "url_filter", "extract", "minhash"):
        for w in warcs[:2]:
            assert f"{stage}[{w.name}]" in got, (stage, sorted(got))
    assert any(n.startswith("dedup") for n in got)


def test_deployed_run_carries_funnel_table_and_run_summary(completed_run, warcs):
    import json

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run, root = completed_run

    async def artifacts():
        async with _client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )

    by_key = {a.key: a for a in asyncio.run(artifacts()) if a.key}
    table = json.loads(by_key["fineflow-funnel"].data)
    assert [r["warc"] for r in table] == [w.name for w in warcs[:2]] + ["total (2 WARCs)"]
    assert table[-1]["responses"] == sum(r["responses"] for r in table[:-1]) > 0
    assert 0 < table[-1]["after dedup"] <= table[-1]["after extract"]
    summary = by_key["fineflow-run-summary"].data
    assert "| dedup |" in summary and str(root) in summary


def test_a_retried_run_resumes_at_the_failed_stage(live, warcs, tmp_path):
    """WARC 2 answers 404, the run fails; once it is back, a retry (the UI's Retry button
    sets the run Scheduled again) reruns only what had not finished: WARC 1 stays Cached."""
    from prefect.states import Scheduled

    crawl = Crawl(CRAWL, warcs[:2], missing={warcs[1].name})
    with serve(crawl) as base:
        urls = [base + crawl.warc_path(w.name) for w in warcs[:2]]
        cfg = {
            "data_root": str(tmp_path),
            "sources": {"warcs": urls},
            "download": {"retries": 0},
            "stop_after": "dedup",
        }
        failed = _run_deployment(cfg)
        assert failed.state.is_failed()
        crawl.missing.clear()  # the server is back

        async def retry():
            async with _client() as client:
                await client.set_flow_run_state(failed.id, Scheduled(), force=True)
                run = await _wait_final(client, failed.id)
                return run, await task_runs(client, [failed.id])

        run, retried = asyncio.run(retry())
    assert run.state.is_completed(), run.state
    latest: dict[str, str] = {}
    for t in sorted(retried, key=lambda t: t.expected_start_time or t.created):
        latest[t.name] = t.state.name
    first = warcs[0].name
    for stage in ("download", "url_filter", "extract", "minhash"):
        assert latest[f"{stage}[{first}]"] in ("Cached", "Completed"), latest
    fetched = [p for p, _, code in crawl.requests if p.endswith(first) and code == 200]
    assert len(fetched) == 1  # WARC 1 was not downloaded again
    assert any(n.startswith("dedup") and s == "Completed" for n, s in latest.items())
