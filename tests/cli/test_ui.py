"""The Prefect UI renders the run's summary: headless Chromium on a real server's page.

Needs Debian's `chromium` (`.ci/run` installs it); skipped with the reason otherwise.
The screenshot is kept as test-output/ui-run-summary.png.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers.e2e import SAMPLE_WARCS, head_warc, small_config
from tests.helpers.live_prefect import prefect_server

REPO_ROOT = Path(__file__).resolve().parents[2]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)"
    ),
    pytest.mark.slow,  # about 2 minutes on the 2-core dev box (server start, run, two page loads)
]


def chromium(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--window-size=1400,1000",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return out.stdout


def test_run_summary_is_rendered_in_the_ui(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from fineflow.flows.pipeline import pipeline

    warcs = [str(head_warc(p, tmp_path / p.name, 15)) for p in SAMPLE_WARCS[:2]]
    home = tmp_path / "home"
    home.mkdir()
    with prefect_server(home) as url, temporary_settings({PREFECT_API_URL: f"{url}/api"}):
        pipeline(small_config(tmp_path / "data", warcs, stop_after="dedup"))
        page = f"{url}/artifacts/artifact/{asyncio.run(_latest_id('fineflow-run-summary'))}"
        dom = chromium(page, "--dump-dom")
        shot = REPO_ROOT / "test-output" / "ui-run-summary.png"
        shot.parent.mkdir(exist_ok=True)
        shot.unlink(missing_ok=True)
        chromium(page, f"--screenshot={shot}")
    assert "fineflow run" in dom and "key figure" in dom, dom[-2000:]
    assert "docs kept" in dom  # dedup's figure, from the table of stage lines
    assert shot.is_file() and shot.stat().st_size > 10_000


async def _latest_id(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactCollectionFilter,
        ArtifactCollectionFilterKey,
    )

    async with get_client() as client:
        found = await client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    return found[0].latest_id
