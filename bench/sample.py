"""Generation speed with and without the KV cache (batch 1, 512 new tokens, CPU by default).

    .venv/bin/python bench/sample.py                      # tiny width, context 1024
    .venv/bin/python bench/sample.py --block-size 128     # the CPU default's context

Random weights: speed does not depend on what the model learnt. With a context of
1024 the 16-token prompt plus 512 new tokens fit the window, so the cached path is a
prefill and then one token per step. With the CPU default's context of 128 the window
fills after 112 tokens, and from there every cached step is a full prefill (see
GPT.generate: it keeps cached and uncached sampling identical), so the cache helps
only up to the window.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fineflow.config import ModelConfig  # noqa: E402
from fineflow.model import GPT  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="batch-1 decoding: 1 is fastest")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size
    )
    model = GPT(cfg, args.vocab).to(args.device).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt), device=args.device)
    figures: dict[str, object] = {
        "model": cfg.model_dump(),
        "new_tokens": args.new_tokens,
        "threads": args.threads,
    }
    outs = {}
    for use_cache in (True, False):
        model.generate(prompt, 8, temperature=0, use_cache=use_cache)  # warm-up
        t0 = time.perf_counter()
        outs[use_cache] = model.generate(
            prompt, args.new_tokens, temperature=0, use_cache=use_cache
        )
        dt = time.perf_counter() - t0
        figures["cached_tok_s" if use_cache else "uncached_tok_s"] = round(args.new_tokens / dt, 1)
    figures["speedup"] = round(figures["cached_tok_s"] / figures["uncached_tok_s"], 2)  # type: ignore[operator]
    figures["same_tokens"] = bool(torch.equal(outs[True], outs[False]))
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
