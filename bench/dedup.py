"""Dedup at scale: 1M synthetic documents x 14 band keys as Parquet -> grouping + union-find.

    .venv/bin/python bench/dedup.py [--docs 1000000] [--dup-fraction 0.1] [--memory-limit 1GB]

Writes `--warcs` WARCs' worth of docs.parquet (short texts) and signatures.parquet (14
random uint64 band keys per document) under a temporary directory. A `--dup-fraction` of
documents are planted near-duplicates of an earlier document: they copy 1 to 3 of its
band keys. Then runs the dedup stage's `dedup_corpus` (DuckDB under `--memory-limit`,
spilling beside the output) and prints seconds, peak RSS and whether exactly the planted
documents were dropped.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fineflow.config import DedupConfig
from fineflow.storage import catalog
from fineflow.tasks.dedup import dedup_corpus

BANDS = 14


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthesize(base: Path, n: int, warcs: int, dup_fraction: float, seed: int = 0):
    """The files triples dedup_corpus takes, and the set of planted duplicate ordinals."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 2**63, size=(n, BANDS), dtype=np.int64).astype(np.uint64)
    dups = np.sort(rng.choice(np.arange(1, n), size=int(n * dup_fraction), replace=False))
    planted = set(dups.tolist())
    originals = np.array([rng.integers(0, d) for d in dups], dtype=np.int64)
    # An original must itself be unique, or "exactly the planted ones" is ill-defined.
    for d, o in zip(dups.tolist(), originals.tolist(), strict=True):
        while o in planted:
            o = int(rng.integers(0, d))
        shared = rng.choice(BANDS, size=int(rng.integers(1, 4)), replace=False)
        keys[d, shared] = keys[o, shared]
    files = []
    per = -(-n // warcs)
    for w in range(warcs):
        lo, hi = w * per, min(n, (w + 1) * per)
        name = f"CC-MAIN-2024-10-bench-{w:05d}.warc.gz"
        ids = [f"doc-{i:08d}" for i in range(lo, hi)]
        docs = pa.table(
            {
                "id": ids,
                "url": [f"https://site{i % 5000}.example/p/{i}" for i in range(lo, hi)],
                "host": [f"site{i % 5000}.example" for i in range(lo, hi)],
                "warc": [name] * (hi - lo),
                "date": ["2024-03-01T00:00:00Z"] * (hi - lo),
                "text": [f"document {i}" for i in range(lo, hi)],
                "length": [len(f"document {i}") for i in range(lo, hi)],
            }
        )
        sigs = pa.table(
            {
                "id": np.repeat(np.array(ids, dtype=object), BANDS),
                "band": pa.array(np.tile(np.arange(BANDS, dtype=np.int16), hi - lo)),
                "key": pa.array(keys[lo:hi].reshape(-1)),
            }
        )
        d, s = base / f"docs-{w}.parquet", base / f"sigs-{w}.parquet"
        pq.write_table(docs, d)
        pq.write_table(sigs, s)
        files.append((name, d, s))
    return files, planted


def _run(files: list, base: Path, memory_limit: str, out: dict) -> None:
    """dedup_corpus in a fresh process, so the peak RSS is the stage's own."""
    start = peak_rss_mb()
    t0 = time.perf_counter()
    counts = dedup_corpus(
        files, base / "corpus.duckdb", DedupConfig(memory_limit=memory_limit), base / "scratch"
    )
    out["seconds"] = time.perf_counter() - t0
    out["rss_start"], out["rss_peak"] = start, peak_rss_mb()
    with catalog.connect(base / "corpus.duckdb", read_only=True) as con:
        sql = "SELECT ordinal FROM documents WHERE NOT keep"
        out["dropped"] = {r[0] for r in con.execute(sql).fetchall()}
    out["counts"] = counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--warcs", type=int, default=20)
    ap.add_argument("--dup-fraction", type=float, default=0.1)
    ap.add_argument("--memory-limit", default="1GB")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        files, planted = synthesize(base, args.docs, args.warcs, args.dup_fraction)
        gen_s = time.perf_counter() - t0
        sig_mb = sum(s.stat().st_size for _, _, s in files) / 1e6
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            out = manager.dict()
            p = ctx.Process(target=_run, args=(files, base, args.memory_limit, out))
            p.start()
            p.join()
            r = dict(out)
    counts = r["counts"]
    print(
        f"input              {args.docs:,} docs x {BANDS} bands in {args.warcs} WARCs "
        f"({sig_mb:.0f} MB signatures.parquet; generated in {gen_s:.0f} s)"
    )
    print(f"dedup_corpus       {r['seconds']:.1f} s (DuckDB memory_limit {args.memory_limit})")
    print(f"peak RSS           {r['rss_peak']:.0f} MB (process at start: {r['rss_start']:.0f} MB)")
    print(
        f"dropped            {counts['dropped_duplicate']:,} in {counts['clusters']:,} clusters;"
        f" planted {len(planted):,}; exactly the planted ones: {r['dropped'] == planted}"
    )


if __name__ == "__main__":
    main()
