"""The layers hold: storage <- core <- tasks <- flows <- app; no module imports upward.

storage (fineflow.storage: paths, artifacts, DuckDB, cache, shard format) imports no other
part of fineflow; the core (config, sources, errors, vocab, model, training, devices,
distributed, progress) imports only storage; tasks import storage and the core; flows add
tasks; the application (cli, status, sample, export, logs) may import anything. Read from
the source with `ast`, function-level imports included. `make lint` runs this test.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"fineflow": "fineflow", "fineflow.flows": "flows", "fineflow.tasks": "tasks"}
FOLDERS["fineflow.storage"] = "storage"
APP = ("fineflow.cli", "fineflow.status", "fineflow.sample", "fineflow.export", "fineflow.logs")
NAMES = ("storage", "core", "tasks", "flows", "app")


def layer(module: str) -> int:
    for i, prefix in enumerate(("fineflow.storage", None, "fineflow.tasks", "fineflow.flows")):
        if prefix and (module == prefix or module.startswith(prefix + ".")):
            return i
    return 4 if module.startswith(APP) else 1


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "sample" in path.relative_to(ROOT).parts:
                continue
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            out[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return out


def upward_imports() -> list[str]:
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("fineflow") and layer(target) > layer(module):
                    found.append(
                        f"{path.relative_to(ROOT)}:{node.lineno}: {module} "
                        f"({NAMES[layer(module)]}) imports {target} ({NAMES[layer(target)]})"
                    )
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_only_the_fineflow_namespace_is_importable_from_the_install(tmp_path):
    # A fresh interpreter outside the checkout: this one has the checkout on sys.path
    # (pytest puts the root of the `tests` package there), where flows/ is a folder.
    probe = (
        "import importlib.util as u; "
        "print([n for n in ('flows', 'tasks', 'storage') if u.find_spec(n)])"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]", f"top-level packages importable: {found.stdout}"
    assert layer("fineflow.storage.cache") == 0 and layer("fineflow.cli") == 4
    assert len(modules()) > 40  # the walk found the code


def test_the_stage_table_and_the_configs_stage_names_agree():
    from fineflow.config import STAGES as NAMES_IN_CONFIG
    from fineflow.flows.stages import STAGES

    assert tuple(s.name for s in STAGES) == NAMES_IN_CONFIG  # --force / --stop-after choices
    for stage in STAGES:
        assert callable(stage.task.fn), stage.task_ref
