"""The ablation flow end to end on a small real corpus: shared stages run once across
variants, every model is scored on documents no variant trained on, equal budgets, a
rerun is all cached, and a spec whose evaluation documents leak into training is refused
before anything trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineflow.ablation import BASE, AblationSpec
from fineflow.tasks.dedup import CORPUS_DB
from fineflow.tasks.yardstick import read_eval, split_docs

TINY = {
    "tokenizer": {"vocab_size": 512},
    "train": {
        "warmup_steps": 2,
        "batch_size": 4,
        "log_every": 4,
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
    },
    "evaluate": {"max_new_tokens": 8, "max_val_tokens": 4096},
}
VARIANTS = {
    "no-quality": {
        "filter.gopher_quality.enabled": False,
        "filter.gopher_repetition.enabled": False,
        "filter.c4.enabled": False,
        "filter.fineweb.enabled": False,
    },
    "no-dedup": {"dedup.enabled": False},
}


def make_spec(root: Path, warcs: list[str], **over) -> AblationSpec:
    tree = {
        "name": "test",
        "base": {**TINY, "data_root": str(root), "sources": {"warcs": warcs}},
        "variants": VARIANTS,
        "seeds": 2,
        "tokens": 1280,  # 10 steps of 4 x 32 tokens
        "eval": {"fraction": 0.3},
        "choice": {"items": 20, "choices": 3, "min_chars": 20},
        **over,
    }
    return AblationSpec.model_validate(tree)


def totals(result) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for line in result.lines:
        ran, cached = out.get(line.stage, (0, 0))
        out[line.stage] = (ran + line.ran, cached + line.cached)
    return out


@pytest.fixture(scope="module")
def ablated(prefect_server, warcs, tmp_path_factory):
    from fineflow.flows.ablate import ablate

    root = tmp_path_factory.mktemp("ablate")
    spec = make_spec(root, warcs)
    return root, spec, ablate(spec), ablate(spec)


def test_stages_a_variant_does_not_change_run_once_for_all(ablated, warcs):
    _, _, first, _ = ablated
    n, runs = len(warcs), totals(first)
    for stage in ("download", "url_filter", "extract"):  # no variant changes them
        assert runs[stage] == (n, 2 * n), stage
    # filter and minhash: base's, then no-quality's; no-dedup shares base's
    assert runs["filter"] == (2 * n, n) and runs["minhash"] == (2 * n, n)
    assert runs["dedup"] == (3, 0)  # three corpora
    assert runs["tokenizer"] == (1, 0)  # shared: trained once, on the base corpus
    assert runs["shard"] == (3, 0)
    assert runs["train"] == (6, 0) and runs["score"] == (6, 0)  # 3 variants x 2 seeds


def test_every_model_is_scored_on_documents_no_variant_trained_on(ablated):
    root, spec, first, _ = ablated
    eval_rows = read_eval(root, first.eval_set)
    eval_ids = {i for i, _, _ in eval_rows}
    eval_texts = {t for _, _, t in eval_rows}
    assert eval_ids
    for run in first.runs:
        db = run.corpus.path(root, CORPUS_DB)
        train = [r for rows in split_docs(db, spec.eval.fraction, val=False) for r in rows]
        assert train, run.name
        assert not eval_ids & {i for i, _, _ in train}, run.name
        assert not eval_texts & {t for _, _, t in train}, run.name
        assert run.leaks.counts["same_id"] == run.leaks.counts["near_duplicate"] == 0
        assert run.leaks.counts["train_docs"] == len(train)
    # the no-quality corpus is a superset of base's and still holds the eval documents out
    sizes = {r.name: r.corpus.counts["kept"] for r in first.runs}
    assert sizes["no-quality"] > sizes[BASE] and sizes["no-dedup"] >= sizes[BASE]


def test_equal_budgets_and_a_report_of_every_variant(ablated):
    root, spec, first, _ = ablated
    rep = json.loads(first.report.path(root, "report.json").read_text())
    assert [v["variant"] for v in rep["variants"]] == [BASE, "no-quality", "no-dedup"]
    for v in rep["variants"]:
        assert v["tokens_trained"] == [1280, 1280]  # the same budget for every model
        assert v["epochs"] == pytest.approx(1280 / v["train_tokens"], abs=1e-3)
        assert len(v["bits_per_byte"]) == 2 and all(0 < b < 10 for b in v["bits_per_byte"])
        assert all(0 <= a <= 1 for a in v["choice_accuracy"])
        assert v["leaks"] == 0
    assert rep["choice"]["chance"] == pytest.approx(1 / 3)
    html = first.report.path(root, "report.html").read_text()
    assert all(name in html for name in (BASE, "no-quality", "no-dedup"))
    assert "<svg" in html and "<script" not in html


def test_a_rerun_is_all_cached(ablated):
    _, _, first, again = ablated
    assert {stage: ran for stage, (ran, _) in totals(again).items() if ran} == {}
    assert again.report.fingerprint == first.report.fingerprint


def test_a_spec_whose_evaluation_documents_are_trained_on_is_refused(ablated, tmp_path):
    from fineflow.flows.ablate import LeakingSpec, ablate

    root, spec, first, _ = ablated
    # eval.texts holding a document of the base's train split, one word changed
    db = first.runs[0].corpus.path(root, CORPUS_DB)
    train = [t for rows in split_docs(db, spec.eval.fraction, val=False) for _, _, t in rows]
    words = train[0].split(" ")
    words[len(words) // 2] = "changed"
    texts = tmp_path / "eval.jsonl"
    texts.write_text(json.dumps({"text": " ".join(words)}) + "\n")
    trained_before = sorted(p.name for p in (root / "train").iterdir())
    leaky = spec.model_copy(update={"eval": spec.eval.model_copy(update={"texts": texts})})
    with pytest.raises(LeakingSpec) as err:
        ablate(leaky)
    said = str(err.value)
    assert "held-out documents in training data" in said
    assert all(f"{name}: 0 by id, 1 near-duplicate" in said for name in (BASE, "no-dedup"))
    assert sorted(p.name for p in (root / "train").iterdir()) == trained_before  # none trained
