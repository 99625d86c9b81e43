"""trafilatura as shipped against trafilatura with fineflow's compiled pruning XPaths
(tasks/fast_trafilatura.py): CPU seconds per page, and whether the text is the same.

    .venv/bin/python bench/fast_trafilatura.py [WARC ...] [--reps 2] [--pages N]

Every HTML response of the WARCs (default: the bundled sample) is decoded as the extract
stage does, then extracted in this process (extract_main_text, the stage's settings) with
`accelerate` off, then on, alternated `--reps` times; CPU seconds of this process, so a
shared machine's other load does not count. Then one pass in check mode: every compiled
expression's answer compared with lxml's XPath on every tree trafilatura builds. Prints
the seconds (median), the speed-up, the pages whose text differs (none expected) and the
expression calls compared, with any mismatch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from pathlib import Path

from fineflow.config import SAMPLE_DIR, ExtractConfig
from fineflow.tasks import fast_trafilatura
from fineflow.tasks.extract import extract_main_text, prepare
from fineflow.tasks.warc import iter_records


def pages(warcs: list[Path], limit: int | None) -> list[str]:
    cfg = ExtractConfig()
    counts: Counter[str] = Counter()
    out: list[str] = []
    for warc in warcs:
        for rec in iter_records(warc, payload=True, max_payload_bytes=cfg.max_html_bytes):
            if rec.warc_type != "response" or rec.content_type not in ("text/html", None):
                continue
            if (html := prepare(rec, counts)) is not None:
                out.append(html)
                if limit and len(out) >= limit:
                    return out
    return out


def run(htmls: list[str], accelerate: bool) -> tuple[float, list]:
    cfg = ExtractConfig()
    opts = (cfg.favor_precision, cfg.include_comments, cfg.include_tables, accelerate)
    t0 = time.process_time()
    texts = [extract_main_text(h, *opts) for h in htmls]
    return time.process_time() - t0, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("warcs", nargs="*", type=Path)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--pages", type=int, help="at most this many pages")
    args = ap.parse_args()
    warcs = args.warcs or sorted((SAMPLE_DIR / "warcs").glob("*.warc.gz"))
    htmls = pages(warcs, args.pages)
    print(f"{len(htmls)} HTML pages from {len(warcs)} WARC(s), {sum(map(len, htmls)) >> 20} MB")
    run(htmls[:20], True)  # warm: imports, compiled expressions, caches
    run(htmls[:20], False)
    secs: dict[bool, list[float]] = {False: [], True: []}
    texts: dict[bool, list] = {}
    for _ in range(args.reps):
        for accelerate in (False, True):
            s, texts[accelerate] = run(htmls, accelerate)
            secs[accelerate].append(s)
            print(f"  accelerate={accelerate}: {s:.2f} s CPU", flush=True)
    off, on = statistics.median(secs[False]), statistics.median(secs[True])
    differ = sum(a != b for a, b in zip(texts[False], texts[True], strict=True))
    print(f"trafilatura as shipped: {off:.2f} s CPU, {1000 * off / len(htmls):.1f} ms/page")
    print(f"compiled pruning XPaths: {on:.2f} s CPU, {1000 * on / len(htmls):.1f} ms/page")
    print(f"speed-up x{off / on:.2f}; pages whose text differs: {differ} of {len(htmls)}")
    fast_trafilatura.use("check")
    run(htmls, True)
    print(
        f"check mode: {sum(fast_trafilatura.CHECKS.values())} expression calls compared "
        f"with lxml's XPath over {len(fast_trafilatura.CHECKS)} expressions, "
        f"{len(fast_trafilatura.MISMATCHES)} mismatches {fast_trafilatura.MISMATCHES[:5]}"
    )


if __name__ == "__main__":
    main()
