"""Export: a trained train artifact loads in transformers and gives fineflow's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from fineflow.export import hf_state_dict, main
from fineflow.model import GPT
from fineflow.tasks.tokenizer import EOT
from fineflow.tasks.train import train_model
from tests.helpers.training import DOCS, make_upstream, tiny_train_config


@pytest.mark.parametrize(
    "options,architecture",
    [
        ({}, "Qwen3ForCausalLM"),  # the default: QK-norm, squared ReLU
        ({"mlp": "swiglu"}, "Qwen3ForCausalLM"),
        ({"qk_norm": False}, "LlamaForCausalLM"),
        ({"qk_norm": False, "mlp": "swiglu"}, "LlamaForCausalLM"),
    ],
)
def test_exported_model_and_tokenizer_match_fineflow(
    tmp_path: Path, options: dict[str, object], architecture: str
) -> None:
    tokenizer, shards, tok = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    model_cfg = tiny_train_config().model.model_copy(update=options)
    cfg = tiny_train_config(steps=20, log_every=10, warmup_steps=2, model=model_cfg)
    manifest = train_model.fn(str(tmp_path), shards, tokenizer, cfg)
    train_dir = tmp_path / manifest.dir
    out = tmp_path / "hf"
    assert main([str(train_dir), str(out)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == tok.get_vocab_size() == 320  # padding (384) dropped
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == architecture
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "SELECT name FROM products WHERE the Python interpreter reads"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text).ids and hf_tok.eos_token == EOT
    assert hf_tok.decode(ids) == text

    ours = GPT.from_spec(json.loads((train_dir / "config.json").read_text())["model"])
    assert ours.config == model_cfg
    ours.load_state_dict(torch.load(train_dir / "model.pt", weights_only=True))
    ours.eval()
    idx = torch.tensor([[tok.token_to_id(EOT), *ids]])[:, :16]
    with torch.no_grad():
        want = ours(idx)[0][..., : ours.vocab_size]
        got = hf(idx).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert want.std() > 0.1  # trained logits, not a flat distribution

    with torch.no_grad():  # greedy generation agrees too, the HF KV cache included
        mine = ours.generate(idx[:, :4], 8, temperature=0)
        theirs = hf.generate(idx[:, :4], max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(mine, theirs)


def test_a_spec_saved_before_the_model_options_loads_as_the_default_model() -> None:
    """config.json of a model trained before `mlp` existed: relu2 with QK-norm, as then."""
    old = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_multiple": 64}
    model = GPT.from_spec({**old, "vocab_size": 64, "qk_norm": True})
    assert model.config.mlp == "relu2" and model.config.qk_norm
    assert set(hf_state_dict(model)) >= {"model.layers.0.self_attn.q_norm.weight"}


def test_bad_model_dirs_and_export_targets_get_a_clear_refusal(tmp_path: Path, capsys) -> None:
    """`fineflow sample` / `export` on damaged files, or into a directory not to write."""
    from fineflow.cli import main as cli

    tokenizer, shards, _ = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    manifest = train_model.fn(str(tmp_path), shards, tokenizer, tiny_train_config(steps=3))
    train_dir = tmp_path / manifest.dir
    before = {p.name: p.read_bytes() for p in train_dir.iterdir()}

    # into the train artifact itself: refused before its config.json is overwritten
    assert cli(["export", str(train_dir), "--model", str(train_dir)]) == 2
    assert "holds files an export does not write" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in train_dir.iterdir()} == before
    # into a directory holding someone's files: refused, nothing mixed in
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli(["export", str(mine), "--model", str(train_dir)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # an earlier export is replaced whole; no scratch directory is left beside it
    out = tmp_path / "hf"
    assert cli(["export", str(out), "--model", str(train_dir)]) == 0
    (out / "model.safetensors").write_bytes(b"stale")
    assert cli(["export", str(out), "--model", str(train_dir)]) == 0
    assert (out / "model.safetensors").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")) == []

    # damaged files: exit 2 naming the file, not a traceback from json, tokenizers or torch
    for name, junk, says in (
        ("tokenizer.json", "{not json", "tokenizer.json"),
        ("model.pt", "not a zip", "does not hold a loadable model"),
        ("config.json", "{}", "config.json"),
    ):
        bad = tmp_path / f"bad-{name}"
        bad.mkdir()
        for p in train_dir.iterdir():
            (bad / p.name).write_bytes(p.read_bytes())
        (bad / name).write_text(junk)
        assert cli(["sample", "x", "--model", str(bad)]) == 2
        assert says in capsys.readouterr().err
        assert cli(["export", str(tmp_path / f"out-{name}"), "--model", str(bad)]) == 2
        assert says in capsys.readouterr().err
        assert not (tmp_path / f"out-{name}").exists()
    assert main([str(tmp_path / "bad-model.pt"), str(tmp_path / "m")]) == 2  # python -m ...
    assert "does not hold a loadable model" in capsys.readouterr().err
