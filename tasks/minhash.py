"""minhash: `docs.parquet` -> `signatures.parquet`, one LSH band key per document and band.

Per WARC. Each text is normalised (NFKD, lowercase, diacritics and punctuation removed,
digits -> 0, whitespace collapsed), cut into word n-gram shingles (n = 5; a shorter
document is one shingle) and sketched with a datasketch MinHash of
bands * rows = 14 * 8 = 112 permutations (scheme affine32, seed cfg.seed). The `rows`
values of each band are hashed (blake2b, 8 bytes) into one uint64 key, so two documents
whose shingle sets have Jaccard similarity s share a key in at least one band with
probability 1 - (1 - s^8)^14: 0.05 at s = 0.5, 0.57 at 0.7, 0.92 at 0.8, 0.99 at 0.85.

signatures.parquet: id (str), band (int16), key (uint64); `bands` rows per document.
"""

from __future__ import annotations

import hashlib
import logging
import time
import unicodedata
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash
from prefect import task

from fineflow.config import MinHashConfig
from storage.artifacts import ArtifactWriter, Manifest, stage_key

STAGE_VERSION = 1
SIGNATURES = "signatures.parquet"
SIGNATURE_SCHEMA = pa.schema([("id", pa.string()), ("band", pa.int16()), ("key", pa.uint64())])
# Pinned so a datasketch release that changes its default scheme cannot silently change keys.
_SCHEME = "affine32"
_READ_BATCH = 1024  # documents per Parquet batch: bounded memory on any WARC size
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


def signatures(texts: Iterable[str], cfg: MinHashConfig) -> np.ndarray:
    """MinHash values of each text: (len(texts), bands * rows) uint32."""
    sets = [shingles(t, cfg.ngram) for t in texts]
    if not sets:
        return np.empty((0, cfg.bands * cfg.rows), dtype=np.uint32)
    sketches = MinHash.generator(sets, num_perm=cfg.bands * cfg.rows, seed=cfg.seed, scheme=_SCHEME)
    return np.stack([m.hashvalues for m in sketches]).astype(np.uint32, copy=False)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 per (document, band): blake2b of the band's values as little-endian bytes."""
    n = sigs.shape[0]
    # Fixed byte order, so keys agree across machines as well as across processes.
    blocks = np.ascontiguousarray(sigs.astype("<u4", copy=False).reshape(n, bands, rows))
    width = rows * 4
    raw = blocks.tobytes()
    digests = b"".join(
        hashlib.blake2b(raw[i : i + width], digest_size=8).digest()
        for i in range(0, len(raw), width)
    )
    return np.frombuffer(digests, dtype="<u8").reshape(n, bands).astype(np.uint64)


def _batches(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_READ_BATCH, columns=["id", "text"]):
        yield batch.column("id").to_pylist(), batch.column("text").to_pylist()


def signatures_to_parquet(docs_path: Path, out_path: Path, cfg: MinHashConfig) -> dict[str, int]:
    """Stream docs.parquet into signatures.parquet; returns counts."""
    n_docs = 0
    band_ids = np.arange(cfg.bands, dtype=np.int16)
    with pq.ParquetWriter(out_path, SIGNATURE_SCHEMA) as writer:
        for ids, texts in _batches(docs_path):
            keys = band_keys(signatures(texts, cfg), cfg.bands, cfg.rows)
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
    return {"docs": n_docs}


@task(name="minhash", task_run_name="minhash[{docs.warc}]")
def minhash_docs(root: str, docs: Manifest, cfg: MinHashConfig) -> Manifest:
    """LSH band keys of every extracted document of one WARC."""
    key = stage_key(STAGE_VERSION, docs, cfg)
    t0 = time.perf_counter()
    with ArtifactWriter(Path(root), "minhash", key, warc=docs.warc) as out:
        docs_path = docs.path(Path(root), "docs.parquet")
        counts = signatures_to_parquet(docs_path, out.path(SIGNATURES), cfg)
        dt = time.perf_counter() - t0
        log.info("minhash %s: %d docs in %.1fs", docs.warc, counts["docs"], dt)
        stats: dict[str, float | int | str] = {
            "bands": cfg.bands,
            "rows": cfg.rows,
            "ngram": cfg.ngram,
            "threshold": round((1 / cfg.bands) ** (1 / cfg.rows), 4),
        }
        return out.commit(cfg, counts=counts, stats=stats)
