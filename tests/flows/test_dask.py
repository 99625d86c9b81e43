"""The per-WARC stages on a Dask cluster (`dask_address`) give the same corpus as local.

A real local Dask cluster with two worker processes stands in for an existing one; the
data flow runs on it through `flows.pipeline.run_data`, the path `fineflow run` takes,
and its manifests must equal those of the default local process pool on another root.
"""

from __future__ import annotations

import dask
import distributed
import prefect_dask  # noqa: F401  (the task runner under test)
import pytest

from tests.helpers.e2e import small_config

PER_WARC = ["download", "url_filter", "extract", "filter", "minhash"]


def outputs(result) -> dict[str, list[tuple]]:
    """Per stage: each manifest's WARC, content fingerprint and counts, in WARC order."""
    return {
        line.stage: sorted((m.warc, m.fingerprint, m.counts) for m in line.manifests)
        for line in result.lines
    }


@pytest.fixture
def cluster(prefect_server):
    """Two worker processes, no extra environment: each task run carries the caller's
    Prefect settings (the test server's API URL among them) to the worker."""
    # extract runs pages in a process sandbox, and daemonic processes (Dask's default for
    # workers under a nanny) may not start children: workers must be non-daemonic.
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as c,
    ):
        yield c


@pytest.mark.slow  # about a minute on a 2-core box: two data-flow runs and a cluster
def test_data_flow_on_dask_cluster_matches_local_process_pool(cluster, warcs, tmp_path):
    from fineflow.flows.pipeline import data_task_runner, run_data

    local_cfg = small_config(tmp_path / "local", warcs, stop_after="dedup")
    dask_cfg = small_config(
        tmp_path / "dask", warcs, stop_after="dedup", dask_address=cluster.scheduler_address
    )
    assert type(data_task_runner(dask_cfg)).__name__ == "DaskTaskRunner"

    local = run_data(local_cfg)
    on_dask = run_data(dask_cfg)

    assert [line.stage for line in on_dask.lines] == PER_WARC + ["dedup"]
    assert all(line.status == "ran" for line in on_dask.lines)
    assert outputs(on_dask) == outputs(local)
    assert on_dask.corpus is not None and local.corpus is not None
    assert on_dask.corpus.fingerprint == local.corpus.fingerprint
    assert on_dask.corpus.counts == local.corpus.counts
    assert on_dask.corpus.path(dask_cfg.data_root, "corpus.duckdb").exists()

    # Every task run of the Dask run went through the scheduler to the cluster's workers.
    with distributed.Client(cluster.scheduler_address) as client:
        finished = client.run_on_scheduler(
            lambda dask_scheduler: {
                name: prefix.state_counts["memory"]
                for name, prefix in dask_scheduler.task_prefixes.items()
            }
        )
    n = len(warcs)
    assert finished == {
        "download_warc": n,
        "filter_urls": n,
        "extract_text": n,
        "filter_docs": n,
        "minhash_docs": n,
        "dedup_docs": 1,
    }
