"""Training throughput of fineflow's real trainer (fineflow.training) on synthetic tokens.

    .venv/bin/python bench/train.py                       # tiny preset, CPU
    .venv/bin/python bench/train.py --preset 124m --batch-size 32 --steps 40 --json out.json

Prints tokens/s, step time, MFU (against fineflow.devices' table; none on CPU or an
unknown card) and peak memory. Timing comes from the trainer's own log intervals
(each ends with a device sync); the first two intervals (compilation, warm-up) are
dropped and the median of the rest is reported. The run writes its checkpoint into
a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fineflow.config import ModelConfig, TrainConfig  # noqa: E402
from fineflow.devices import device_name  # noqa: E402
from fineflow.training.loop import train  # noqa: E402
from fineflow.training.runtime import pick_device  # noqa: E402

PRESETS = {
    "tiny": (ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=128), 4096, 16),
    "124m": (ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024), 50257, 32),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch-size", type=int, help="sequences per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    model, vocab, batch = PRESETS[args.preset]
    cfg = TrainConfig(
        model=model,
        steps=args.steps,
        batch_size=args.batch_size or batch,
        grad_accum=args.grad_accum,
        lr=6e-4,
        warmup_steps=min(10, args.steps - 1),
        device=args.device,
        compile={"auto": None, "on": True, "off": False}[args.compile],
        checkpoint_every=args.steps,
        keep_checkpoints=1,
        log_every=args.log_every,
        threads=args.threads,
    )
    tokens = np.random.default_rng(0).integers(0, vocab, size=20_000_000, dtype=np.uint16)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fineflow-bench-") as work:
        result = train([tokens], vocab, cfg, Path(work))
    wall = time.perf_counter() - t0
    rows = result.log_rows[2:] or result.log_rows[-1:]
    tok_s = statistics.median(r[4] for r in rows)
    mfus = [r[5] for r in rows if r[5] is not None]
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB
    figures = {
        "preset": args.preset,
        "device": device_name(device),
        "torch": torch.__version__,
        "params_M": round(result.model.num_params() / 1e6, 2),
        "batch_size": cfg.batch_size,
        "block_size": model.block_size,
        "grad_accum": cfg.grad_accum,
        "tokens_per_step": result.info["tokens_per_step"],
        "compiled": result.info["compiled"],
        "steps": args.steps,
        "tok_per_s": round(tok_s),
        "step_ms": round(1e3 * result.info["tokens_per_step"] / tok_s, 1),
        "mfu": round(statistics.median(mfus), 4) if mfus else None,
        "peak_flops": result.info["peak_flops"],
        "peak_mem_GB": round(peak_mem, 2),
        "final_loss": round(result.history[-1][1], 4),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
