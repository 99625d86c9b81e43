"""fineflow installs like a library: the wheel, in a fresh venv outside the checkout, runs the
bundled sample from an empty directory to the end, writing its data root there.

The fresh venv gets the wheel itself (--no-deps) and finds the dependencies through a
.pth line naming this venv's site-packages (a path added that way is not a site dir, so
the checkout's editable-install hook in it never runs). Slow: it builds a wheel and runs
the whole pipeline (about two minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900, **kw)


def test_the_wheel_runs_the_sample_from_an_empty_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)])
    (wheel,) = dist.glob("fineflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("fineflow-")}
    assert tops == {"fineflow"}, tops  # no top-level flows/, tasks/, storage/
    assert "fineflow/prefect.yaml" in names
    assert sum(n.startswith("fineflow/sample/warcs/") for n in names) == 5

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    Path(site.stdout.strip(), "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)])

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FINEFLOW_"))}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    where = _run([str(py), "-c", "import fineflow; print(fineflow.__file__)"], cwd=work, env=env)
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout
    small = [
        "--set", "tokenizer.vocab_size=512", "--set", "train.steps=6",
        "--set", "train.warmup_steps=1", "--set", "train.batch_size=4",
        "--set", "train.model={n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}",
        "--set", "evaluate.max_new_tokens=8",
    ]  # fmt: skip
    done = _run([str(venv / "bin" / "fineflow"), "run", *small], cwd=work, env=env)
    assert "10 stages, 10 ran" in done.stdout, done.stdout + done.stderr
    assert (work / "data" / "evaluate").is_dir() and not (venv / "data").exists()
    presets = _run(
        [str(venv / "bin" / "fineflow"), "status", "--preset", "sample"], cwd=work, env=env
    )
    assert "cached" in presets.stdout
