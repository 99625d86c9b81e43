"""The evaluate stage: bits per byte by hand, the report, the task itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fineflow.config import EvaluateConfig, ModelConfig
from fineflow.model import GPT
from fineflow.storage.artifacts import verify
from fineflow.tasks.evaluate import evaluate_model, render_report, val_metrics
from fineflow.tasks.shard import encode_docs
from fineflow.tasks.tokenizer import EOT, hf_encoder, token_byte_lengths, train_bpe
from fineflow.tasks.train import train_model
from tests.helpers.training import DOCS, make_upstream, tiny_train_config


def test_uniform_model_gives_hand_computed_bits_per_byte() -> None:
    tok = train_bpe(DOCS, vocab_size=320)
    eot, vocab = tok.token_to_id(EOT), tok.get_vocab_size()
    ids = encode_docs(hf_encoder(tok), DOCS, eot)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), vocab)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit is 0: every token costs ln(V)
    m = val_metrics(model, [ids], token_byte_lengths(tok), eot, torch.device("cpu"))

    text_targets = len(ids) - 1 - (len(DOCS) - 1)  # all but the first token; minus eots
    text_bytes = sum(len(d.encode()) for d in DOCS)
    assert m["val_tokens"] == len(ids) - 1 and m["val_text_tokens"] == text_targets
    assert m["val_bytes"] == text_bytes
    assert m["val_loss"] == pytest.approx(math.log(vocab))
    expected = math.log(vocab) / math.log(2) * text_targets / text_bytes
    assert m["bits_per_byte"] == pytest.approx(expected)

    capped = val_metrics(model, [ids], token_byte_lengths(tok), eot, torch.device("cpu"), 20)
    assert capped["val_tokens"] == 20


def test_report_fences_survive_backticks() -> None:
    figures = {
        "params": 10,
        "steps": 2,
        "tokens_seen": 64,
        "final_train_loss": 3.0,
        "val_loss": 1.0,
        "bits_per_byte": 2.0,
        "val_tokens": 3,
        "val_bytes": 4,
    }
    report = render_report(figures, EvaluateConfig(prompts=["code"]), ["code ``` inside"])
    assert "````text\ncode ``` inside\n````" in report
    assert "| bits per byte | 2.0000 (4 bytes) |" in report


def test_evaluate_model_task(tmp_path: Path) -> None:
    tokenizer, shards, tok = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    model = train_model.fn(
        str(tmp_path), shards, tokenizer, tiny_train_config(steps=30, log_every=10)
    )
    cfg = EvaluateConfig(prompts=["The Python", "A database\nis"], max_new_tokens=12, top_k=5)
    manifest = evaluate_model.fn(str(tmp_path), model, shards, tokenizer, cfg)

    assert manifest.stage == "evaluate" and verify(tmp_path, manifest) is None
    assert {f.path for f in manifest.files} == {"report.md", "eval.json", "loss.png"}
    png = manifest.path(tmp_path, "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    val_ids = encode_docs(hf_encoder(tok), DOCS[:3], 0)
    assert manifest.counts == {"val_tokens": len(val_ids) - 1}
    ev = json.loads(manifest.path(tmp_path, "eval.json").read_text())
    assert ev["val_loss"] == manifest.stats["val_loss"] < math.log(tok.get_vocab_size())
    assert ev["bits_per_byte"] == manifest.stats["bits_per_byte"] > 0
    assert ev["val_bytes"] == sum(len(d.encode()) for d in DOCS[:3])
    assert ev["steps"] == 30 and ev["final_train_loss"] == model.stats["final_train_loss"]
    samples = [s["text"] for s in ev["samples"]]
    assert samples[0].startswith("The Python") and samples[1].startswith("A database\nis")
    assert manifest.stats["first_sample"] == samples[0].replace("\n", " ")[:80]

    report = manifest.path(tmp_path, "report.md").read_text()
    assert f"{manifest.stats['bits_per_byte']:.4f}" in report
    assert f"| training steps | 30 ({model.counts['tokens_seen']:,} tokens) |" in report
    assert f"```text\n{samples[1]}\n```" in report
    assert "![loss curve](loss.png)" in report and "top-p None" in report

    again = evaluate_model.fn(str(tmp_path), model, shards, tokenizer, cfg)  # seeded: same bytes
    assert again.fingerprint == manifest.fingerprint
    other = cfg.model_copy(update={"seed": 1, "max_val_tokens": 10})
    changed = evaluate_model.fn(str(tmp_path), model, shards, tokenizer, other)
    assert changed.counts == {"val_tokens": 10}
    assert json.loads(changed.path(tmp_path, "eval.json").read_text())["samples"] != ev["samples"]


def test_report_is_published_as_a_prefect_markdown_artifact(prefect_server) -> None:
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from fineflow.tasks.evaluate import loss_curve_png, publish_report

    png = loss_curve_png([1, 10, 20], [5.0, 4.0, 3.5], 3.7)
    report = "# fineflow: evaluation\n\n![loss curve](loss.png)\n"

    @task
    def publish() -> None:
        publish_report(report, png, "k1")

    @flow
    def run() -> None:
        publish()

    publish_report(report, png, "outside")  # outside a run: nothing, no error
    run()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fineflow-report"]))
        )
    ours = [a for a in found if "evaluate k1" in (a.description or "")]
    assert len(ours) == 1 and ours[0].type == "markdown"  # other tests' runs publish too
    assert "![loss curve](data:image/png;base64," in ours[0].data
