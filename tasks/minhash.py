"""minhash: `docs.parquet` -> `signatures.parquet`, one LSH band key per document and band.

Per WARC, FineWeb's configuration: each text is normalised (NFKD, lowercase, diacritics
and punctuation removed, digits -> 0, whitespace collapsed) and cut into word 5-gram
shingles (a shorter document is one shingle). Each shingle gets a 64-bit hash: every
word is hashed once (blake2b, 8 bytes, memoised per process) and the n word hashes are
combined polynomially (h = h * P + w mod 2^64). A document's signature is datasketch's
MinHash with the "affine64" scheme: 112 = 14 bands x 8 rows permutations
(a * fmix64(h) + b mod 2^64, parameters drawn by datasketch from `seed`), 64-bit values
like FineWeb's (datasketch's default "affine32" keeps 32 bits). The hot loop is numpy
over a whole batch of documents; tests check it equals datasketch's own MinHash on the
same shingles, hash function and permutations.

The `rows` values of each band are mixed into one uint64 key (xor-multiply-fmix64, pure
integer arithmetic, so keys agree across machines), so two documents whose shingle sets
have Jaccard similarity s share a key in at least one band with probability
1 - (1 - s^8)^14: 0.05 at s = 0.5, 0.57 at 0.7, 0.92 at 0.8, 0.99 at 0.85.

signatures.parquet: id (str), band (int16), key (uint64); `bands` rows per document.

A WARC of `POOL_MIN_DOCS` (1,000) documents or more is signed on `workers` processes
(None: the cores the task has, as extract and filter): documents go out in slices of 64
and come back in order, and each batch read (at most 1,024 documents of one row group) is
written as one row group either way, so the file is the same bytes for any number of
workers.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections import deque
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from fineflow.config import MinHashConfig
from fineflow.storage import parquet
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks.sandbox import ordered_map, pool_size

STAGE_VERSION = 3  # 3: counts total/kept, the vocabulary of every stage
SIGNATURES = "signatures.parquet"
SIGNATURE_SCHEMA = pa.schema([("id", pa.string()), ("band", pa.int16()), ("key", pa.uint64())])
# Pinned so a datasketch release that changes its default scheme cannot silently change keys.
_SCHEME = "affine64"
_READ_BATCH = 1024  # documents per Parquet batch: bounded memory on any WARC size
POOL_MIN_DOCS = 1000  # fewer are signed in-process: ~3 s of one core, less than a start
_POOL_SLICE = 64  # documents per call to a minhash process
_ASCII_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # includes symbols Unicode files under S*

log = logging.getLogger("fineflow.minhash")


class _CharMap(dict[int, str | None]):
    """str.translate table filled on first sight of a code point: no 1.1M-entry build."""

    def __missing__(self, cp: int) -> str | None:
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat.startswith("P") or ch in _ASCII_PUNCT or unicodedata.combining(ch):
            out: str | None = None
        elif cat == "Nd":
            out = "0"
        else:
            out = ch
        self[cp] = out
        return out


@cache
def _char_map() -> _CharMap:
    return _CharMap()


def normalize_text(text: str) -> str:
    """Lowercase, NFKD without diacritics, no punctuation, digits as 0, single spaces."""
    # NFKD before lower(): compatibility forms like "ℌ" decompose to capitals.
    text = unicodedata.normalize("NFKD", text).lower()
    return " ".join(text.translate(_char_map()).split())


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-grams of the normalised text, UTF-8; the whole text if it has fewer words."""
    words = normalize_text(text).split(" ")
    if len(words) <= ngram:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]


_P = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio), shingle combiner
_M64 = (1 << 64) - 1
_WORD_CACHE_MAX = 1 << 20  # distinct words memoised per process (~100 MB at most)
_word_cache: dict[str, int] = {}


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def shingle_hash(shingle: bytes) -> int:
    """The 64-bit hash of one shingle (its words joined by single spaces).

    The scalar reference of what `_shingle_hashes` computes with numpy; given to
    datasketch as `hashfunc` in the tests.
    """
    h = 0
    for w in shingle.decode().split(" "):
        h = (h * int(_P) + _word_hash(w)) & _M64
    return h


def _word_hashes(words: list[str]) -> np.ndarray:
    cache = _word_cache
    if len(cache) > _WORD_CACHE_MAX:
        cache.clear()
    out = np.empty(len(words), dtype=np.uint64)
    for i, w in enumerate(words):
        h = cache.get(w)
        if h is None:
            h = cache[w] = _word_hash(w)
        out[i] = h
    return out


def _shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """Hashes of the text's word n-gram shingles, equal to `shingle_hash` of `shingles`."""
    words = normalize_text(text).split(" ")
    w = _word_hashes(words)
    m = max(len(words) - ngram + 1, 1)
    k = min(ngram, len(words))
    h = w[0:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, k):
            h *= _P
            h += w[j : j + m]
    return h


_FMIX = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (the pre-mix datasketch's affine64 applies)."""
    s, m1, m2 = _FMIX
    h = h ^ (h >> s)
    h *= m1
    h ^= h >> s
    h *= m2
    h ^= h >> s
    return h


_perms: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine64 permutation parameters (a, b), each (num_perm,) uint64."""
    if (num_perm, seed) not in _perms:
        from datasketch import MinHash  # ~0.5 s of imports (scipy): only once signing starts

        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME).permutations
        _perms[num_perm, seed] = (a.astype(np.uint64), b.astype(np.uint64))
    return _perms[num_perm, seed]


_CHUNK_SHINGLES = 16_384  # rows of the (shingles x permutations) matrix per numpy step


def signatures(texts: Iterable[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash values of each text: (len(texts), bands * rows) uint64."""
    num_perm = cfg.bands * cfg.rows
    a, b = permutations(num_perm, cfg.seed)
    hashes = [_shingle_hashes(t, cfg.ngram) for t in texts]
    out = np.empty((len(hashes), num_perm), dtype=np.uint64)
    i = 0
    with np.errstate(over="ignore"):
        while i < len(hashes):
            # Documents whose shingles together fill about one chunk: bounded memory.
            j, rows = i, 0
            while j < len(hashes) and (rows == 0 or rows + len(hashes[j]) <= _CHUNK_SHINGLES):
                rows += len(hashes[j])
                j += 1
            hv = _fmix64(np.concatenate(hashes[i:j]))
            phv = hv[:, None] * a[None, :]
            phv += b[None, :]
            starts = np.cumsum([0] + [len(h) for h in hashes[i : j - 1]])
            out[i:j] = np.minimum.reduceat(phv, starts, axis=0)
            i = j
    return out


def datasketch_signature(shingle_set: list[bytes], cfg: MinHashConfig) -> np.ndarray:
    """The reference: datasketch's MinHash of the same shingles (slow; for tests)."""
    from datasketch import MinHash

    m = MinHash(num_perm=cfg.bands * cfg.rows, seed=cfg.seed, scheme=_SCHEME, hashfunc=shingle_hash)
    m.update_batch(shingle_set)
    return m.hashvalues.astype(np.uint64)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per (document, band), mixed from the band's `rows` values."""
    blocks = sigs.astype(np.uint64, copy=False).reshape(sigs.shape[0], bands, rows)
    with np.errstate(over="ignore"):
        k = np.full(blocks.shape[:2], np.uint64(rows), dtype=np.uint64)
        for r in range(rows):
            k = _fmix64((k ^ blocks[:, :, r]) * _P)
    return k


def _batches(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    for batch in parquet.iter_batches(path, _READ_BATCH, ["id", "text"]):
        yield batch.column("id").to_pylist(), batch.column("text").to_pylist()


def text_band_keys(
    texts: list[str], cfg: MinHashConfig, perms: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Band keys of each text, (len(texts), bands): what a minhash process runs. `perms`:
    permutations() from the caller, so a minhash process need not import datasketch."""
    if perms is not None:
        _perms.setdefault((cfg.bands * cfg.rows, cfg.seed), perms)
    return band_keys(signatures(texts, cfg), cfg.bands, cfg.rows)


def keyed_batches(
    docs_path: Path, cfg: MinHashConfig, workers: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, band keys) of each batch of docs.parquet, in order, signed in slices in this
    process or on `workers` processes (sandbox.ordered_map: results in input order)."""
    perms = permutations(cfg.bands * cfg.rows, cfg.seed)
    pending: deque[tuple[list[str], int]] = deque()  # (ids, slices) of the batches sent

    def calls() -> Iterator[tuple[list[str], MinHashConfig, tuple[np.ndarray, np.ndarray]]]:
        for ids, texts in _batches(docs_path):
            starts = range(0, max(len(texts), 1), _POOL_SLICE)  # an empty batch: one call
            pending.append((ids, len(starts)))
            yield from ((texts[i : i + _POOL_SLICE], cfg, perms) for i in starts)

    keys: list[np.ndarray] = []
    for value in ordered_map(text_band_keys, calls(), workers, "minhash"):
        keys.append(value)
        if len(keys) == pending[0][1]:
            yield pending.popleft()[0], np.concatenate(keys)
            keys = []


def signatures_to_parquet(docs_path: Path, out_path: Path, cfg: MinHashConfig) -> dict[str, int]:
    """Stream docs.parquet into signatures.parquet; returns counts."""
    n_docs = 0
    band_ids = np.arange(cfg.bands, dtype=np.int16)
    total = pq.ParquetFile(docs_path).metadata.num_rows
    workers = pool_size(cfg.workers, total, POOL_MIN_DOCS)
    if workers > 1:
        log.info("%s: signing %d documents in %d processes", docs_path.parent.name, total, workers)
    with pq.ParquetWriter(out_path, SIGNATURE_SCHEMA) as writer:
        for ids, keys in keyed_batches(docs_path, cfg, workers):
            table = pa.table(
                {
                    "id": pa.array(np.repeat(np.array(ids, dtype=object), cfg.bands), pa.string()),
                    "band": np.tile(band_ids, len(ids)),
                    "key": keys.reshape(-1),
                },
                schema=SIGNATURE_SCHEMA,
            )
            writer.write_table(table)
            n_docs += len(ids)
    return {"total": n_docs, "kept": n_docs}  # every document is signed


@task(name="minhash", task_run_name="minhash[{docs.warc}]")
def minhash_docs(root: str, docs: Manifest, cfg: MinHashConfig) -> Manifest:
    """LSH band keys of every extracted document of one WARC."""
    key = stage_key(STAGE_VERSION, docs, cfg)
    t0 = time.perf_counter()
    with ArtifactWriter(Path(root), "minhash", key, warc=docs.warc) as out:
        docs_path = docs.path(Path(root), "docs.parquet")
        counts = signatures_to_parquet(docs_path, out.path(SIGNATURES), cfg)
        dt = time.perf_counter() - t0
        log.info("minhash %s: %d docs in %.1fs", docs.warc, counts["kept"], dt)
        stats: dict[str, float | int | str] = {
            "bands": cfg.bands,
            "rows": cfg.rows,
            "ngram": cfg.ngram,
            "threshold": round((1 / cfg.bands) ** (1 / cfg.rows), 4),
        }
        return out.commit(cfg, counts=counts, stats=stats)
