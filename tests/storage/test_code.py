"""storage/code.py: the code a function reaches, and which edits change its digest."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from fineflow.storage import code
from fineflow.storage.code import code_parts

HELPERS = '''
"""Helpers."""

import math

from codeproj import consts
from codeproj.consts import SCALE as K

LIMIT = 10  # the cap


def scaled(x):
    """Scale x."""
    return x * K + consts.OFFSET


class Counter:
    def bump(self, x):
        return min(x + 1, LIMIT)


def unused(x):
    return math.sqrt(x)
'''

STAGE = """
from codeproj.helpers import Counter, scaled


def run(x):
    return Counter().bump(scaled(x))
"""


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = tmp_path / "codeproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "consts.py").write_text("SCALE = 2\nOFFSET = 1\nOTHER = 3\n")
    (pkg / "helpers.py").write_text(HELPERS)
    (pkg / "stage.py").write_text(STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m == "codeproj" or m.startswith("codeproj.")]:
        del sys.modules[name]
    code.forget()


def parts(pkg: Path) -> dict[str, str]:
    code.forget()
    importlib.invalidate_caches()
    stage = importlib.import_module("codeproj.stage")
    return code_parts(stage.run, project="codeproj")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reaches_helpers_constants_and_classes_across_modules_but_nothing_else(project):
    found = parts(project)
    assert set(found) == {
        "codeproj.stage.run",
        "codeproj.helpers.scaled",
        "codeproj.helpers.Counter",
        "codeproj.helpers.LIMIT",
        "codeproj.consts.SCALE",
        "codeproj.consts.OFFSET",
    }  # not `unused`, not consts.OTHER, nothing from the standard library


def test_comments_docstrings_and_formatting_do_not_count(project):
    before = parts(project)
    edit(project / "helpers.py", '    """Scale x."""\n', '    """Scale x, better said."""\n')
    edit(project / "helpers.py", "LIMIT = 10  # the cap", "# why ten\nLIMIT = (\n    10\n)")
    edit(project / "consts.py", "SCALE = 2", "SCALE = 2  # twice")
    assert parts(project) == before


def test_a_logic_change_in_a_helper_is_seen_and_named(project):
    before = parts(project)
    edit(project / "helpers.py", "return min(x + 1, LIMIT)", "return min(x + 2, LIMIT)")
    after = parts(project)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"codeproj.helpers.Counter"}


def test_a_constant_reached_through_an_alias_or_a_module_attribute_is_seen(project):
    before = parts(project)
    edit(project / "consts.py", "SCALE = 2", "SCALE = 3")
    edit(project / "consts.py", "OFFSET = 1", "OFFSET = 5")
    after = parts(project)
    assert {k for k in after if after[k] != before[k]} == {
        "codeproj.consts.SCALE",
        "codeproj.consts.OFFSET",
    }


def test_an_edit_to_code_not_reached_changes_nothing(project):
    before = parts(project)
    edit(project / "helpers.py", "return math.sqrt(x)", "return math.sqrt(x) + 1")
    edit(project / "consts.py", "OTHER = 3", "OTHER = 4")
    assert parts(project) == before


def test_the_real_stages_reach_their_helpers_and_not_the_config():
    from fineflow.tasks.filter import filter_docs
    from fineflow.tasks.train import train_model

    code.forget()
    filt = code_parts(filter_docs.fn)
    assert "fineflow.tasks.quality.redact_pii" in filt
    assert any(k.startswith("fineflow.tasks.words.") for k in filt)
    assert not any(k.startswith(("fineflow.config", "fineflow.progress")) for k in filt)
    assert not any(k.startswith("fineflow.tasks.train") for k in filt)
    train = code_parts(train_model.fn)
    assert "fineflow.model.INIT_STD" in train
    assert not any(k.startswith("fineflow.tasks.quality") for k in train)


def test_a_module_source_that_changes_on_disk_is_read_again_only_after_forget(project):
    before = parts(project)
    edit(project / "consts.py", "SCALE = 2", "SCALE = 9")
    stage = importlib.import_module("codeproj.stage")
    assert code_parts(stage.run, project="codeproj") == before
    code.forget()
    assert code_parts(stage.run, project="codeproj") != before
