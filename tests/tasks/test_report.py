"""The report stage: every number on the page against the artifact it comes from.

One small real run (the first pages of two sample WARCs, every stage's task called
with `.fn` and wired by flows/stages.py, as the flows wire them), then the report's
report.json is checked against the manifests, the shard headers, corpus.duckdb, the
model and eval.json, and report.html for its sections and pictures.
"""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
import torch

from fineflow.config import FilterConfig
from fineflow.flows.stages import CORPUS, PER_WARC
from fineflow.storage import catalog
from fineflow.storage.artifacts import verify
from fineflow.storage.shards import HEADER_INTS, read_shard
from fineflow.tasks import report as rep
from fineflow.tasks.download import describe_sources
from fineflow.tasks.quality import reasons
from fineflow.tasks.report_page import SECTIONS
from fineflow.tasks.tokenizer import EOT, hf_encoder, load_tokenizer, token_bytes
from fineflow.tasks.url_filter import FILTER_REASONS
from tests.helpers.e2e import SAMPLE_WARCS, head_warc, small_config


def run_stages(cfg) -> tuple[dict[str, list], dict[str, Any]]:
    """Every stage's task, in the table's order, on cfg: (per-WARC outputs, corpus outputs)."""
    root = str(cfg.data_root)
    sources = describe_sources(cfg.sources.warcs)
    columns: dict[str, list] = {}
    for stage in PER_WARC:
        columns[stage.name] = [
            stage.task.fn(root, *stage.args(cfg, {k: v[i] for k, v in columns.items()}, source=s))
            for i, s in enumerate(sources)
        ]
    out: dict[str, Any] = {}
    for stage in CORPUS:
        args = stage.args(cfg, out, columns=columns, sources=sources)
        out[stage.name] = stage.task.fn(root, *args)
    return columns, out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("warcs")
    warcs = [str(head_warc(p, d / p.name, 30)) for p in SAMPLE_WARCS[:2]]
    cfg = small_config(tmp_path_factory.mktemp("data"), warcs, report={"steps": 3, "pages": 2})
    columns, out = run_stages(cfg)
    report = json.loads(out["report"].path(cfg.data_root, rep.REPORT_JSON).read_text())
    return cfg, columns, out, report


def test_the_report_is_an_intact_artifact(run):
    cfg, _, out, report = run
    m = out["report"]
    assert m.stage == "report" and verify(cfg.data_root, m) is None
    assert {f.path for f in m.files} == {rep.REPORT_HTML, rep.REPORT_JSON}
    assert m.counts == {"pages": 2, "prompts": len(cfg.evaluate.prompts)}
    assert m.fingerprint == rep.fingerprint(report) and "speed" not in report["training"]
    # the page shows training's speed, from metrics.duckdb (report.json leaves timings out)
    page = m.path(cfg.data_root, rep.REPORT_HTML).read_text()
    with catalog.connect(out["train"].path(cfg.data_root, "metrics.duckdb"), True) as con:
        (tok_s,) = con.execute(
            "SELECT median(tokens_per_s) FROM train_log WHERE step > 1"
        ).fetchone()
    assert f"<b>{round(tok_s, 1):,.0f}</b><span>tokens / s</span>" in page


def test_crawl_numbers_are_the_manifests_counts(run):
    cfg, columns, out, report = run
    crawl = report["crawl"]
    downloads = columns["download"]
    assert crawl["warcs"] == len(downloads) == 2
    sizes = [m.path(cfg.data_root, m.warc).stat().st_size for m in downloads]
    assert crawl["bytes"] == sum(sizes) == sum(m.counts["bytes"] for m in downloads)
    assert crawl["responses"] == sum(m.counts["total"] for m in columns["url_filter"])
    kept = {s["name"]: s["kept"] for s in crawl["funnel"]}
    assert kept["URL filter"] == sum(m.counts["kept"] for m in columns["url_filter"])
    assert kept["extraction"] == sum(m.counts["kept"] for m in columns["extract"])
    assert kept["quality"] == sum(m.counts["kept"] for m in columns["filter"])
    assert kept["dedup"] == out["dedup"].counts["kept"]
    # every record is accounted for: each step keeps or drops, with a reason, what it got
    for steps in [crawl["funnel"]] + [w["steps"] for w in crawl["per_warc"]]:
        for before, step in zip(steps, steps[1:], strict=False):
            assert step["kept"] + sum(step["dropped"].values()) == before["kept"], step
            assert step["other"] == 0
    for name, stage in (("URL filter", "url_filter"), ("quality", "filter")):
        (step,) = [s for s in crawl["funnel"] if s["name"] == name]
        for reason, n in step["dropped"].items():
            assert n == sum(m.counts[f"dropped_{reason}"] for m in columns[stage])


def test_token_counts_are_the_shard_headers(run):
    cfg, _, out, report = run
    t = report["tokens"]
    header = {"train": 0, "val": 0}
    for path in out["shard"].paths(cfg.data_root, ".bin"):
        ints = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
        header[path.name.split("_")[0]] += int(ints[2])
    c = t["corpus"]
    assert (c["train_tokens"], c["val_tokens"]) == (header["train"], header["val"])
    assert header["train"] == out["shard"].counts["train_tokens"]
    with catalog.connect(out["dedup"].path(cfg.data_root, "corpus.duckdb"), True) as con:
        texts = [r[0] for r in con.execute("SELECT text FROM documents WHERE keep").fetchall()]
    assert c["docs"] == len(texts) == out["dedup"].counts["kept"]
    assert c["bytes"] == sum(len(x.encode()) for x in texts) and c["bits"] == 8 * c["bytes"]
    assert c["tokens"] + c["docs"] == c["shard_tokens"] == sum(header.values())  # + one EOT each
    assert c["bytes_per_token"] == pytest.approx(c["bytes"] / c["tokens"], abs=1e-4)
    # the paragraph: its ids are the tokenizer's, and decode back to it
    tok = load_tokenizer(out["tokenizer"].path(cfg.data_root, "tokenizer.json"))
    p = t["paragraph"]
    ids = [i for i, _ in p["pieces"]]
    assert ids == hf_encoder(tok)([p["text"]])[0] and tok.decode(ids) == p["text"]
    pieces = token_bytes(tok)
    assert b"".join(pieces[i] for i in ids) == p["text"].encode()
    assert p["bytes"] == len(p["text"].encode()) and p["tokens"] == len(ids)
    assert t["vocab_size"] == tok.get_vocab_size() == out["tokenizer"].stats["vocab_size"]
    lengths = [len(s.encode()) for _, s in t["longest"]]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > 1
    (en,) = [lang for lang in t["languages"] if lang["language"] == "en"]
    assert en["docs"] == c["docs"] and en["bytes"] == c["bytes"]  # the filter keeps English


def test_training_numbers_are_the_train_artifacts(run):
    cfg, _, out, report = run
    tr = report["training"]
    metrics = json.loads(out["train"].path(cfg.data_root, "metrics.json").read_text())
    assert tr["loss"] == {"step": metrics["step"], "train_loss": metrics["train_loss"]}
    assert tr["params"] == out["train"].stats["params"] and tr["steps"] == cfg.train.steps
    assert tr["block_size"] == cfg.train.model.block_size
    assert tr["tokens_per_step"] == cfg.train.batch_size * cfg.train.model.block_size
    assert tr["padded_vocab"] % cfg.train.model.vocab_multiple == 0
    assert tr["padded_vocab"] >= tr["vocab_size"] == report["tokens"]["vocab_size"]
    assert tr["lr"]["lr"][0] == pytest.approx(cfg.train.lr / cfg.train.warmup_steps)
    assert max(tr["lr"]["lr"]) == pytest.approx(cfg.train.lr)
    assert tr["uniform_loss"] == pytest.approx(math.log(tr["vocab_size"]), abs=1e-6)
    # the window is consecutive tokens of a train shard; the targets are the same, shifted
    ids = [i for i, _ in tr["window"]["tokens"]]
    shard = np.asarray(read_shard(out["shard"].paths(cfg.data_root, ".bin")[0]))
    starts = np.flatnonzero(shard[: len(shard) - len(ids)] == ids[0])
    assert any((shard[s : s + len(ids)] == ids).all() for s in starts)


def test_each_step_is_a_distribution_and_the_sample_is_evaluates(run):
    cfg, _, out, report = run
    inf = report["inference"]
    evaluated = json.loads(out["evaluate"].path(cfg.data_root, "eval.json").read_text())
    vocab = report["tokens"]["vocab_size"]
    tok = load_tokenizer(out["tokenizer"].path(cfg.data_root, "tokenizer.json"))
    model = rep.load_model(cfg.data_root, out["train"], torch.device("cpu"))
    for pr, sample in zip(inf["prompts"], evaluated["samples"], strict=True):
        assert pr["prompt"] == sample["prompt"] and pr["sample"] == sample["text"]
        assert 1 <= len(pr["steps"]) <= 3
        for st in [*pr["steps"], pr["before"]]:
            probs = [p for _, p, _ in st["top"]]
            assert math.fsum(probs) + st["rest"] == pytest.approx(1.0, abs=1e-9)
            assert probs == sorted(probs, reverse=True) and len(probs) == 10
        # the drawn tokens are the first the evaluate stage's sampler draws
        ids = hf_encoder(tok)([pr["prompt"]])[0]
        idx = torch.tensor([[tok.token_to_id(EOT), *ids]])
        e = cfg.evaluate
        new = model.generate(
            idx, e.max_new_tokens, e.temperature, e.top_k, e.top_p,
            generator=torch.Generator().manual_seed(e.seed),
        )[0, idx.size(1) :].tolist()  # fmt: skip
        assert [st["sampled"] for st in pr["steps"]] == new[: len(pr["steps"])]
        # step 1 recomputed from the model artifact, without the cache
        with torch.no_grad():
            logits, _ = model(idx)
        p = logits[0, -1, :vocab].double().softmax(-1)
        for tid, prob, _ in pr["steps"][0]["top"]:
            assert prob == pytest.approx(float(p[tid]), abs=1e-5)
        # the random network spreads its bets: near log2(vocab) bits of entropy
        assert pr["before"]["entropy_bits"] > math.log2(vocab) - 0.5
        assert pr["before"]["entropy_bits"] <= math.log2(vocab) + 1e-6


class _Page(HTMLParser):
    """Which elements each section holds, and any reference to another file."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.inside: dict[str, list[str]] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
            self.inside[self.section or ""] = []
        elif self.section is not None:
            self.inside[self.section].append(tag)
        if tag in ("script", "link", "iframe", "img") or (tag == "use" and "href" in a):
            self.external.append(f"<{tag} {a}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None


def test_the_page_has_every_section_with_its_pictures_and_nothing_to_fetch(run):
    cfg, _, out, report = run
    page = out["report"].path(cfg.data_root, rep.REPORT_HTML).read_text()
    parsed = _Page()
    parsed.feed(page)
    assert list(parsed.inside) == list(SECTIONS)
    for section, tags in parsed.inside.items():
        assert "svg" in tags and ("rect" in tags or "polyline" in tags), section
    assert parsed.external == [] and "@import" not in page and "url(http" not in page
    assert parsed.inside["training"].count("polyline") >= 2  # loss and learning rate
    assert parsed.inside["inference"].count("svg") >= len(cfg.evaluate.prompts) * 2
    first = report["cleaning"]["pages"][0]
    assert first["url"] in page and first["html_bytes"] > first["text_chars"] > 0
    assert f"{report['tokens']['corpus']['shard_tokens']:,}" in page


def test_cleaning_shows_real_pages_and_every_dropped_reason_has_its_rule(run):
    cfg, columns, out, report = run
    c = report["cleaning"]
    assert len(c["pages"]) == 2 and len({p["url"] for p in c["pages"]}) == 2
    for p in c["pages"]:
        assert p["html_excerpt"].lower().startswith("<body") and "<" in p["html_excerpt"]
        assert p["visible_chars"] >= p["removed_chars"] > 0  # menus and navigation went away
    reasons_seen = {d["reason"] for d in c["dropped"]}
    filtered = {
        k.removeprefix("dropped_") for m in columns["filter"] for k, v in m.counts.items() if v
    }
    assert filtered - {"kept", "total", "replaced_email", "replaced_ip"} <= reasons_seen


def test_every_drop_reason_has_a_rule_in_words():
    for reason in [*reasons(FilterConfig()), *FILTER_REASONS, "not_html", "status_404"]:
        assert rep.rule_of(f"dropped_{reason}") != reason.replace("_", " "), reason
    assert rep.rule_of("gopher_rep_dup_5gram").startswith("Gopher: repeated n-grams")
    assert rep.rule_of("gopher_rep_dup_line_frac").startswith("Gopher: too many duplicated lines")


def test_funnel_steps_name_what_the_counts_do_not_explain():
    counts = {
        "url_filter": {"total": 10, "kept": 8, "dropped_not_html": 1},
        "extract": {"total": 8, "kept": 7, "skipped_timeout": 1, "decoded_lossy": 3},
        "filter": {"total": 7, "kept": 3, "kept_language": 5, "dropped_language_other": 2,
                   "dropped_c4_curly_bracket": 2},
        "dedup": {"total": 3, "kept": 2, "dropped_duplicate": 1},
    }  # fmt: skip
    steps = {s["name"]: s for s in rep.funnel_steps(counts)}
    assert steps["URL filter"]["other"] == 1  # 10 - 8 - 1: a reason the counts lack
    assert steps["extraction"]["dropped"] == {"timeout": 1} and steps["extraction"]["other"] == 0
    assert steps["language"] == {
        "name": "language", "kept": 5, "dropped": {"language_other": 2}, "other": 0
    }  # fmt: skip
    assert steps["quality"]["dropped"] == {"c4_curly_bracket": 2}
    assert steps["dedup"]["kept"] == 2 and steps["dedup"]["other"] == 0


def test_the_funnel_artifact_stays_narrow_and_the_reasons_table_sums_the_counts(run):
    from fineflow.flows.summary import StageLine, WarcFailure, drop_reason_rows, funnel_rows

    cfg, columns, out, _ = run
    lines = [StageLine(s, 1, 0, 0.0, "", tuple(ms)) for s, ms in columns.items()]
    lines.append(StageLine("dedup", 1, 0, 0.0, "", (out["dedup"],)))
    failed = WarcFailure("gone.warc.gz", "http://x/gone.warc.gz", "download", "r" * 300)
    rows = funnel_rows(lines, cfg.data_root, (failed,))
    # numbers and names only: a long reason no longer widens every row (1,600 px)
    assert all(len(r) <= 9 for r in rows) and rows[-1] == {
        "warc": "gone.warc.gz",
        "failed at": "download",
    }
    assert max(len(str(v)) for r in rows for v in r.values()) <= 64
    reasons = drop_reason_rows(out, cfg.data_root)
    for stage in ("url_filter", "extract", "filter"):
        want = {
            k.split("_", 1)[1]: sum(m.counts[k] for m in columns[stage])
            for k in columns[stage][0].counts
            if k.startswith(("dropped_", "skipped_") if stage == "extract" else "dropped_")
        }
        got = {r["reason"]: r["pages"] for r in reasons if r["stage"] == stage}
        assert got == {k: v for k, v in want.items() if v}, stage
