"""Multi-process training: torchrun + DDP over gloo on the CPU, two processes.

The same steps as one process accumulating the two micro-batches, so the weights
agree with a single-process run up to float32 summation order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fineflow.config import ModelConfig, TrainConfig
from fineflow.storage.shards import write_shard
from fineflow.training.checkpoint import checkpoint_path, checkpoints
from fineflow.training.launch import RESULT, train_job
from fineflow.training.loop import train

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    pattern = np.random.default_rng(1).integers(0, 64, size=13)
    tokens = np.tile(pattern, 200).astype(np.uint16)  # learnable: the loss must fall
    shard = tmp_path / "train_000000.bin"
    write_shard(shard, tokens, 64)
    cfg = TrainConfig(
        model=TINY,
        steps=16,
        batch_size=4,
        batch_tokens=4 * 16 * 2,  # two micro-batches per step: one per process under DDP
        lr=1e-2,
        warmup_steps=2,
        checkpoint_every=8,
        log_every=4,
        device="cpu",
        threads=1,
    )
    work = tmp_path / "ddp"
    ddp = train_job([shard], 64, cfg, work, nproc=2)
    assert (work / RESULT).exists()
    assert checkpoints(work) == [checkpoint_path(work, 8), checkpoint_path(work, 16)]
    assert ddp.info["world"] == 2 and ddp.info["grad_accum"] == 1
    assert ddp.steps == 16 and ddp.tokens_seen == 16 * 4 * 16 * 2

    single = train([tokens], 64, cfg, tmp_path / "single")  # grad_accum 2, one process
    assert single.info["grad_accum"] == 2
    assert [s for s, _ in ddp.history] == [s for s, _ in single.history] == [1, 4, 8, 12, 16]
    np.testing.assert_allclose(
        [x for _, x in ddp.history], [x for _, x in single.history], rtol=1e-4
    )
    assert ddp.history[-1][1] < ddp.history[0][1] - 1.0  # it trains
    a, b = ddp.model.state_dict(), single.model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
