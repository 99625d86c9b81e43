"""Every leaf of the config schema, one at a time: change it, run, and the stages that ran
are exactly the stages whose inputs changed, with early cutoff.

The leaves are generated from PipelineConfig (not a hand list). A stage's inputs changed
when its own sub-config changed in a field that can change an output, or when an upstream
stage's output (its content identity, per WARC) differs from the base run's. Every run
starts from one built base (one small WARC, a tiny model), so each field costs only what
it reruns. Slow: about 110 flow runs (`make test-slow`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from fineflow.config import PipelineConfig
from fineflow.storage.fingerprint import affects_output
from tests.helpers.e2e import leaf_fields, small_config, value_at, with_value

pytestmark = pytest.mark.slow

# Leaves this test does not change, and where each is held instead.
NOT_HERE = {
    "data_root": "a new root is a new cache; a moved one: tests/flows/test_caching.py",
    "remote_root": "needs an object store: tests/storage/test_remote.py",
    "sources.common_crawl": "needs a crawl server: tests/flows/test_grow.py",
    "dask_address": "needs a Dask cluster: tests/flows/test_dask.py",
    "force": "a command, not a setting: tests/flows/test_pipeline.py",
    "stop_after": "a command, not a setting: tests/flows/test_pipeline.py",
    "sources.min_good_warcs": "fails a run with fewer good WARCs: tests/flows/test_failures.py",
}


def candidates(path: str, field: Any, current: Any, tmp: Path, warcs: list[str]) -> list[Any]:
    """Other values for the leaf, most likely valid first (the config validates them)."""
    special = {
        "sources.warcs": lambda: [warcs[:2]],
        "url_filter.blocklist": lambda: [_file(tmp, "domains", "example.com\nblocked.org\n")],
        "url_filter.banned_words_file": lambda: [_file(tmp, "banned", "interpreter\n")],
        "url_filter.soft_banned_words_file": lambda: [_file(tmp, "soft", "python\ndocs\n")],
        "url_filter.banned_subwords_file": lambda: [_file(tmp, "subwords", "library\n")],
        "url_filter.categories": lambda: [["adult", "gambling"]],
        "filter.language.languages": lambda: [["en", "de"]],
        "evaluate.prompts": lambda: [[*current, "Once"]],
        "dedup.memory_limit": lambda: ["1GB"],
        "train.device": lambda: ["cpu"],
        "train.compile": lambda: [False],
        "train.batch_tokens": lambda: [128],  # = batch_size 4 x block_size 32: one micro-batch
        "train.threads": lambda: [1],
        "train.nproc": lambda: [1],
        "dedup.threads": lambda: [1],
        "tokenizer.max_docs": lambda: [5],
        "evaluate.top_p": lambda: [0.9],
    }
    if path in special:
        return special[path]()
    ann = field.annotation
    if current is None:  # an optional number left to its default ("auto", "all cores")
        return [1, 2]
    if isinstance(current, bool):
        return [not current]
    if get_origin(ann) is Literal:
        return [c for c in get_args(ann) if c != current]
    if isinstance(current, dict):
        k = next(iter(current))
        return [{**current, k: round(current[k] * 0.5, 4)}]
    if isinstance(current, list):
        return [[*current, "zzzword"], current[:-1]]
    if isinstance(current, float):
        return [round(current * 0.8, 6), round(current * 1.2, 6), current / 2]
    if isinstance(current, int):
        return [current + 1, current - 1, current * 2, max(1, current // 2)]
    raise AssertionError(f"no candidate values for {path} = {current!r} ({ann})")


def _file(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def changed(cfg: PipelineConfig, path: str, value: Any) -> PipelineConfig | None:
    try:
        return with_value(cfg, path, value)
    except ValueError:
        return None


def identities(result) -> dict[str, dict[str | None, tuple]]:
    """Per stage, per WARC (None for corpus stages): what its output holds."""
    out: dict[str, dict[str | None, tuple]] = {}
    for line in result.lines:
        for m in line.manifests:
            out.setdefault(line.stage, {})[m.warc] = (
                m.fingerprint,
                tuple(sorted(m.counts.items())),
            )
    return out


def upstreams(stage) -> set[str]:
    ups = set()
    for t in stage.takes:
        if t.startswith("all:"):
            ups.add(t[4:])
        elif t == "funnel":
            ups |= {"url_filter", "extract", "filter"}
        elif not t.startswith("cfg.") and t not in ("source", "sources"):
            ups.add(t)
    return ups


def expected_runs(path: str, output_field: bool, base: dict, now: dict) -> dict[str, int]:
    """Task runs each stage should have made: one per WARC (or one for a corpus stage)
    whose own setting changed, whose input is new, or whose upstream output changed."""
    from fineflow.flows.stages import STAGES

    def moved(up: str, warc: str | None) -> bool:
        before, after = base.get(up, {}), now.get(up, {})
        return before.get(warc) != after.get(warc) if warc is not None else before != after

    out = {}
    for stage in STAGES:
        own = output_field and any(
            t.startswith("cfg.") and (path == t[4:] or path.startswith(t[4:] + "."))
            for t in stage.takes
        )
        n = 0
        for warc in now.get(stage.name, {}):
            new_input = stage.per_warc and warc not in base.get(stage.name, {})
            mine = warc if stage.per_warc else None
            n += bool(own or new_input or any(moved(up, mine) for up in upstreams(stage)))
        out[stage.name] = n
    return out


@pytest.fixture(scope="module")
def base(prefect_server, warcs, tmp_path_factory):
    from fineflow.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("every-field")
    cfg = small_config(root, warcs[:1])
    return cfg, identities(pipeline(cfg))


def all_leaves() -> list[str]:
    from tests.helpers.e2e import SAMPLE_WARCS

    cfg = small_config(Path("data"), [str(SAMPLE_WARCS[0])])
    return [p for p, _ in leaf_fields(cfg) if p not in NOT_HERE]


@pytest.mark.parametrize("path", all_leaves())
def test_changing_one_field_runs_exactly_the_stages_whose_inputs_changed(
    path, base, warcs, tmp_path
):
    from fineflow.flows.pipeline import pipeline

    cfg, before = base
    field = dict(leaf_fields(cfg))[path]
    value = value_at(cfg, path)
    new = None
    for candidate in candidates(path, field, value, tmp_path, warcs):
        if (new := changed(cfg, path, candidate)) is not None:
            break
    assert new is not None, f"no valid other value found for {path}"
    result = pipeline(new)
    ran = {line.stage: line.ran for line in result.lines}
    want = expected_runs(path, affects_output(field), before, identities(result))
    assert ran == want, f"{path}: ran {ran}, expected {want}; why: " + "; ".join(
        f"{ln.stage}: {ln.why}" for ln in result.lines if ln.why
    )
    shutil.rmtree(tmp_path, ignore_errors=True)
