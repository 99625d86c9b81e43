"""The training loop: token arrays + TrainConfig -> a trained GPT, its loss history and timings.

One optimizer step sees batch_tokens tokens (batch_size x block_size x grad_accum x
processes; give batch_tokens and grad_accum is derived). AdamW (betas 0.9/0.95, weight
decay on matrices only, fused on CUDA), linear warmup then cosine decay, or
warmup-stable-decay (`schedule: wsd`), to min_lr_ratio * lr, clipping. bf16
autocast, TF32 and torch.compile on CUDA; float32 eager on CPU, where a run resumed
from a checkpoint ends bitwise equal to an uninterrupted one. Each log line (every
log_every steps, and steps 1 and last) costs the only host-device sync: the mean
loss since the previous one, lr, grad norm, tokens/s and MFU (fineflow.devices).
A resumed run says so where the user looks (`announce`): "train: resumed from step 15
of 60"; so does a step line every few seconds, the first and the last (step, loss,
lr, tokens/s, seconds left: fineflow.progress.Ticker), while every log line goes to
the log file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fineflow.config import TrainConfig
from fineflow.devices import device_name, device_peak_flops, mfu
from fineflow.model import GPT
from fineflow.progress import Progress, Ticker, tell
from fineflow.training.checkpoint import (
    TrainState,
    UnreadableCheckpoint,
    checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from fineflow.training.data import Prefetcher, WindowSampler
from fineflow.training.runtime import SINGLE_PROCESS, Dist, autocast, setup_device

log = logging.getLogger("fineflow.train")


def announce(message: str, dist: Dist = SINGLE_PROCESS) -> None:
    """A line for the user (fineflow.progress.tell: the terminal and the UI's task log).
    Under torchrun, where rank 0 has no task run, also on stderr, the launching terminal's."""
    tell(message, log)
    if dist.world > 1:
        print(message, file=sys.stderr, flush=True)


def grad_accum_steps(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per step per process: from batch_tokens when given, else grad_accum."""
    if cfg.batch_tokens is None:
        return cfg.grad_accum
    per_micro = cfg.batch_size * cfg.model.block_size * world
    if cfg.batch_tokens % per_micro:
        raise ValueError(
            f"train.batch_tokens {cfg.batch_tokens} is not a multiple of batch_size "
            f"{cfg.batch_size} x block_size {cfg.model.block_size} x {world} process(es) "
            f"= {per_micro}"
        )
    return cfg.batch_tokens // per_micro


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norm gains)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda"
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then down to min_lr_ratio * lr at the last step.

    cosine: a half cosine over all steps after warmup. wsd (warmup-stable-decay): lr
    stays flat, then falls linearly over the last decay_fraction of the steps.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.min_lr_ratio * cfg.lr
    if cfg.schedule == "wsd":
        decay = max(1, round(cfg.decay_fraction * cfg.steps))
        start = max(cfg.warmup_steps, cfg.steps - decay)
        if step < start:
            return cfg.lr
        progress = (step - start + 1) / max(1, cfg.steps - start)
        return cfg.lr - progress * (cfg.lr - floor)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - floor)


def run_info(
    model: GPT, cfg: TrainConfig, device: torch.device, dist: Dist, accum: int, compiled: bool
) -> dict[str, Any]:
    """The run's figures (metrics.duckdb's `run` table: tasks/train.py RUN_COLUMNS), logged."""
    tokens_per_step = cfg.batch_size * cfg.model.block_size * accum * dist.world
    flops_per_token = model.estimate_flops_per_token()
    info = {
        "device": device_name(device),
        "world": dist.world,
        "grad_accum": accum,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "peak_flops": device_peak_flops(device),
        "compiled": compiled,
    }
    log.info(
        "train: %d params, %.1f MFLOP/token, %d tokens/step (%d x %d x %d x %d), %s x %d, "
        "compile %s",
        model.num_params(),
        flops_per_token / 1e6,
        tokens_per_step,
        cfg.batch_size,
        cfg.model.block_size,
        accum,
        dist.world,
        info["device"],
        dist.world,
        compiled,
    )
    return info


@dataclass
class LogClock:
    """When the current log interval began and how many steps it holds (for tokens/s)."""

    start: float = field(default_factory=time.perf_counter)
    steps: int = 0


def log_interval(
    state: TrainState,
    clock: LogClock,
    lr: float,
    grad_norm: torch.Tensor,
    cfg: TrainConfig,
    dist: Dist,
    info: dict[str, Any],
    ticker: Ticker | None = None,
) -> None:
    """Close a log interval: its mean loss into the history, a row of LOG_COLUMNS, a log line."""
    loss_sum = state.loss_sum
    assert loss_sum is not None  # a log interval holds at least one step
    if dist.world > 1:  # the mean over all processes' micro-batches
        loss_sum = loss_sum.clone()
        torch.distributed.all_reduce(loss_sum)
        loss_sum /= dist.world
    mean = float(loss_sum) / state.loss_steps  # the only sync per log interval
    state.history.append((state.step, mean))
    state.loss_sum, state.loss_steps = None, 0
    now = time.perf_counter()
    state.elapsed_s += now - clock.start
    tok_s = clock.steps * info["tokens_per_step"] / (now - clock.start)
    util = mfu(tok_s, info["flops_per_token"], info["peak_flops"], dist.world)
    state.log_rows.append((state.step, mean, lr, float(grad_norm), tok_s, util, state.elapsed_s))
    line = (
        f"train: step {state.step}/{cfg.steps}  loss {mean:.4f}  lr {lr:.2e}  "
        f"grad norm {float(grad_norm):.2f}  {tok_s:,.0f} tok/s"
        + ("" if util is None else f"  MFU {100 * util:.1f}%")
        + f"  {eta_s(state, cfg):.0f}s left"
    )
    # the terminal and the UI every few seconds (and at the first and last step); the
    # log file every log interval
    if ticker is not None and (state.step in (1, cfg.steps) or ticker.due()):
        ticker.say(line, force=True)
        if dist.world > 1:
            print(line, file=sys.stderr, flush=True)
    else:
        log.info(line)
    clock.start, clock.steps = now, 0


def eta_s(state: TrainState, cfg: TrainConfig) -> float:
    """Seconds left at the pace so far (elapsed_s spans a resumed run's earlier processes)."""
    return (cfg.steps - state.step) * state.elapsed_s / max(1, state.step)


@dataclass
class TrainResult:
    model: GPT  # the plain (uncompiled, unwrapped) module, on the training device
    steps: int
    tokens_seen: int
    history: list[tuple[int, float]]
    log_rows: list[tuple[Any, ...]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # device, world, peak FLOP/s, ...


def train(
    shards: list[np.ndarray],
    vocab_size: int,
    cfg: TrainConfig,
    work: Path,
    *,
    stop_at: int | None = None,
    dist: Dist = SINGLE_PROCESS,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a GPT on token arrays, resuming from the newest checkpoint in `work`.

    stop_at: return after this step without a final checkpoint, as a kill would (tests).
    dist: rank and world size under torchrun (the process group is already set up).
    """
    device = setup_device(cfg, dist)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, vocab_size).to(device)
    opt = make_optimizer(model, cfg, device)
    accum = grad_accum_steps(cfg, dist.world)
    state = TrainState()
    for path in reversed(checkpoints(work)):  # the newest that loads; writes are atomic, so
        try:  # a bad file is damage on disk, and an older one continues exactly as well
            state = load_checkpoint(path, model, opt, cfg, device, dist)
        except UnreadableCheckpoint as err:
            # set aside, not deleted (no longer a ckpt_*.pt, so pruning never keeps it over
            # a good one); the work dir goes once the model is committed
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            log.warning("%s; set aside as %s, trying an older one", err, aside.name)
            continue
        if dist.main:
            announce(f"train: resumed from step {state.step} of {cfg.steps} ({path.name})", dist)
        break
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    forward: Any = torch.compile(model) if compiled else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(forward, device_ids=ids)
    sampler = WindowSampler(shards, cfg.model.block_size, cfg.batch_size, cfg.seed)
    info = run_info(model, cfg, device, dist, accum, compiled)
    tokens_per_step = info["tokens_per_step"]

    model.train()
    loader = Prefetcher(sampler, state.step, accum, device, dist)
    clock = LogClock()
    ticker = Ticker(log) if dist.main else None
    try:
        while state.step < cfg.steps:
            lr = lr_at(state.step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=device)
            for micro in range(accum):
                batch = loader.next()
                # DDP: all-reduce the gradients once per step, on the last micro-batch.
                sync = dist.world == 1 or micro == accum - 1
                with contextlib.nullcontext() if sync else forward.no_sync(), autocast(device):
                    _, loss = forward(batch[:, :-1], batch[:, 1:])
                (loss / accum).backward()
                step_loss += loss.detach() / accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            state.step += 1
            clock.steps += 1
            state.loss_sum = step_loss if state.loss_sum is None else state.loss_sum + step_loss
            state.loss_steps += 1
            if progress is not None:
                progress.update(state.step, cfg.steps)

            if state.step % cfg.log_every == 0 or state.step in (1, cfg.steps):
                log_interval(state, clock, lr, grad_norm, cfg, dist, info, ticker)
            if stop_at is not None and state.step >= stop_at:
                break
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                if dist.main:
                    save_checkpoint(work, model, opt, state, cfg, dist)
                if dist.world > 1:  # nobody runs ahead of a checkpoint being written
                    torch.distributed.barrier()
    finally:
        loader.close()
    if progress is not None:
        progress.done()
    return TrainResult(
        model, state.step, state.step * tokens_per_step, state.history, state.log_rows, info
    )
