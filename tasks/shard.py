"""shard: kept documents + tokenizer.json -> `train_NNNNNN.bin`, `val_NNNNNN.bin` token shards.

Corpus stage. Documents are read in corpus order, `batch_docs` at a time, encoded in
batches (tiktoken where installed and agreeing with HF on the first batch, ~2x faster;
else HF's multi-threaded `encode_batch`), each preceded by `<|endoftext|>` (a literal
"<|endoftext|>" inside a text stays text), and streamed into shards of exactly
`shard_tokens` tokens (the last of each split is shorter; documents may span two shards).
A document goes to val iff blake2b(cluster id) / 2^64 < val_fraction (default 0.05): the
split is by near-duplicate cluster (dedup's cluster_id, the id of its first document,
which is a kept document's own id unless it joined a cluster), so a corpus that keeps
near-duplicates (dedup.enabled false) never has one copy in train and another in val,
and it depends on nothing but the clusters; an ablation's held-out documents are the
val split of its base corpus (flows/ablate.py). With two or more clusters each split
gets at least one, and a corpus of one document is refused (a split without data would
only fail at evaluation, after training).

Progress: every 4 s the MB encoded and MB/s, and one closing line with the token counts
(fineflow.progress: the terminal and the task's log in the UI).

Shard layout (llm.c): header of 256 little-endian int32 = [20240520, version, n_tokens,
0, ...], then n_tokens tokens: version 1 = uint16 (vocab <= 65536), version 2 = uint32.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from prefect import task
from tokenizers import Tokenizer

from fineflow.config import ShardConfig
from fineflow.progress import Ticker
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.storage.shards import DTYPES, shard_version, write_shard
from fineflow.tasks.dedup import CORPUS_DB, iter_kept_ids, iter_kept_texts
from fineflow.tasks.tokenizer import (
    EOT,
    TOKENIZER_JSON,
    Encoder,
    hf_encoder,
    load_tokenizer,
    tiktoken_encoder,
)

STAGE_VERSION = 2  # 2: a corpus with an empty train or val split is refused
SPLIT_KEY = "cluster_id"  # what decides a document's split (module docstring)
log = logging.getLogger("fineflow.shard")


def id_fraction(doc_id: str) -> float:
    """A stable pseudo-random number in [0, 1) for a document id."""
    digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Split:
    """Which documents go to val: by the hash of their key (the shard stage: cluster id), with
    one forced each way when a split is empty."""

    val_fraction: float
    force_val: str | None = None
    force_train: str | None = None

    @classmethod
    def plan(cls, ids: Iterable[str], val_fraction: float) -> Split:
        """One pass over all ids (no texts) to find the fallbacks for an empty split."""
        n = n_val = 0
        lowest: tuple[float, str] | None = None
        highest: tuple[float, str] | None = None
        for doc_id in ids:
            u = (id_fraction(doc_id), doc_id)
            n += 1
            n_val += u[0] < val_fraction
            lowest = u if lowest is None or u < lowest else lowest
            highest = u if highest is None or u > highest else highest
        if n < 2 or lowest is None or highest is None:
            return cls(val_fraction)
        if n_val == 0:
            return cls(val_fraction, force_val=lowest[1])
        if n_val == n:
            return cls(val_fraction, force_train=highest[1])
        return cls(val_fraction)

    def is_val(self, doc_id: str) -> bool:
        if doc_id == self.force_val:
            return True
        if doc_id == self.force_train:
            return False
        return id_fraction(doc_id) < self.val_fraction


def corpus_split(db_path: Path, val_fraction: float) -> Split:
    """The split of a corpus's kept documents: by cluster id (module docstring)."""
    return Split.plan(chain.from_iterable(iter_kept_ids(db_path, key=SPLIT_KEY)), val_fraction)


class ShardStream:
    """Appends tokens to `<prefix>_NNNNNN.bin` files of exactly `shard_tokens` tokens each."""

    def __init__(
        self, path_for: Callable[[str], Path], prefix: str, shard_tokens: int, vocab_size: int
    ) -> None:
        self.path_for, self.prefix, self.vocab_size = path_for, prefix, vocab_size
        # The only token buffer: one shard, never the corpus.
        self.buffer = np.empty(shard_tokens, dtype=DTYPES[shard_version(vocab_size)])
        self.fill = 0
        self.shards = 0
        self.tokens = 0
        self.docs = 0

    def add(self, tokens: np.ndarray, docs: int) -> None:
        self.docs += docs
        self.tokens += tokens.size
        while tokens.size:
            take = min(tokens.size, self.buffer.size - self.fill)
            self.buffer[self.fill : self.fill + take] = tokens[:take]
            self.fill += take
            tokens = tokens[take:]
            if self.fill == self.buffer.size:
                self._flush()

    def close(self) -> None:
        if self.fill:
            self._flush()

    def _flush(self) -> None:
        name = f"{self.prefix}_{self.shards:06d}.bin"
        write_shard(self.path_for(name), self.buffer[: self.fill], self.vocab_size)
        self.shards += 1
        self.fill = 0


def encode_docs(encode: Encoder, texts: list[str], eot_id: int) -> np.ndarray:
    """[eot, doc 0 tokens..., eot, doc 1 tokens..., ...] as one int64 array."""
    ids = encode(texts)
    total = sum(map(len, ids)) + len(ids)
    return np.fromiter(chain.from_iterable([eot_id, *d] for d in ids), dtype=np.int64, count=total)


def _sample(batch: list[tuple[str, str]], chars: int = 1 << 18) -> list[str]:
    """The first documents of a batch, about `chars` of them: what the encoder check reads."""
    out: list[str] = []
    for _, text in batch:
        out.append(text)
        chars -= len(text)
        if chars <= 0:
            break
    return out


def pick_encoder(tokenizer: Tokenizer, sample: list[str]) -> tuple[Encoder, str]:
    """tiktoken where it is installed and agrees with HF on `sample`, else HF."""
    hf = hf_encoder(tokenizer)
    fast = tiktoken_encoder(tokenizer)
    if fast is None:
        return hf, "hf"
    if fast(sample) != hf(sample):
        log.warning("tiktoken and HF disagree on the first batch: encoding with HF (slower)")
        return hf, "hf"
    return fast, "tiktoken"


def _speed(n_bytes: int, seconds: float) -> str:
    mb = n_bytes / 1e6
    return f"{mb:.1f} MB of text encoded in {seconds:.1f}s, {mb / max(seconds, 1e-9):.2f} MB/s"


def shard_corpus(
    db_path: Path, tokenizer_path: Path, path_for: Callable[[str], Path], cfg: ShardConfig
) -> tuple[dict[str, int], dict[str, float | int | str]]:
    """Tokenize every kept document into train/val shards; returns (counts, stats)."""
    tok = load_tokenizer(tokenizer_path)
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise ValueError(f"{tokenizer_path}: no {EOT} token")
    vocab_size = tok.get_vocab_size()
    split = corpus_split(db_path, cfg.val_fraction)
    batches = iter_kept_texts(db_path, batch=cfg.batch_docs, key=SPLIT_KEY)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"{db_path}: no kept documents to shard")
    encode, encoder = pick_encoder(tok, _sample(first))
    train = ShardStream(path_for, "train", cfg.shard_tokens, vocab_size)
    val = ShardStream(path_for, "val", cfg.shard_tokens, vocab_size)
    t0, n_bytes = time.perf_counter(), 0
    ticker = Ticker(log)
    for batch in chain([first], batches):
        if ticker.due():
            ticker.say(f"shard: {_speed(n_bytes, ticker.elapsed)}")
        in_val = [split.is_val(cluster) for cluster, _ in batch]
        for stream, want_val in ((train, False), (val, True)):
            texts = [text for (_, text), v in zip(batch, in_val, strict=True) if v == want_val]
            if texts:
                stream.add(encode_docs(encode, texts, eot_id), len(texts))
                n_bytes += sum(len(t.encode()) for t in texts)
    train.close()
    val.close()
    if not (train.docs and val.docs):  # Split.plan fills both from two documents up
        raise ValueError(
            f"{db_path}: {train.docs + val.docs} kept document(s), {train.docs} for train and "
            f"{val.docs} for val: training and evaluation need at least one each, so the "
            "corpus needs at least 2 kept documents (the rest were filtered out or duplicates:"
            " see the funnel table of corpus.duckdb)"
        )
    dt = time.perf_counter() - t0
    ticker.say(
        f"shard: {train.tokens:,} train + {val.tokens:,} val tokens, "
        f"{_speed(n_bytes, dt)} ({encoder})",
        force=True,
    )
    counts = {
        "train_tokens": train.tokens,
        "val_tokens": val.tokens,
        "train_docs": train.docs,
        "val_docs": val.docs,
        "shards": train.shards + val.shards,
    }
    stats: dict[str, float | int | str] = {
        "vocab_size": vocab_size,
        "eot_id": eot_id,
        "token_dtype": DTYPES[shard_version(vocab_size)].name,
    }  # not the encoder: both give the same tokens, and stats must not depend on the machine
    return counts, stats


@task(name="shard")
def shard_tokens(root: str, corpus: Manifest, tokenizer: Manifest, cfg: ShardConfig) -> Manifest:
    """Token shards of the kept documents, split into train and val by document id."""
    key = stage_key(STAGE_VERSION, corpus, tokenizer, cfg)
    base = Path(root)
    with ArtifactWriter(base, "shard", key) as out:
        counts, stats = shard_corpus(
            corpus.path(base, CORPUS_DB), tokenizer.path(base, TOKENIZER_JSON), out.path, cfg
        )
        return out.commit(cfg, counts=counts, stats=stats)
