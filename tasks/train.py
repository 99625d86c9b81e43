"""train: token shards -> `model.pt` + `config.json` + `metrics.json`, a GPT trained on them.

Corpus stage. Batches are random windows of block_size + 1 tokens over the
memory-mapped train shards (windows never cross a shard boundary), drawn by a
generator seeded with (seed, step, micro-batch): the loader has no state beyond the
step, so a resumed run reads exactly the batches the killed one would have.
AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup then cosine decay
to min_lr_ratio * lr, gradient accumulation and clipping. bf16 autocast, TF32 and
torch.compile on CUDA; float32 eager on CPU.

A checkpoint (`ckpt.pt`: weights, optimizer, step, loader state, RNG states, configs,
loss history) is written atomically into the stage's work dir every checkpoint_every
steps and at the end; a run that finds one resumes from it, bitwise exactly on CPU.
The work dir is removed once the artifact is committed.

model.pt: the final state_dict, float32 (byte-identical for identical weights).
config.json: {"model": GPT.spec(), "train": TrainConfig}.
metrics.json: {"step": [...], "train_loss": [...], "val_loss": x}, each logged loss
the mean over the steps since the previous log (step 1 alone is logged too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task

from fineflow.config import TrainConfig
from fineflow.model import GPT
from storage import layout
from storage.artifacts import ArtifactWriter, Manifest, stage_key
from tasks.shard import read_shard

STAGE_VERSION = 1
CHECKPOINT = "ckpt.pt"
FINAL_LOSS_POINTS = 3  # final_train_loss: mean of this many last logged losses
VAL_BATCHES = 8  # the end-of-training val loss reads this many batches of the val shards

log = logging.getLogger("fineflow.train")


# ---------------------------------------------------------------- data


def shard_paths(root: Path, shards: Manifest, split: str) -> list[Path]:
    """The shard artifact's `<split>_NNNNNN.bin` files, in order."""
    return sorted(p for p in shards.paths(root, ".bin") if p.name.startswith(f"{split}_"))


class WindowSampler:
    """Batches of random (block_size + 1)-token windows, a pure function of (seed, step, micro)."""

    def __init__(self, shards: list[np.ndarray], block_size: int, batch_size: int, seed: int):
        self.shards, self.block_size = shards, block_size
        self.batch_size, self.seed = batch_size, seed
        self.starts = np.array([max(0, len(s) - block_size) for s in shards], dtype=np.int64)
        self.cum_starts = np.cumsum(self.starts)
        if not len(shards) or self.cum_starts[-1] == 0:
            raise ValueError(f"no train shard holds a window of {block_size + 1} tokens")

    def batch(self, step: int, micro: int) -> torch.Tensor:
        """(batch_size, block_size + 1) int64 on the CPU: inputs are [:, :-1], targets [:, 1:]."""
        seed = np.random.SeedSequence([self.seed, step, micro]).generate_state(1, np.uint64)[0]
        gen = torch.Generator().manual_seed(int(seed))
        picks = torch.randint(int(self.cum_starts[-1]), (self.batch_size,), generator=gen).numpy()
        which = np.searchsorted(self.cum_starts, picks, side="right")
        offsets = picks - (self.cum_starts[which] - self.starts[which])
        rows = [
            self.shards[s][o : o + self.block_size + 1] for s, o in zip(which, offsets, strict=True)
        ]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


def eval_windows(
    tokens: np.ndarray, block_size: int, batch_size: int, max_targets: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows over `tokens`: every token after the first is a target once.

    Yields (x, y) batches of shape (<= batch_size, block_size); the last window is padded
    (x with 0, y with -1, which the loss ignores).
    """
    n = len(tokens) if max_targets is None else min(len(tokens), max_targets + 1)
    xs, ys = [], []
    for start in range(0, max(n - 1, 0), block_size):
        chunk = np.asarray(tokens[start : min(start + block_size + 1, n)], dtype=np.int64)
        x, y = np.zeros(block_size, np.int64), np.full(block_size, -1, np.int64)
        x[: len(chunk) - 1], y[: len(chunk) - 1] = chunk[:-1], chunk[1:]
        xs.append(x)
        ys.append(y)
        if len(xs) == batch_size:
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            xs, ys = [], []
    if xs:
        yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def target_losses(
    model: GPT,
    shards: list[np.ndarray],
    batch_size: int,
    device: torch.device,
    max_targets: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(targets, losses in nats) on the CPU, per batch of eval_windows, float32 forward.

    Padding is dropped, so both are flat; at most max_targets targets over all shards.
    """
    model.eval()
    left = max_targets
    for tokens in shards:
        for x, y in eval_windows(tokens, model.config.block_size, batch_size, left):
            _, loss = model(x.to(device), y.to(device), reduction="none")
            keep = y != -1
            if left is not None:
                left -= int(keep.sum())
            yield y[keep], loss.cpu()[keep].double()
        if left is not None and left <= 0:
            break


def mean_loss(
    model: GPT, shards: list[np.ndarray], batch_size: int, device: torch.device, max_targets: int
) -> float:
    """Mean cross-entropy (nats) over the first max_targets targets of the shards."""
    total, count = 0.0, 0
    for y, losses in target_losses(model, shards, batch_size, device, max_targets):
        total, count = total + float(losses.sum()), count + len(y)
    return total / max(count, 1)


# ---------------------------------------------------------------- device and optimizer


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else cpu (mps only when asked for)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but torch sees no MPS device")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; float32 elsewhere (CPU bf16 is slower and breaks exactness)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
    """Linear warmup over warmup_steps, then cosine decay to min_lr_ratio * lr at the end."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - floor)


# ---------------------------------------------------------------- checkpoints


def run_config(model: GPT, cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (and what config.json records)."""
    return {"model": model.spec(), "train": cfg.model_dump(mode="json")}


def _config_diff(saved: Any, current: Any, where: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        return [
            d
            for k in sorted(saved.keys() | current.keys())
            for d in _config_diff(saved.get(k), current.get(k), f"{where}{k}.")
        ]
    return [] if saved == current else [f"{where[:-1]}: checkpoint {saved!r}, this run {current!r}"]


@dataclass
class TrainState:
    """What moves during training, besides the weights and the optimizer."""

    step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, logged loss)
    loss_sum: torch.Tensor | None = None  # sum of step losses since the last log
    loss_steps: int = 0


def save_checkpoint(
    path: Path, model: GPT, opt: torch.optim.Optimizer, state: TrainState, cfg: TrainConfig
) -> None:
    """Everything needed to continue bitwise exactly, written to a temp name then renamed."""
    ckpt = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": state.step,
        "loader": {"seed": cfg.seed, "step": state.step},  # WindowSampler needs nothing else
        "history": state.history,
        "loss_sum": None if state.loss_sum is None else state.loss_sum.cpu(),
        "loss_steps": state.loss_steps,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "config": run_config(model, cfg),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(
    path: Path, model: GPT, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device
) -> TrainState:
    """Restore model, optimizer and RNGs from `path`; refuse one from another config."""
    # Our own file from the work dir; it holds RNG states (tuples, numpy arrays) that the
    # weights-only unpickler refuses.
    ckpt = torch.load(path, map_location=device, weights_only=False)
    diffs = _config_diff(ckpt["config"], run_config(model, cfg))
    if diffs:
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({'; '.join(diffs)}); "
            "delete it to start over, or rerun with the configuration it was written with"
        )
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    loss_sum = ckpt["loss_sum"]
    return TrainState(
        step=ckpt["step"],
        history=ckpt["history"],
        loss_sum=None if loss_sum is None else loss_sum.to(device),
        loss_steps=ckpt["loss_steps"],
    )


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: GPT  # the plain (uncompiled) module, on the training device
    steps: int
    tokens_seen: int
    history: list[tuple[int, float]]


def train(
    shards: list[np.ndarray],
    vocab_size: int,
    cfg: TrainConfig,
    work: Path,
    *,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a GPT on token arrays, resuming from `work/ckpt.pt` if a killed run left one.

    stop_at: return after this step without a final checkpoint, as a kill would (tests).
    """
    device = pick_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for any matmul autocast leaves in fp32
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, vocab_size).to(device)
    opt = make_optimizer(model, cfg, device)
    ckpt_path = work / CHECKPOINT
    state = TrainState()
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, opt, cfg, device)
        log.info("resuming from %s at step %d", ckpt_path, state.step)
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    forward = torch.compile(model) if compiled else model
    sampler = WindowSampler(shards, cfg.model.block_size, cfg.batch_size, cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.model.block_size * cfg.grad_accum
    log.info(
        "train: %d params, %.1f MFLOP/token, %d tokens/step, device %s, compile %s",
        model.num_params(),
        model.estimate_flops_per_token() / 1e6,
        tokens_per_step,
        device,
        compiled,
    )

    model.train()
    t_log, steps_since_log = time.perf_counter(), 0
    while state.step < cfg.steps:
        lr = lr_at(state.step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            batch = sampler.batch(state.step, micro)
            if device.type == "cuda":  # overlap the copy with the previous step's kernels
                batch = batch.pin_memory().to(device, non_blocking=True)
            else:
                batch = batch.to(device)
            with autocast(device):
                _, loss = forward(batch[:, :-1], batch[:, 1:])
            (loss / cfg.grad_accum).backward()
            step_loss += loss.detach() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        steps_since_log += 1
        state.loss_sum = step_loss if state.loss_sum is None else state.loss_sum + step_loss
        state.loss_steps += 1

        if state.step % cfg.log_every == 0 or state.step in (1, cfg.steps):
            mean = float(state.loss_sum) / state.loss_steps  # the only sync per log interval
            state.history.append((state.step, mean))
            state.loss_sum, state.loss_steps = None, 0
            now = time.perf_counter()
            log.info(
                "step %d/%d  loss %.4f  lr %.2e  grad norm %.2f  %.0f tok/s",
                state.step,
                cfg.steps,
                mean,
                lr,
                float(grad_norm),
                steps_since_log * tokens_per_step / (now - t_log),
            )
            t_log, steps_since_log = now, 0
        if stop_at is not None and state.step >= stop_at:
            break
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint(ckpt_path, model, opt, state, cfg)

    return TrainResult(model, state.step, state.step * tokens_per_step, state.history)


def save_model(model: GPT, path: Path) -> None:
    """float32 state_dict on the CPU. Same weights and file name -> same bytes (torch's zip
    records are named after the file and its serialization id hashes names and CRCs)."""
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, path)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _vocab_size(shards: Manifest, tokenizer: Manifest) -> int:
    vocab, tok_vocab = shards.stats.get("vocab_size"), tokenizer.stats.get("vocab_size")
    if not isinstance(vocab, int) or vocab != tok_vocab:
        raise ValueError(
            f"shard artifact {shards.key} says vocab_size {vocab!r}, "
            f"tokenizer artifact {tokenizer.key} says {tok_vocab!r}"
        )
    return vocab


@task(name="train", task_run_name="train")
def train_model(root: str, shards: Manifest, tokenizer: Manifest, cfg: TrainConfig) -> Manifest:
    """Train the GPT on the train shards (resuming a killed run); weights, config, metrics."""
    key = stage_key(STAGE_VERSION, shards, tokenizer, cfg)
    work = layout.work_dir(Path(root), "train", key)
    vocab_size = _vocab_size(shards, tokenizer)
    train_shards = [read_shard(p) for p in shard_paths(Path(root), shards, "train")]
    result = train(train_shards, vocab_size, cfg, work)

    val_shards = [read_shard(p) for p in shard_paths(Path(root), shards, "val")]
    max_val = VAL_BATCHES * cfg.batch_size * cfg.model.block_size
    device = pick_device(cfg.device)
    val_loss = mean_loss(result.model, val_shards, cfg.batch_size, device, max_val)
    tail = [loss for _, loss in result.history[-FINAL_LOSS_POINTS:]]
    log.info("train: done, %d steps, val loss %.4f", result.steps, val_loss)

    with ArtifactWriter(Path(root), "train", key) as out:
        save_model(result.model, out.path("model.pt"))
        _write_json(out.path("config.json"), run_config(result.model, cfg))
        _write_json(
            out.path("metrics.json"),
            {
                "step": [s for s, _ in result.history],
                "train_loss": [round(loss, 6) for _, loss in result.history],
                "val_loss": round(val_loss, 6),
            },
        )
        manifest = out.commit(
            cfg,
            counts={"steps": result.steps, "tokens_seen": result.tokens_seen},
            stats={
                "first_train_loss": round(result.history[0][1], 6),  # step 1: about ln(vocab)
                "final_train_loss": round(sum(tail) / len(tail), 6),
                "val_loss": round(val_loss, 6),
                "params": result.model.num_params(),
            },
        )
    shutil.rmtree(work, ignore_errors=True)  # the artifact now holds what the checkpoint did
    return manifest
