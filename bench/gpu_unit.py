"""GPU checks of the trainer and the model, for a session that has a CUDA card.

    python3 bench/gpu_unit.py --json $OUT/gpu_unit.json

Each check records pass/fail and its figures; the script goes on after a failure and
exits 1 if any check failed (2 without CUDA); the JSON is rewritten after each check.
What it holds:
- the card is in fineflow.devices' peak table (else MFU is not reported);
- bf16 autocast forward: finite loss near ln(vocab) at init; compiled == eager (bf16
  tolerance);
- the prefetched loader pins its host batches and hands the GPU exactly the sampler's
  batches;
- `train` on CUDA (bf16, TF32, compile, fused AdamW, batch_tokens): the loss falls on a
  learnable pattern, MFU is reported, and a run stopped at step 12 and resumed from its
  step-10 checkpoint ends at the same loss as an uninterrupted run (bf16 kernels are
  not bitwise deterministic, so within 2%);
- KV-cached greedy generation matches uncached on CUDA (float32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fineflow.config import ModelConfig, TrainConfig  # noqa: E402
from fineflow.devices import device_name, device_peak_flops  # noqa: E402
from fineflow.model import GPT  # noqa: E402
from fineflow.training.data import Prefetcher, WindowSampler  # noqa: E402
from fineflow.training.loop import train  # noqa: E402
from fineflow.training.runtime import autocast  # noqa: E402

DEV = torch.device("cuda")
SMALL = ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64)


def check_peak_table() -> dict[str, Any]:
    peak = device_peak_flops(DEV)
    return {"ok": peak is not None, "device": device_name(DEV), "peak_flops": peak}


def check_forward() -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(SMALL, 1000).to(DEV)
    x = torch.randint(0, 1000, (4, 65), device=DEV)
    with autocast(DEV):
        _, eager = model(x[:, :-1], x[:, 1:])
        _, compiled = torch.compile(model)(x[:, :-1], x[:, 1:])
    e, c = float(eager), float(compiled)
    ok = math.isfinite(e) and abs(e - math.log(1024)) < 1.0 and abs(e - c) < 2e-2 * e
    return {"ok": ok, "eager_loss": e, "compiled_loss": c}


def check_loader() -> dict[str, Any]:
    tokens = [np.arange(0, 5000, dtype=np.uint16)]
    sampler = WindowSampler(tokens, 64, 8, seed=3)
    loader = Prefetcher(sampler, start_step=5, accum=2, device=DEV)
    got = [loader.next() for _ in range(4)]
    loader.close()
    want = [sampler.batch(s, m) for s in (5, 6) for m in (0, 1)]
    ok = all(g.is_cuda and torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))
    # The host batches must be pinned, or the non_blocking copy silently syncs.
    peek = Prefetcher(sampler, start_step=5, accum=2, device=DEV)
    item = peek._queue.get(timeout=30)  # a host batch before its copy (or the thread's error)
    peek.close()
    pinned = isinstance(item, torch.Tensor) and item.is_pinned()
    return {"ok": ok and pinned, "pinned_source": pinned}


def check_train_and_resume() -> dict[str, Any]:
    pattern = np.random.default_rng(1).integers(0, 1000, size=37)
    tokens = [np.tile(pattern, 3000).astype(np.uint16)]
    cfg = TrainConfig(
        model=SMALL,
        steps=40,
        batch_size=16,
        batch_tokens=16 * 64 * 2,
        lr=3e-3,
        warmup_steps=5,
        checkpoint_every=10,
        log_every=10,
        device="cuda",
    )
    with tempfile.TemporaryDirectory() as tmp:
        whole = train(tokens, 1000, cfg, Path(tmp) / "whole")
        train(tokens, 1000, cfg, Path(tmp) / "killed", stop_at=12)
        resumed = train(tokens, 1000, cfg, Path(tmp) / "killed")
    first, last = whole.history[0][1], whole.history[-1][1]
    again = resumed.history[-1][1]
    ok = (
        last < first - 3.0
        and whole.info["compiled"]
        and whole.info["grad_accum"] == 2
        and (whole.info["peak_flops"] is None or whole.log_rows[-1][5] is not None)
        and abs(again - last) <= 0.02 * max(last, 0.05) + 0.01
    )
    return {
        "ok": ok,
        "first_loss": first,
        "last_loss": last,
        "resumed_last_loss": again,
        "last_mfu": whole.log_rows[-1][5],
        "tok_per_s": whole.log_rows[-1][4],
    }


def check_kv_cache() -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(SMALL, 1000).to(DEV).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    prompt = torch.randint(0, 1000, (2, 5), device=DEV)
    cached = model.generate(prompt, 40, temperature=0)
    plain = model.generate(prompt, 40, temperature=0, use_cache=False)
    agree = float((cached == plain).float().mean())
    return {"ok": agree == 1.0, "agreement": agree}


CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "peak_table": check_peak_table,
    "forward_bf16_compile": check_forward,
    "prefetch_loader": check_loader,
    "train_and_resume": check_train_and_resume,
    "kv_cache": check_kv_cache,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    results: dict[str, Any] = {"device": device_name(DEV), "torch": torch.__version__}
    for name, check in CHECKS.items():
        t0 = time.perf_counter()
        try:
            results[name] = check()
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()[-2000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(results[name]), flush=True)
        # After every check, so a run cut short by its timeout still says what passed.
        results["failed"] = [n for n in CHECKS if n in results and not results[n]["ok"]]
        results["complete"] = name == list(CHECKS)[-1]
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    failed = results["failed"]
    print("FAILED: " + ", ".join(failed) if failed else "all GPU checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
