"""Extraction + filters throughput: documents/s on one core and with 2 worker processes.

    .venv/bin/python bench/extract.py [WARC ...]      # default: the bundled sample WARCs

Per WARC, the stages' pure functions in sequence: url_filter (filter_warc) -> trafilatura
extraction (extract_docs, in-process: no sandbox worker, so one WARC = one core) -> the
language / Gopher / C4 / FineWeb / PII filters (judge_docs). "one core" runs the WARCs
one after the other in this process; "2 workers" runs them on a pool of 2 processes, as
the flow's process pool does. Rates count HTML responses that reached extraction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fineflow.config import SAMPLE_DIR, ExtractConfig, FilterConfig, UrlFilterConfig
from fineflow.tasks.extract import extract_docs
from fineflow.tasks.filter import judge_docs
from fineflow.tasks.url_filter import filter_warc


def one_warc(warc: str) -> tuple[int, int, int, float, float]:
    """(pages extracted, docs after extraction, docs kept by the filters, CPU s extract,
    CPU s filter). CPU seconds, not wall: a shared machine's other load does not count."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0 = time.process_time()
        filter_warc(Path(warc), t / "records.parquet", UrlFilterConfig())
        counts, _ = extract_docs(
            Path(warc), t / "records.parquet", t / "docs.parquet", ExtractConfig(workers=0)
        )
        t1 = time.process_time()
        fcounts, _ = judge_docs(
            t / "docs.parquet", t / "kept.parquet", t / "dropped.parquet", FilterConfig()
        )
        t2 = time.process_time()
    return counts["total"], counts["kept"], fcounts["kept"], t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("warcs", nargs="*")
    args = ap.parse_args()
    warcs = args.warcs or sorted(str(p) for p in (SAMPLE_DIR / "warcs").glob("*.warc.gz"))
    one_warc(warcs[0])  # warm: imports, fastText model load, trafilatura caches

    t0 = time.perf_counter()
    serial = [one_warc(w) for w in warcs]
    wall1 = time.perf_counter() - t0
    pages = sum(r[0] for r in serial)
    docs = sum(r[1] for r in serial)
    kept = sum(r[2] for r in serial)
    ex = sum(r[3] for r in serial)
    fl = sum(r[4] for r in serial)
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(one_warc, warcs[:2]))  # warm both workers
        t0 = time.perf_counter()
        list(pool.map(one_warc, warcs))
        wall2 = time.perf_counter() - t0
    print(f"{len(warcs)} WARCs, {pages} HTML pages -> {docs} extracted -> {kept} kept by filters")
    print(
        f"url_filter+extract {pages / ex:6.1f} pages/s on one core ({ex / pages * 1e3:.0f} ms/page)"
    )
    print(f"filters            {docs / fl:6.1f} docs/s on one core ({fl / docs * 1e3:.1f} ms/doc)")
    print(f"whole chain        {pages / (ex + fl):6.1f} pages/s per core (CPU time)")
    print(f"whole chain        {pages / wall1:6.1f} pages/s on one core (wall)")
    print(
        f"whole chain        {pages / wall2:6.1f} pages/s with 2 worker processes"
        f" (x{wall1 / wall2:.2f})"
    )


if __name__ == "__main__":
    sys.exit(main())
