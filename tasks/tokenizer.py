"""tokenizer: the kept documents of `corpus.duckdb` -> `tokenizer.json`, a byte-level BPE.

Corpus stage. HF `tokenizers`, GPT-4 style: the text is split by the cl100k regex
(contractions, letter runs, numbers of up to 3 digits, punctuation runs, whitespace),
each piece is mapped to bytes (every byte one symbol, so nothing is ever unknown) and
BPE merges are learnt up to `vocab_size` (default 4096) ids, counting only pairs seen at
least twice; a small corpus can end below it (stats.vocab_size is the actual size).
One special token, `<|endoftext|>` (id 0), separates documents; ids 1-256 are the bytes.
Training twice on the same documents gives a byte-identical tokenizer.json (tested).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
from prefect import task
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from fineflow.config import TokenizerConfig
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks.dedup import CORPUS_DB, iter_kept_texts
from fineflow.vocab import EOT, TOKENIZER_JSON

STAGE_VERSION = 1
# GPT-4 (cl100k) pre-tokenizer split, without the `\s++$` branch: HF's Onig regex reads `$`
# as end of line, tiktoken's as end of text, and the two encoders must agree.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_FREQUENCY = 2  # a pair seen once is noise, not a word piece
_TRAIN_BATCH = 1000

log = logging.getLogger("fineflow.tokenizer")


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE tokenizer with fineflow's split and decoder."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer on `texts` (consumed once, never held whole)."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved at `path` (a tokenizer.json)."""
    return Tokenizer.from_file(str(path))


@cache
def byte_decoder() -> dict[str, int]:
    """The byte-level alphabet: symbol -> the byte it stands for (GPT-2's bijection)."""
    # Printable Latin-1 bytes stand for themselves; the other 68 get U+0100 onwards in order.
    shown = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    hidden = sorted(set(range(256)) - set(shown))
    table = {chr(b): b for b in shown}
    table.update({chr(0x100 + i): b for i, b in enumerate(hidden)})
    return table


def token_bytes(tokenizer: Tokenizer) -> list[bytes | None]:
    """The bytes of every token id; None for special tokens."""
    added = tokenizer.get_added_tokens_decoder()  # matched on raw text, not byte-mapped
    decode = byte_decoder()
    out: list[bytes | None] = []
    for i in range(tokenizer.get_vocab_size()):
        piece = tokenizer.id_to_token(i)
        if i in added:
            out.append(None if added[i].special else added[i].content.encode())
        elif piece is None or any(ch not in decode for ch in piece):
            raise ValueError(f"token {i} ({piece!r}) is not a byte-level token")
        else:
            out.append(bytes(decode[ch] for ch in piece))
    return out


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens): the bits-per-byte divisor."""
    lengths = [len(b) if b is not None else 0 for b in token_bytes(tokenizer)]
    return np.array(lengths, dtype=np.int64)


Encoder = Callable[[list[str]], list[list[int]]]


def hf_encoder(tokenizer: Tokenizer) -> Encoder:
    """Batch encoder over HF's multi-threaded `encode_batch`; special-token text stays text."""
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the flag below is per object
    tok.encode_special_tokens = True  # "<|endoftext|>" typed in a page is not a boundary

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    return encode


def tiktoken_encoder(tokenizer: Tokenizer) -> Encoder | None:
    """The same BPE run by tiktoken (about 2x faster per core), or None if it may differ.

    tiktoken merges the adjacent pair whose concatenation has the lowest id; HF merges the
    pair with the lowest merge rank. They agree when ids grow with merge rank and every
    multi-byte token comes from exactly one merge (what BpeTrainer produces), the split
    regex and byte mapping are fineflow's and there is no normaliser: all checked here.
    Tests compare both encoders token for token on prose, markup, code and odd Unicode.
    """
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tokenizer.to_str())
    reference = json.loads(new_tokenizer().to_str())
    model = spec["model"]
    if (
        spec.get("normalizer") is not None
        or spec.get("pre_tokenizer") != reference["pre_tokenizer"]
        or model.get("type") != "BPE"
        or model.get("dropout") is not None
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
    ):
        return None
    vocab: dict[str, int] = model["vocab"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    made = [vocab.get(a + b, -1) for a, b in pairs]
    pieces = token_bytes(tokenizer)
    multi = {i for i, b in enumerate(pieces) if b is not None and len(b) > 1}
    if any(y <= x for x, y in zip(made, made[1:], strict=False)) or set(made) != multi:
        return None
    ranks = {b: i for i, b in enumerate(pieces) if b is not None}
    if len(ranks) != sum(b is not None for b in pieces):
        return None  # two ids for the same bytes
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    enc = tiktoken.Encoding(
        "fineflow", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def encode(texts: list[str]) -> list[list[int]]:
        return enc.encode_ordinary_batch(texts, num_threads=threads or 1)

    return encode


def _texts(db_path: Path, limit: int | None, seen: list[int]) -> Iterator[str]:
    for batch in iter_kept_texts(db_path, batch=_TRAIN_BATCH, limit=limit):
        seen[0] += len(batch)
        seen[1] += sum(len(text) for _, text in batch)
        yield from (text for _, text in batch)


@task(name="tokenizer")
def train_tokenizer(root: str, corpus: Manifest, cfg: TokenizerConfig) -> Manifest:
    """Byte-level BPE trained on the kept documents (at most cfg.max_docs of them)."""
    key = stage_key(STAGE_VERSION, corpus, cfg)
    t0 = time.perf_counter()
    seen = [0, 0]  # documents, characters
    tok = train_bpe(_texts(corpus.path(Path(root), CORPUS_DB), cfg.max_docs, seen), cfg.vocab_size)
    if seen[0] == 0:
        raise ValueError(
            f"{corpus.dir}: no kept documents to train a tokenizer on: of"
            f" {corpus.counts.get('docs', 0)} documents that passed the filters, dedup kept"
            f" {corpus.counts.get('kept', 0)} (per-stage counts: the funnel table of"
            f" {CORPUS_DB})"
        )
    with ArtifactWriter(Path(root), "tokenizer", key) as out:
        tok.save(str(out.path(TOKENIZER_JSON)))
        log.info(
            "tokenizer: %d ids from %d docs (%d chars) in %.1fs",
            tok.get_vocab_size(),
            seen[0],
            seen[1],
            time.perf_counter() - t0,
        )
        stats: dict[str, float | int | str] = {
            "vocab_size": tok.get_vocab_size(),
            "eot_id": tok.token_to_id(EOT),
        }
        return out.commit(cfg, counts={"docs": seen[0], "chars": seen[1]}, stats=stats)
