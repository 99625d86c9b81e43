"""Shard encoding throughput: MB of text/s for tiktoken and HF tokenizers, 1 and 2 cores.

    .venv/bin/python bench/shard.py           # needs data/extract/*/docs.parquet (make run)

Trains the stage's byte-level BPE (vocab 4096, as the default config) on the sample's
extracted documents, then encodes them with both of tasks/tokenizer.py's encoders, with
the process pinned to 1 and then 2 cores (RAYON_NUM_THREADS and tiktoken's thread count
follow), checks the ids are identical, and prints MB/s (UTF-8 bytes of input).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def measure(cores: int, docs: str, vocab: int) -> None:
    import pyarrow.parquet as pq

    from fineflow.tasks.tokenizer import hf_encoder, tiktoken_encoder, train_bpe

    texts = [
        t
        for f in sorted(glob.glob(docs))
        for t in pq.read_table(f, columns=["text"])[0].to_pylist()
    ]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    tok = train_bpe(texts, vocab)
    results = {}
    for name, enc in (("tiktoken", tiktoken_encoder(tok)), ("hf", hf_encoder(tok))):
        assert enc is not None, f"{name} encoder unavailable"
        enc(texts[:50])
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            ids = [i for b in range(0, len(texts), 256) for i in enc(texts[b : b + 256])]
            best = min(best, time.perf_counter() - t0)
        results[name] = (mb / best, ids)
    same = results["tiktoken"][1] == results["hf"][1]
    print(
        f"{cores} core(s), {mb:.1f} MB of text: tiktoken {results['tiktoken'][0]:.1f} MB/s,"
        f" HF tokenizers {results['hf'][0]:.1f} MB/s; identical ids: {same}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(REPO_ROOT / "data" / "extract" / "*" / "docs.parquet"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--cores", type=int, default=0, help="(internal) measure pinned to N cores")
    args = ap.parse_args()
    if args.cores:
        measure(args.cores, args.docs, args.vocab)
        return
    if not glob.glob(args.docs):
        raise SystemExit(f"no {args.docs}: run `make run` (or fineflow run --stop-after extract)")
    avail = sorted(os.sched_getaffinity(0))
    for n in (1, 2):
        if n > len(avail):
            break
        env = {**os.environ, "RAYON_NUM_THREADS": str(n)}
        cmd = ["taskset", "-c", ",".join(map(str, avail[:n])), sys.executable, __file__]
        subprocess.run([*cmd, "--cores", str(n), "--docs", args.docs], env=env, check=True)


if __name__ == "__main__":
    main()
