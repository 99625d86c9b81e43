"""Object-storage data root: what mirroring to S3 costs, on a local S3 server (moto).

Runs the data flow (to dedup) on the sample's first WARCs and prints seconds and the
megabytes of artifacts in the local working copy before and after: local data root,
first run; the same with `remote_root=s3://…` (compute + upload); an empty working copy
on the same bucket (all `Cached`: only the reported corpus is downloaded); cached runs;
and an empty working copy growing the corpus by one WARC (dedup runs: it downloads the
old WARCs' filtered documents and signatures, not their WARCs). Also the bytes mirrored.

    .venv/bin/python bench/remote.py [--warcs 2] [--pages 40]

Needs the test extra (moto[server], s3fs). The S3 server runs in this process, so
upload/download rates are those of the loopback and moto, not of a real bucket.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warcs", type=int, default=2)
    ap.add_argument("--pages", type=int, default=40, help="responses per WARC (0: whole WARC)")
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import fsspec
    from prefect.testing.utilities import prefect_test_harness

    from fineflow.flows.pipeline import pipeline
    from tests.helpers.e2e import SAMPLE_WARCS, head_warc, small_config

    fs = fsspec.filesystem("s3")
    fs.mkdir("bench")
    tmp = Path(tempfile.mkdtemp(prefix="ff-remote-"))
    warcs = []
    for p in SAMPLE_WARCS[: args.warcs + 1]:  # the last one only for the growth run
        warcs.append(str(head_warc(p, tmp / p.name, args.pages) if args.pages else p))

    def local_mb(root: Path, stage: str = "*") -> float:
        return sum(p.stat().st_size for p in root.glob(f"{stage}/*/*") if p.is_file()) / 1e6

    def run(label: str, root: Path, remote: str | None, n: int = args.warcs) -> None:
        cfg = small_config(root, warcs[:n], stop_after="dedup", remote_root=remote)
        before = local_mb(root)
        start = time.perf_counter()
        result = pipeline(cfg)
        took = time.perf_counter() - start
        ran = sum(line.ran for line in result.lines)
        cached = sum(line.cached for line in result.lines)
        print(
            f"{label:<52} {took:6.1f} s   task runs: {ran:2d} ran, {cached:2d} cached"
            f"   artifacts here: {before:5.2f} -> {local_mb(root):5.2f} MB",
            flush=True,
        )

    with prefect_test_harness(server_startup_timeout=120):
        print(f"{args.warcs} WARCs x {args.pages or 'all'} pages, data flow to dedup")
        run("local data root, first run", tmp / "local", None)
        run("remote_root=s3://, first run (compute + upload)", tmp / "m1", "s3://bench/r")
        run("s3://, empty working copy, all cached", tmp / "m2", "s3://bench/r")
        run("s3://, working copy present (cached)", tmp / "m2", "s3://bench/r")
        run("local data root, cached", tmp / "local", None)
        # a fresh machine grows the corpus by one WARC: dedup reruns over every WARC
        run(
            f"s3://, empty working copy, grown to {len(warcs)} WARCs",
            tmp / "m3",
            "s3://bench/r",
            len(warcs),
        )
    per_stage = ", ".join(
        f"{stage} {local_mb(tmp / 'm3', stage):.2f}"
        for stage in ("download", "url_filter", "extract", "filter", "minhash", "dedup")
    )
    print(f"  the grown working copy holds (MB): {per_stage}")
    mirrored = sum(fs.du("bench/r", total=False).values())
    print(f"mirrored: {mirrored / 1e6:.1f} MB in {len(fs.find('bench/r'))} objects")

    # the mirror alone, without Prefect: every artifact of the first run, up and down
    from fineflow.storage.artifacts import Manifest
    from fineflow.storage.remote import Remote

    found = sorted((tmp / "m1").glob("*/*/manifest.json"))
    ms = [Manifest.model_validate_json(p.read_text()) for p in found]
    size = sum(f.bytes for m in ms for f in m.files) / 1e6
    again = Remote("s3://bench/again")
    start = time.perf_counter()
    for m in ms:
        again.push_artifact(tmp / "m1", m)
    up = time.perf_counter() - start
    start = time.perf_counter()
    for m in ms:
        again.fetch_artifact(tmp / "m4", m)
    down = time.perf_counter() - start
    print(f"{len(ms)} artifacts, {size:.1f} MB: push {up:.2f} s, fetch + sha256 check {down:.2f} s")
    server.stop()


if __name__ == "__main__":
    main()
