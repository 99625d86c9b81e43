"""What bad WARCs cost a run: wall time with and without them, and how fast a failure ends.

    .venv/bin/python bench/bad_warcs.py [--stop-after dedup]

Runs the real CLI (`fineflow run`, its own temporary Prefect server) three times, each on
a fresh data root:
1. the five bundled sample WARCs alone;
2. the same five plus six bad ones (cut inside the first member, empty, random bytes,
   HTML named .warc.gz, an ARC file, an unreachable URL on 127.0.0.1): prints the wall
   time beside run 1's, the exit status (3: partial) and whether the corpus fingerprint
   is the same;
3. a sample WARC plus one empty WARC with `sources.on_error=fail`: seconds from the
   failing task's log line to the process's exit (the target is under 5 s).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from fineflow.config import SAMPLE_DIR

SAMPLE = sorted(str(p) for p in (SAMPLE_DIR / "warcs").glob("*.warc.gz"))
DOWNLOAD = {"retries": 1, "backoff_s": 0.5}


def bad_warcs(d: Path) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    files = {
        "cut.warc.gz": Path(SAMPLE[0]).read_bytes()[:200],
        "empty.warc.gz": b"",
        "random.warc.gz": os.urandom(1 << 20),
        "page.warc.gz": b"<!DOCTYPE html><html><body>not a WARC</body></html>\n" * 1000,
        "old.arc.gz": gzip.compress(b"filedesc://old.arc 0.0.0.0 20000101000000 text/plain 76\n"),
    }
    for name, body in files.items():
        (d / name).write_bytes(body)
    return [str(d / n) for n in files] + [f"http://127.0.0.1:{port}/gone.warc.gz"]


def run(tmp: Path, name: str, tree: dict, stop_after: str) -> tuple[float, int, str]:
    cfg = tmp / f"{name}.yaml"
    tree = {"data_root": str(tmp / name), "download": DOWNLOAD, **tree}
    cfg.write_text(yaml.safe_dump(tree))
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "fineflow.cli", "run", "--config", str(cfg)]
        + (["--stop-after", stop_after] if stop_after else []),
        capture_output=True,
        text=True,
    )
    return time.monotonic() - t0, p.returncode, p.stdout + p.stderr


def corpus_fingerprint(root: Path) -> str | None:
    found = sorted((root / "dedup").glob("*/manifest.json"))
    return json.loads(found[0].read_text())["fingerprint"] if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stop-after", default="dedup", help="'' runs the whole pipeline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        bad = bad_warcs(tmp)
        good_s, good_rc, _ = run(tmp, "good", {"sources": {"warcs": SAMPLE}}, args.stop_after)
        mixed = [w for pair in zip(SAMPLE, bad, strict=False) for w in pair] + bad[len(SAMPLE) :]
        mix_s, mix_rc, _ = run(tmp, "mixed", {"sources": {"warcs": mixed}}, args.stop_after)
        same = corpus_fingerprint(tmp / "good") == corpus_fingerprint(tmp / "mixed")
        print(f"good only: {len(SAMPLE)} WARCs, {good_s:.1f} s, exit {good_rc}")
        print(
            f"mixed:     {len(mixed)} WARCs ({len(bad)} bad), {mix_s:.1f} s, exit {mix_rc}; "
            f"{mix_s - good_s:+.1f} s; corpus identical: {same}"
        )
        strict = {"sources": {"warcs": [SAMPLE[0], bad[1]], "on_error": "fail"}}
        _, rc, out = run(tmp, "strict", strict, args.stop_after)
        t_end = time.time()
        hit = re.search(r"^(\d\d:\d\d:\d\d\.\d{3}) \| ERROR .*Task run failed", out, re.M)
        if hit is None:
            print(f"strict: exit {rc}, no failing task line found")
            return
        failed_at = datetime.combine(
            datetime.now().date(), datetime.strptime(hit.group(1), "%H:%M:%S.%f").time()
        ).timestamp()
        print(
            f"strict:    exit {rc}, {t_end - failed_at:.1f} s from the failing task's log line "
            "to the process's exit"
        )


if __name__ == "__main__":
    main()
