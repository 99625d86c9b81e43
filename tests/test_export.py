"""Export: a trained train artifact loads in transformers and gives fineflow's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from test_train import DOCS, make_upstream, tiny_train_config

from fineflow.export import export, hf_state_dict, main
from fineflow.model import GPT
from tasks.tokenizer import EOT
from tasks.train import train_model


def test_exported_model_and_tokenizer_match_fineflow(tmp_path: Path) -> None:
    tokenizer, shards, tok = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    cfg = tiny_train_config(steps=20, log_every=10, warmup_steps=2)
    manifest = train_model.fn(str(tmp_path), shards, tokenizer, cfg)
    train_dir = tmp_path / manifest.dir
    out = tmp_path / "hf"
    assert main([str(train_dir), str(out)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == tok.get_vocab_size() == 320  # padding (384) dropped
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "SELECT name FROM products WHERE the Python interpreter reads"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text).ids and hf_tok.eos_token == EOT
    assert hf_tok.decode(ids) == text

    ours = GPT.from_spec(json.loads((train_dir / "config.json").read_text())["model"])
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


def test_model_without_qk_norm_is_refused(tmp_path: Path) -> None:
    model = GPT(tiny_train_config().model, 64, qk_norm=False)
    with pytest.raises(ValueError, match="QK-norm"):
        hf_state_dict(model)
    assert export  # the function the CLI entry calls
