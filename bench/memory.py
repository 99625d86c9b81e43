"""Peak memory of one WARC's processing, cheaply: the per-WARC stages with trafilatura memoised.

    taskset -c 1 .venv/bin/python bench/memory.py --mb 80     # then --mb 400, and compare

One big WARC (bench/big_warc.py: the sample's pages replicated with new URLs, `--mb`
MB, or `--warc`) through url_filter -> extract -> filter (the stages' own functions) in
this process, with `--workers` (2) sandboxes and filter processes, what a task of two
cores gets. Each sandbox runs trafilatura once per distinct page and answers the copies
from a memo, the same answers, so the outputs are a real run's bytes; the copies
cost the task's own process everything a page costs it (reading, decoding, the
sandbox's pipe, Parquet, the filters' batches) but trafilatura's time, which is where
nearly all of a real run's time goes (bench/scaling.py). Pinned to one core, an 80 MB
WARC takes ~2 min, a 400 MB one ~9 min.

Printed after each stage: this process's peak RSS (VmHWM) and RSS; at the end, the
digest of docs.parquet and the filter's output (the same on every run of one WARC).
Each run is a fresh process: run it once per size.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

from fineflow.config import ExtractConfig, FilterConfig, UrlFilterConfig
from fineflow.tasks.extract import Extracted, extract_main_text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_warc import build, output_digest  # noqa: E402 - a script beside this one

_memo: dict[tuple[bytes, bool, bool, bool, bool], Extracted] = {}  # per sandbox process


def memo_extract(
    html: str, precision: bool, comments: bool, tables: bool, accelerate: bool = True
) -> Extracted:
    """extract_main_text, once per distinct page in this (sandbox) process."""
    page = hashlib.sha1(html.encode("utf-8", "surrogatepass")).digest()
    key = (page, precision, comments, tables, accelerate)
    if key not in _memo:
        _memo[key] = extract_main_text(html, precision, comments, tables, accelerate)
    return _memo[key]


def _memory_mb() -> str:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    hwm, rss = (int(fields[k].split()[0]) // 1024 for k in ("VmHWM", "VmRSS"))
    return f"peak {hwm} MB, RSS {rss} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=80.0, help="size of the big WARC")
    ap.add_argument("--warc", help="use this WARC instead of building one")
    ap.add_argument("--workers", type=int, default=2, help="sandboxes and filter processes")
    args = ap.parse_args()
    from fineflow.tasks.extract import extract_docs
    from fineflow.tasks.filter import judge_docs
    from fineflow.tasks.url_filter import filter_warc

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        warc = Path(args.warc) if args.warc else t / "big.warc.gz"
        if not args.warc:
            n, size = build(warc, args.mb)
            print(f"big WARC: {n:,} responses, {size / 1e6:.1f} MB (sample records, new URLs)")
        print(f"before the stages: {_memory_mb()}", flush=True)
        t0 = time.perf_counter()
        counts = filter_warc(warc, t / "records.parquet", UrlFilterConfig())
        print(f"url_filter: {counts['kept']:,} pages; {_memory_mb()}", flush=True)
        cfg = ExtractConfig(workers=args.workers)
        counts, _ = extract_docs(
            warc, t / "records.parquet", t / "docs.parquet", cfg, extractor=memo_extract
        )
        print(f"extract: {counts['kept']:,} documents; {_memory_mb()}", flush=True)
        counts, _ = judge_docs(
            t / "docs.parquet", t / "kept.parquet", t / "dropped.parquet",
            FilterConfig(workers=args.workers),
        )  # fmt: skip
        print(f"filter: {counts['kept']:,} kept; {_memory_mb()}", flush=True)
        print(f"{time.perf_counter() - t0:.0f} s for the three stages")
        print(f"digest of the outputs: {output_digest(t, ('docs.parquet', 'kept.parquet'))}")


if __name__ == "__main__":
    sys.exit(main())
