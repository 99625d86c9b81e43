"""MinHash throughput on one core: the sample's extracted documents and ~2 KB pages.

    .venv/bin/python bench/minhash.py        # needs data/extract/*/docs.parquet (make run)

Prints documents/s and MB/s of the stage's path (numpy batch over datasketch's affine64
permutations) and of datasketch's own MinHash.update_batch on the same shingles, which
the fast path equals (tests/tasks/test_minhash.py).
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from fineflow.config import MinHashConfig
from fineflow.tasks.minhash import band_keys, datasketch_signature, shingles, signatures

REPO_ROOT = Path(__file__).resolve().parent.parent


def rate(texts: list[str], fn, batch: int = 1024) -> float:
    """Documents per CPU second of this (single-threaded) process: other load on a
    shared machine does not count against it."""
    t0 = time.process_time()
    for i in range(0, len(texts), batch):
        fn(texts[i : i + batch])
    return len(texts) / (time.process_time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(REPO_ROOT / "data" / "extract" / "*" / "docs.parquet"))
    ap.add_argument("--reference-docs", type=int, default=300, help="docs for the slow path")
    args = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, honestly
    files = sorted(glob.glob(args.docs))
    if not files:
        raise SystemExit(f"no {args.docs}: run `make run` (or fineflow run --stop-after extract)")
    texts = [t for f in files for t in pq.read_table(f, columns=["text"]).column(0).to_pylist()]
    joined = "\n".join(texts)
    pages = [joined[i : i + 2048] for i in range(0, len(joined) - 2048, 2048)]
    cfg = MinHashConfig()

    def stage(batch: list[str]) -> None:
        band_keys(signatures(batch, cfg), cfg.bands, cfg.rows)

    def reference(batch: list[str]) -> None:
        for t in batch:
            datasketch_signature(shingles(t, cfg.ngram), cfg)

    print("MinHash, one core, 14 bands x 8 rows, 64-bit, word 5-grams")
    for name, corpus in (("sample docs", texts), ("2 KB pages", pages)):
        mean_kb = sum(map(len, corpus)) / len(corpus) / 1e3
        stage(corpus[:64])  # warm the word cache as a long-running worker would be
        fast = rate(corpus, stage)
        ref = rate(corpus[: args.reference_docs], reference)
        print(
            f"{name:12s} {len(corpus):6d} docs, mean {mean_kb:5.1f} kB: "
            f"{fast:7,.0f} docs/s ({fast * mean_kb / 1e3:4.1f} MB/s); "
            f"datasketch update_batch {ref:6,.0f} docs/s"
        )


if __name__ == "__main__":
    main()
