"""The cache sees the code a stage runs: an edit to a helper's logic, in a copy of the
project, reruns that stage (and what its new output feeds); a comment or docstring edit
reruns nothing; `fineflow status --why` names the definition that changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fineflow.config import PACKAGE_DIR
from fineflow.config import STAGES as ALL_STAGES
from tests.helpers.e2e import small_config

CHECKOUT = PACKAGE_DIR.parent
CONFIG = "config.json"
STAGES = ALL_STAGES[: ALL_STAGES.index("train") + 1]  # the base run stops after train


@pytest.fixture(scope="module")
def built(prefect_server, warcs, tmp_path_factory):
    """A data root trained up to `train` by this checkout, and a config file for it."""
    from fineflow.flows.pipeline import pipeline

    here = tmp_path_factory.mktemp("code-change")
    cfg = small_config(here / "data", warcs[:1], stop_after="train")
    pipeline(cfg)
    (here / CONFIG).write_text(cfg.model_dump_json())
    return here


@pytest.fixture()
def project(built, tmp_path):
    """A copy of the project's code, importable as `fineflow` ahead of the installed one."""
    pkg = tmp_path / "copy" / "fineflow"
    skip = shutil.ignore_patterns("sample", "__pycache__", "flows", "tasks", "storage")
    shutil.copytree(PACKAGE_DIR, pkg, ignore=skip)
    (pkg / "sample").symlink_to(PACKAGE_DIR / "sample")
    for folder in ("flows", "tasks", "storage"):
        shutil.copytree(CHECKOUT / folder, pkg / folder, ignore=shutil.ignore_patterns("__py*"))
    probe = "import fineflow.cli as c, fineflow.tasks.quality as q; print(c.__file__, q.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe], cwd=pkg.parent, env=_env(pkg), capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where == [str(pkg / "cli.py"), str(pkg / "tasks" / "quality.py")]
    return pkg


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(project.parent)}


def fineflow(project: Path, built: Path, *args: str) -> str:
    """`fineflow ARGS --config ...` run from the copy; its standard output."""
    out = subprocess.run(
        [sys.executable, "-m", "fineflow.cli", *args, "--config", str(built / CONFIG)],
        cwd=built,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def why_of(status_out: str, stage: str) -> str:
    said = status_out.split("why they would run:\n", 1)[-1].splitlines()
    return next((ln.split(None, 1)[1] for ln in said if ln.split()[:1] == [stage]), "")


def states(status_out: str) -> dict[str, str]:
    rows = status_out.split("detail\n", 1)[1].splitlines()
    return {r.split()[0]: r.split()[1] for r in rows if r[:1].strip() and r.split()[0] in STAGES}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_comment_and_docstring_edits_rerun_nothing(project, built):
    edit(project / "tasks" / "quality.py", '    """(text, e-mails', '    """(the text, e-mails')
    edit(project / "model.py", "INIT_STD = 0.02  #", "INIT_STD = (0.02)  # a comment, and")
    edit(project / "tasks" / "tokenizer.py", "MIN_FREQUENCY = 2", "# why two\nMIN_FREQUENCY = 2")
    out = fineflow(project, built, "status", "--why")
    assert set(states(out).values()) == {"cached"}, out


def test_a_model_edit_reruns_training_and_names_the_constant(project, built):
    edit(project / "model.py", "INIT_STD = 0.02", "INIT_STD = 0.03")
    out = fineflow(project, built, "status", "--why")
    s = states(out)
    assert s["train"] == "will" and {s[k] for k in STAGES[:-1]} == {"cached"}, out
    assert why_of(out, "train") == "code changed: fineflow.model.INIT_STD"


def test_a_tokenizer_helper_edit_reruns_the_tokenizer(project, built):
    edit(project / "tasks" / "tokenizer.py", "MIN_FREQUENCY = 2", "MIN_FREQUENCY = 3")
    out = fineflow(project, built, "status", "--why")
    assert states(out)["tokenizer"] == "will" and states(out)["dedup"] == "cached", out
    assert why_of(out, "tokenizer") == "code changed: fineflow.tasks.tokenizer.MIN_FREQUENCY"


def test_a_quality_rule_edit_reruns_filter_and_what_its_output_feeds(project, built):
    edit(
        project / "tasks" / "quality.py",
        "    return text, emails, ips\n",
        '    return text.replace("the ", "teh "), emails, ips\n',
    )
    out = fineflow(project, built, "status", "--why")
    assert states(out)["filter"] == "will" and states(out)["extract"] == "cached", out
    assert "code changed: fineflow.tasks.quality.redact_pii" in why_of(out, "filter")
    run = fineflow(project, built, "run", "--stop-after", "minhash")
    lines = {r.split()[0]: r.split()[1] for r in run.split("key figure\n", 1)[1].splitlines()[:5]}
    assert lines == {
        "download": "cached",
        "url_filter": "cached",
        "extract": "cached",
        "filter": "ran",
        "minhash": "ran",  # its input changed
    }, run
