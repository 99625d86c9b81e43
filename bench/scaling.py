"""Scaling of the per-WARC stages from 1 to 2 cores: one big WARC, and many small ones.

    .venv/bin/python bench/scaling.py [--mb 20] [--reps 2] [--cores 1,2] [--skip-many] [--many 8]

"big": one WARC of real pages (bench/big_warc.py: the sample's records replicated with new
URLs, `--mb` MB) through url_filter -> extract -> filter -> minhash (the stages' own
functions, with `workers` left to the flow's sizing: the task gets every core it may use)
in a fresh process whose CPU affinity is 1, then 2 cores, as `taskset` would give it.
"many": the five sample WARCs (or, with `--many N`, their response records dealt
round-robin into N WARCs of about equal work, as a crawl's WARCs are) on a process pool of
as many processes as cores, one sandbox each, as the flow maps them. Runs alternate (1
core, 2 cores, 1 core, ...) so that a shared machine's load falls on both alike; medians
are printed, with every run's seconds.

Also printed: whether the 1-core and 2-core runs wrote the same bytes (docs.parquet of
extract and filter, signatures.parquet), and the peak RSS of the WARC's processing: the
task's process (VmHWM) and its largest descendant (a sandbox or filter process, sampled).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

from fineflow.config import (
    SAMPLE_DIR,
    ExtractConfig,
    FilterConfig,
    MinHashConfig,
    UrlFilterConfig,
)

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from big_warc import build, output_digest, split  # noqa: E402 - a script beside this one


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def chain(warc: str, workers: int | None = None) -> dict:
    """url_filter -> extract -> filter -> minhash of one WARC in this process; seconds
    per stage."""
    from fineflow.tasks.extract import extract_docs
    from fineflow.tasks.filter import judge_docs
    from fineflow.tasks.minhash import signatures_to_parquet
    from fineflow.tasks.url_filter import filter_warc

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0 = time.perf_counter()
        filter_warc(Path(warc), t / "records.parquet", UrlFilterConfig())
        t1 = time.perf_counter()
        counts, _ = extract_docs(
            Path(warc), t / "records.parquet", t / "docs.parquet", ExtractConfig(workers=workers)
        )
        t2 = time.perf_counter()
        fcounts, _ = judge_docs(
            t / "docs.parquet", t / "kept.parquet", t / "dropped.parquet",
            FilterConfig(workers=workers),
        )  # fmt: skip
        t3 = time.perf_counter()
        signatures_to_parquet(
            t / "kept.parquet", t / "signatures.parquet", MinHashConfig(workers=workers)
        )
        t4 = time.perf_counter()
        peak = _peak_rss_mb()  # the stages' own peak: before the digest below reads files
        digest = output_digest(t, ("docs.parquet", "kept.parquet", "signatures.parquet"))
    return {
        "pages": counts["total"], "docs": counts["kept"], "kept": fcounts["kept"],
        "url_filter": t1 - t0, "extract": t2 - t1, "filter": t3 - t2, "minhash": t4 - t3,
        "wall": t4 - t0,
        "digest": digest, "peak_mb": peak,
    }  # fmt: skip


class DescendantPeaks:
    """The largest peak RSS (VmHWM) among this process's descendants, sampled every 0.2 s:
    sandbox and filter processes are children of the fork server, not of this process,
    so ru_maxrss of reaped children does not see them."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.2):
            for child in me.children(recursive=True):
                try:
                    status = Path(f"/proc/{child.pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) / 1024)

    def __enter__(self) -> DescendantPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _warm() -> None:
    """Imports, lid.176 and the fork server, not timed; no page is judged here: the
    filters' per-token caches would then start warm in this process (the big WARC repeats
    the sample's pages) and cold in the filter processes, which favours one core."""
    from fineflow.tasks.extract import extract_main_text
    from fineflow.tasks.quality import identify_language
    from fineflow.tasks.sandbox import Sandbox

    identify_language("warm")
    with Sandbox(extract_main_text, 1, 60.0) as pool:
        list(pool.map([("<html><body><p>warm</p></body></html>", True, False, True)]))


def _big(warc: str, cores: int, out: dict) -> None:
    """Fresh process limited to `cores` CPUs: the chain on one WARC, workers sized to them."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    _warm()
    with DescendantPeaks() as children:
        r = chain(warc)
    r["peak_task"] = r.pop("peak_mb")  # read before the check digest (it reads the outputs)
    r["peak_child"] = children.peak
    out.update(r)


def _many(warcs: list[str], cores: int, out: dict) -> None:
    """Fresh process limited to `cores` CPUs: a pool of `cores` processes over the WARCs,
    one sandbox and one filter process each (what the flow gives a task when at least as
    many WARCs as processes run)."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    with ProcessPoolExecutor(cores, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(chain, warcs[:cores], [1] * cores))  # warm every pool process
        t0 = time.perf_counter()
        runs = list(pool.map(chain, warcs, [1] * len(warcs)))
        out["wall"] = time.perf_counter() - t0
    out["pages"] = sum(r["pages"] for r in runs)


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        p = ctx.Process(target=target, args=(*args, out))
        p.start()
        p.join()
        return dict(out)


SAMPLE_WARCS = sorted(str(p) for p in (SAMPLE_DIR / "warcs").glob("*.warc.gz"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0, help="size of the big WARC")
    ap.add_argument("--warc", help="use this WARC as the big one instead of building one")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--skip-many", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument(
        "--many", type=int, default=0,
        help="deal the sample's records into this many WARCs (default: the five as they are)",
    )  # fmt: skip
    args = ap.parse_args()
    cores = [int(c) for c in args.cores.split(",")]
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        warc = args.warc
        if warc is None and not args.skip_big:
            warc = str(Path(tmp) / "big.warc.gz")
            n, size = build(Path(warc), args.mb)
            print(f"big WARC: {n:,} responses, {size / 1e6:.1f} MB (sample records, new URLs)")
        warcs = SAMPLE_WARCS
        if args.many and not args.skip_many:
            whole = Path(tmp) / "sample.warc.gz"
            build(whole, 0, copies=1)
            warcs = [str(p) for p in split(whole, args.many, Path(tmp) / "many")]
        big: dict[int, list[dict]] = {c: [] for c in cores}
        many: dict[int, list[dict]] = {c: [] for c in cores}
        for _ in range(args.reps):
            for c in cores:  # alternated: the box's load falls on every setting alike
                if not args.skip_big:
                    big[c].append(_run(_big, warc, c))
                    r = big[c][-1]
                    print(f"  big, {c} core(s): {r['wall']:.1f} s", flush=True)
                if not args.skip_many:
                    many[c].append(_run(_many, warcs, c))
                    print(f"  many, {c} core(s): {many[c][-1]['wall']:.1f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if not args.skip_big:
        first = big[cores[0]][0]
        print(
            f"\nbig WARC: {first['pages']:,} pages -> {first['docs']:,} extracted -> "
            f"{first['kept']:,} kept by the filters"
        )
        med = {c: {k: statistics.median(r[k] for r in big[c]) for k in
                   ("wall", "url_filter", "extract", "filter", "minhash", "peak_task",
                    "peak_child")}
               for c in cores}  # fmt: skip
        for c in cores:
            m = med[c]
            walls = ", ".join(f"{r['wall']:.1f}" for r in big[c])
            print(
                f"{c} core(s): {m['wall']:.1f} s median ({walls}); url_filter "
                f"{m['url_filter']:.1f} s, extract {m['extract']:.1f} s, filter "
                f"{m['filter']:.1f} s, minhash {m['minhash']:.1f} s; "
                f"{first['pages'] / m['wall']:.1f} pages/s; peak RSS task "
                f"{m['peak_task']:.0f} MB, largest child {m['peak_child']:.0f} MB"
            )
        if len(cores) > 1:
            a, b = med[cores[0]], med[cores[-1]]
            print(
                f"scaling {cores[0]} -> {cores[-1]} cores: x{a['wall'] / b['wall']:.2f} whole "
                f"chain (extract x{a['extract'] / b['extract']:.2f}, filter "
                f"x{a['filter'] / b['filter']:.2f}, minhash x{a['minhash'] / b['minhash']:.2f}, "
                f"url_filter x{a['url_filter'] / b['url_filter']:.2f})"
            )
        digests = {r["digest"] for c in cores for r in big[c]}
        print(f"same bytes on every run: {len(digests) == 1}")
    if not args.skip_many:
        pages = many[cores[0]][0]["pages"]
        what = f"{len(warcs)} WARCs dealt from the sample" if args.many else "5 sample WARCs"
        med_many = {c: statistics.median(r["wall"] for r in many[c]) for c in cores}
        for c in cores:
            walls = ", ".join(f"{r['wall']:.1f}" for r in many[c])
            print(
                f"many ({what}, {pages} pages), {c} process(es): "
                f"{med_many[c]:.1f} s median ({walls}), {pages / med_many[c]:.1f} pages/s"
            )
        if len(cores) > 1:
            print(f"scaling: x{med_many[cores[0]] / med_many[cores[-1]]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
