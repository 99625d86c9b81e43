"""A tokenizer of real size: more than 65,536 ids, from the tokenizer stage to the export.

The `real` preset asks for 100,000 ids; the bundled sample stops far below 65,536, so
here the tokenizer stage trains on synthetic text that holds enough distinct words:
70,000 four-letter words, each twice (every pair a merge may take is seen at least
twice), which a byte-level BPE turns into about 79,000 ids in a second. Then the real
shard, train and export code: uint32 shards (version 2) that read back to the
documents, an embedding padded to a multiple of 64 rows, an export that drops the
padding and a transformers tokenizer that gives the same ids above 65,535.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from fineflow.config import ModelConfig, ShardConfig, TokenizerConfig
from fineflow.storage.shards import HEADER_INTS, read_shard
from fineflow.tasks.shard import shard_tokens
from fineflow.tasks.tokenizer import EOT, TOKENIZER_JSON, load_tokenizer, train_tokenizer
from fineflow.tasks.train import train_model
from tests.helpers.e2e import corpus_manifest
from tests.helpers.training import tiny_train_config

WORDS = 70_000
WORDS_PER_DOC = 500


def four_letters(i: int) -> str:
    out = ""
    for _ in range(4):
        out += string.ascii_lowercase[i % 26]
        i //= 26
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    words = [four_letters(7 * i + 3) for i in range(WORDS)]  # 7 is prime to 26: distinct
    texts = [" ".join(words[j : j + WORDS_PER_DOC]) for j in range(0, WORDS, WORDS_PER_DOC)]
    docs = [(f"doc{n:03d}", t, True) for n, t in enumerate(texts + texts)]
    corpus = corpus_manifest(root, docs)
    tokenizer = train_tokenizer.fn(str(root), corpus, TokenizerConfig(vocab_size=100_000))
    shards = shard_tokens.fn(str(root), corpus, tokenizer, ShardConfig(val_fraction=0.1))
    return root, docs, tokenizer, shards


def test_the_vocabulary_passes_65536_and_the_shards_are_uint32(big):
    root, docs, tokenizer, shards = big
    vocab = tokenizer.stats["vocab_size"]
    assert 65_536 < vocab <= 100_000
    assert shards.stats == {"vocab_size": vocab, "eot_id": 0, "token_dtype": "uint32"}
    tok = load_tokenizer(tokenizer.path(root, TOKENIZER_JSON))
    texts = {t for _, t, _ in docs}
    seen = []
    for path in shards.paths(root, ".bin"):
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
        tokens = read_shard(path)
        assert header[1] == 2 and tokens.dtype == np.dtype("<u4")
        assert header[2] == len(tokens) == path.stat().st_size // 4 - HEADER_INTS
        ids = np.asarray(tokens)
        assert ids.max() > 65_535 and ids.max() < vocab
        bounds = np.flatnonzero(ids == tok.token_to_id(EOT)).tolist() + [len(ids)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            seen.append(tok.decode(ids[a + 1 : b].tolist()))  # each document, as it was
    assert sorted(seen) == sorted(t for _, t, _ in docs) and set(seen) == texts
    counts = shards.counts
    assert counts["train_tokens"] + counts["val_tokens"] == sum(
        len(read_shard(p)) for p in shards.paths(root, ".bin")
    )


def test_the_model_pads_the_embedding_and_the_export_drops_the_padding(big, tmp_path: Path):
    import transformers
    from safetensors.torch import load_file

    from fineflow.export import export

    root, _, tokenizer, shards = big
    vocab = tokenizer.stats["vocab_size"]
    model = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    cfg = tiny_train_config(steps=3, warmup_steps=1, log_every=1, checkpoint_every=3, model=model)
    trained = train_model.fn(str(root), shards, tokenizer, cfg)
    weights = torch.load(trained.path(root, "model.pt"), weights_only=True)
    padded = -(-vocab // 64) * 64
    assert weights["wte.weight"].shape == (padded, 16) and padded > vocab
    assert weights["lm_head.weight"].shape == (padded, 16)

    out = export(trained.path(root, "model.pt").parent, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == vocab
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.embed_tokens.weight"].shape == (vocab, 16)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(tokenizer.path(root, TOKENIZER_JSON))
    text = ours.decode(list(range(vocab - 50, vocab)))  # the last merges: whole words
    ids = hf_tok(text)["input_ids"]
    assert ids == ours.encode(text).ids and max(ids) > 65_535
