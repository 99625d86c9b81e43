"""A tiny training setup shared by the train, evaluate, export and compile tests.

DOCS (a few lines of mixed prose, code and non-Latin text), TINY (a 2-layer model),
tiny_train_config (a CPU TrainConfig of a dozen steps) and make_upstream (a tokenizer
trained in-process, llm.c shards, their manifests: what the train stage takes).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from fineflow.config import ModelConfig, TrainConfig
from fineflow.storage.artifacts import ArtifactWriter, Manifest
from fineflow.storage.shards import write_shard
from fineflow.tasks.shard import encode_docs
from fineflow.tasks.tokenizer import EOT, TOKENIZER_JSON, hf_encoder, train_bpe

DOCS = [
    "The Python interpreter reads a script and runs it line by line.",
    "A database is an organised collection of data, stored and accessed electronically.",
    "SELECT name, price FROM products WHERE price > 10 ORDER BY price;",
    "Les données sont écrites en UTF-8 — même les caractères accentués.",
    "Every module opens with a docstring that says what goes in and what comes out.",
    "日本語のテキストも三バイトの文字として数えられる。",
    "Checkpoints are written atomically: to a temporary name first, then renamed.",
]
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


def tiny_train_config(**overrides: object) -> TrainConfig:
    base = dict(
        model=TINY,
        steps=12,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=4,
        log_every=3,
        device="cpu",
    )
    return TrainConfig(**{**base, **overrides})


def make_upstream(
    root: Path, train_docs: list[str], val_docs: list[str]
) -> tuple[Manifest, Manifest, Tokenizer]:
    """Tokenizer and shard artifacts in `root`, made with the upstream stages' helpers."""
    tok = train_bpe(train_docs + val_docs, vocab_size=320)
    eot, vocab_size = tok.token_to_id(EOT), tok.get_vocab_size()
    stats = {"vocab_size": vocab_size, "eot_id": eot}
    with ArtifactWriter(root, "tokenizer", "tok-fixture") as out:
        tok.save(str(out.path(TOKENIZER_JSON)))
        tokenizer = out.commit(None, stats=stats)
    with ArtifactWriter(root, "shard", "shard-fixture") as out:
        for split, docs in (("train", train_docs), ("val", val_docs)):
            ids = encode_docs(hf_encoder(tok), docs, eot)
            write_shard(out.path(f"{split}_000000.bin"), ids, vocab_size)
        shards = out.commit(None, stats={**stats, "token_dtype": "uint16"})
    return tokenizer, shards, tok
