"""shard: the llm.c file format, uint16/uint32, rollover, the split, EOT framing, the task."""

from __future__ import annotations

import argparse
import collections
import csv
import importlib.util
import inspect
import json
import logging
import pathlib
import re
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fineflow.tasks.shard as shard
from fineflow.config import ShardConfig, TokenizerConfig
from fineflow.storage.artifacts import Manifest
from fineflow.storage.shards import HEADER_BYTES, MAGIC, read_shard, write_shard
from fineflow.tasks.shard import Split, id_fraction, shard_tokens
from fineflow.tasks.tokenizer import TOKENIZER_JSON, hf_encoder, load_tokenizer, train_tokenizer
from tests.helpers.e2e import corpus_manifest

# --------------------------------------------------------------------- the file format


def test_header_and_uint16(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    tokens = np.array([0, 1, 4095, 17, 3], dtype=np.int64)
    write_shard(path, tokens, vocab_size=4096)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [MAGIC, 1, 5] and not header[3:].any()
    assert path.stat().st_size == HEADER_BYTES + 5 * 2
    got = read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    assert got.tolist() == tokens.tolist()


def test_uint32_above_65536_ids(tmp_path: Path) -> None:
    path = tmp_path / "b.bin"
    tokens = np.array([0, 65535, 65536, 99_999], dtype=np.int64)
    write_shard(path, tokens, vocab_size=100_000)
    assert np.fromfile(path, dtype="<i4", count=3).tolist() == [MAGIC, 2, 4]
    assert path.stat().st_size == HEADER_BYTES + 4 * 4
    got = read_shard(path)
    assert got.dtype == np.uint32 and got.tolist() == tokens.tolist()
    write_shard(path, np.array([65535]), vocab_size=65536)  # the largest uint16 vocab
    assert read_shard(path).dtype == np.uint16


def test_write_shard_rejects_bad_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[0, 4096\)"):
        write_shard(tmp_path / "x.bin", np.array([1, 4096]), vocab_size=4096)
    with pytest.raises(ValueError, match="non-empty"):
        write_shard(tmp_path / "x.bin", np.array([], dtype=np.int64), vocab_size=4096)


def test_read_shard_names_the_broken_file(tmp_path: Path) -> None:
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(10), vocab_size=4096)
    raw = good.read_bytes()
    cases = {
        "short.bin": (raw[:100], "shorter than"),
        "truncated.bin": (raw[:-2], "truncated or corrupt"),
        "magic.bin": (np.int32(7).tobytes() + raw[4:], "magic 7"),
        "version.bin": (raw[:4] + np.int32(9).tobytes() + raw[8:], "unknown shard version 9"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}.*{message}"):
            read_shard(tmp_path / name)


# --------------------------------------------------------------------- the split


def test_split_depends_only_on_the_id() -> None:
    ids = [f"doc-{i}" for i in range(2000)]
    a = Split.plan(ids, 0.2)
    b = Split.plan(reversed(ids), 0.2)
    val = [i for i in ids if a.is_val(i)]
    assert val == [i for i in ids if b.is_val(i)]
    assert 300 < len(val) < 500  # about 20%
    assert all((id_fraction(i) < 0.2) == a.is_val(i) for i in ids)
    assert id_fraction("doc-1") == id_fraction("doc-1") and 0 <= id_fraction("x") < 1


def test_near_duplicates_go_to_one_split_by_their_cluster(tmp_path: Path) -> None:
    """A corpus that keeps near-duplicates (dedup off): a cluster's copies all go where its
    first document goes, so no copy of a val document is trained on."""
    docs = _docs()[:12]
    copies = [(f"{i}-copy", t + " (copy)", True) for i, t, keep in docs if keep]
    corpus = corpus_manifest(tmp_path, docs + copies, clusters={f"{i}-copy": i for i, _, _ in docs})
    tok = train_tokenizer.fn(str(tmp_path), corpus, TokenizerConfig(vocab_size=300))
    cfg = ShardConfig(shard_tokens=1 << 16, val_fraction=0.3)
    m = shard_tokens.fn(str(tmp_path), corpus, tok, cfg)
    split = Split.plan([i for i, _, keep in docs if keep], cfg.val_fraction)
    n_val = sum(split.is_val(i) for i, _, keep in docs if keep)
    assert n_val > 0 and m.counts["val_docs"] == 2 * n_val  # each with its copy
    assert m.counts["train_docs"] == 2 * (sum(k for *_, k in docs) - n_val)


def test_each_split_gets_a_document_when_there_are_two() -> None:
    ids = ["first", "second"]
    few = Split.plan(ids, 1e-9)  # no id hashes that low
    assert sum(few.is_val(i) for i in ids) == 1
    most = Split.plan(ids, 1 - 1e-9)  # every id hashes that low
    assert sum(most.is_val(i) for i in ids) == 1
    assert not any(Split.plan(["only"], 1e-9).is_val(i) for i in ["only"])


# --------------------------------------------------------------------- the stage

MODULES = (argparse, collections, csv, inspect, json, logging, pathlib, re, subprocess, textwrap)


def _docs() -> list[tuple[str, str, bool]]:
    """Real English (stdlib docstrings), one document per documented object."""
    docs = []
    for m in MODULES:
        for name, obj in sorted(vars(m).items()):
            doc = inspect.getdoc(obj) if not name.startswith("_") else None
            if doc and len(doc) > 200 and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append((f"{m.__name__}.{name}", doc, True))
    docs.insert(3, ("typed-eot", "A page that mentions <|endoftext|> in its text.", True))
    docs.insert(5, ("dropped", "zqxj " * 300, False))
    return docs


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    docs = _docs()
    corpus = corpus_manifest(root, docs)
    tok = train_tokenizer.fn(str(root), corpus, TokenizerConfig(vocab_size=512))
    cfg = ShardConfig(shard_tokens=1024, val_fraction=0.2, batch_docs=16)
    return root, docs, corpus, tok, cfg, shard_tokens.fn(str(root), corpus, tok, cfg)


def _stream(root: Path, m: Manifest, split: str) -> tuple[list[Path], np.ndarray]:
    paths = sorted(p for p in m.paths(root, ".bin") if p.name.startswith(split + "_"))
    return paths, np.concatenate([read_shard(p) for p in paths])


def test_shards_hold_every_kept_document_framed_by_eot(staged) -> None:
    root, docs, _, tok_m, cfg, m = staged
    tok = load_tokenizer(tok_m.path(root, TOKENIZER_JSON))
    encode = hf_encoder(tok)
    kept = [(i, t) for i, t, keep in docs if keep]
    split = Split.plan([i for i, _ in kept], cfg.val_fraction)
    for name in ("train", "val"):
        texts = [t for i, t in kept if split.is_val(i) == (name == "val")]
        expected = [x for ids in encode(texts) for x in [0, *ids]]
        _, stream = _stream(root, m, name)
        assert stream.tolist() == expected  # corpus order, each doc preceded by EOT
        assert int((stream == 0).sum()) == len(texts) == m.counts[f"{name}_docs"]
        assert stream.size == m.counts[f"{name}_tokens"]
        assert tok.decode(stream.tolist()) == "".join(texts)
    assert m.counts["train_docs"] + m.counts["val_docs"] == len(kept)
    assert m.counts["val_docs"] >= 3 and m.counts["train_docs"] > m.counts["val_docs"]


def test_shards_roll_over_at_shard_tokens(staged) -> None:
    root, _, _, _, cfg, m = staged
    for name in ("train", "val"):
        paths, _ = _stream(root, m, name)
        assert [p.name for p in paths] == [f"{name}_{i:06d}.bin" for i in range(len(paths))]
        sizes = [read_shard(p).size for p in paths]
        assert all(s == cfg.shard_tokens for s in sizes[:-1]) and 0 < sizes[-1] <= 1024
    assert len(_stream(root, m, "train")[0]) >= 3
    assert m.counts["shards"] == len(m.paths(root, ".bin"))
    assert m.stats["vocab_size"] == 512 and m.stats["eot_id"] == 0
    assert m.stats["token_dtype"] == "uint16"


def test_rerun_and_encoders_give_identical_shards(staged, monkeypatch) -> None:
    root, _, corpus, tok, cfg, m = staged
    again = shard_tokens.fn(str(root), corpus, tok, cfg)
    assert again.fingerprint == m.fingerprint and again.counts == m.counts
    if importlib.util.find_spec("tiktoken"):  # then the first run used it
        tokenizer = load_tokenizer(tok.path(root, TOKENIZER_JSON))
        assert shard.pick_encoder(tokenizer, ["a sample"])[1] == "tiktoken"
    monkeypatch.setattr(shard, "tiktoken_encoder", lambda tokenizer: None)
    hf_only = shard_tokens.fn(str(root), corpus, tok, cfg)
    assert hf_only.fingerprint == m.fingerprint and hf_only == m


def test_split_of_the_stage_is_stable_across_batch_sizes(staged) -> None:
    root, _, corpus, tok, cfg, m = staged
    other = shard_tokens.fn(str(root), corpus, tok, cfg.model_copy(update={"batch_docs": 5}))
    # batch_docs is declared runtime: the same key, and the same bytes
    assert other.key == m.key and other.fingerprint == m.fingerprint
    assert [f.sha256 for f in other.files] == [f.sha256 for f in m.files]
