"""Shared fixtures: one Prefect test server per session, results in a temp folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A `fineflow run` started by a test without PREFECT_API_URL gets a server of its own,
# stopped with it, not the shared one that would outlive the tests (fineflow.server);
# tests/cli/test_shared_server.py sets its own.
os.environ.setdefault("FINEFLOW_SERVER_IDLE_S", "0")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A temporary Prefect API + SQLite database for tests that run flows."""
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with (
        temporary_settings(
            {
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results),
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            }
        ),
        prefect_test_harness(server_startup_timeout=60),
    ):
        yield


@pytest.fixture(scope="session")
def warcs(tmp_path_factory) -> list[str]:
    """Three small real WARCs: the first pages of the bundled sample's first three."""
    from tests.helpers.e2e import PAGES_PER_WARC, SAMPLE_WARCS, head_warc

    d = tmp_path_factory.mktemp("warcs")
    return [str(head_warc(p, d / p.name, PAGES_PER_WARC)) for p in SAMPLE_WARCS[:3]]
