"""train: token shards -> `model.pt` + `config.json` + `metrics.json` + `metrics.duckdb`.

Corpus stage. Batches are random windows of block_size + 1 tokens over the
memory-mapped train shards (windows never cross a shard boundary), drawn by a
generator seeded with (seed, step, micro-batch): the loader has no state beyond the
step, so a resumed run reads exactly the batches the killed one would have. A
background thread builds (and on CUDA pins) the next batches while the GPU runs.

One optimizer step sees batch_tokens tokens (batch_size x block_size x grad_accum x
processes; give batch_tokens and grad_accum is derived). AdamW (betas 0.9/0.95, weight
decay on matrices only, fused on CUDA), linear warmup then cosine decay, or
warmup-stable-decay (`schedule: wsd`), to min_lr_ratio * lr, clipping. bf16
autocast, TF32 and torch.compile on CUDA; float32 eager on CPU. With more than one
process (one per CUDA GPU, or train.nproc) the task runs the same `train` under
torchrun with DDP (fineflow/distributed.py) and reads the result back.

Checkpoints (`ckpt_<step>.pt`: weights, optimizer, step, loader position, RNG states,
config, logs) are written atomically into the stage's work dir every
checkpoint_every steps and at the end, the newest keep_checkpoints kept; a run that
finds one resumes from the newest, bitwise exactly on CPU. The work dir is keyed on
the whole TrainConfig, `steps` included: the schedule depends on the run length
(cosine everywhere, wsd from its decay on), so a checkpoint of a 300-step run is
not a point on a 600-step run and is not continued. The work dir is removed once
the artifact is committed.

model.pt: the final state_dict, float32 (byte-identical for identical weights).
config.json: {"model": GPT.spec(), "train": TrainConfig}.
tokenizer.json: the tokenizer artifact's, so the directory alone exports
(`python -m fineflow.export data/train/<key> OUT`, fineflow/export.py).
metrics.json: {"step": [...], "train_loss": [...], "val_loss": x}, each logged loss
the mean over the steps since the previous log (step 1 alone is logged too).
metrics.duckdb: tables train_log (step, loss, lr, grad_norm, tokens_per_s, mfu,
elapsed_s) and run (device, world, grad_accum, tokens_per_step, flops_per_token,
peak_flops, compiled). Its bytes hold timings, so the manifest fingerprint is a
digest of the other three files. MFU is against fineflow.devices' table of peaks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
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
from fineflow.devices import device_name, device_peak_flops, mfu
from fineflow.model import GPT
from fineflow.progress import Progress
from storage import layout
from storage.artifacts import ArtifactWriter, Manifest, stage_key
from storage.fingerprint import file_sha256, fingerprint

# tasks.shard and tasks.tokenizer (read_shard, TOKENIZER_JSON) are imported where used:
# they pull in the data stages' dependencies (DuckDB, pyarrow, ...), which the trainer
# itself does not need, so `train` also imports on a bare GPU box (bench/gpu_check.sh).

STAGE_VERSION = 2
CHECKPOINT_PREFIX = "ckpt_"  # ckpt_<step, 9 digits>.pt in the work dir
RESULT = "result.pt"  # what torchrun's rank 0 hands back to the train task
METRICS_DB = "metrics.duckdb"
DETERMINISTIC_FILES = ("config.json", "metrics.json", "model.pt")
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


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available, else cpu (mps only when asked for)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but torch sees no MPS device")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def process_count(cfg: TrainConfig) -> int:
    """How many training processes: cfg.nproc, else one per CUDA GPU (1 without CUDA)."""
    if cfg.nproc is not None:
        return cfg.nproc
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


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


# ---------------------------------------------------------------- loader


class Prefetcher:
    """The sampler's batches in (step, micro) order, built one ahead on a background thread.

    The thread does the CPU work (gather windows from the memory maps, pin the memory on
    CUDA) while the GPU runs the current step; the main thread only issues the
    asynchronous host-to-device copy. Batch k is this process's micro-batch
    `micro * world + rank` of its step, so the processes of a DDP job read disjoint
    windows, and with batch_tokens the windows of a step do not depend on the world size.
    """

    def __init__(
        self,
        sampler: WindowSampler,
        start_step: int,
        accum: int,
        device: torch.device,
        dist: Dist = Dist(),
        depth: int = 2,
    ) -> None:
        self.device, self._stop = device, threading.Event()
        self._queue: queue.Queue[torch.Tensor | BaseException] = queue.Queue(maxsize=depth)
        pin = device.type == "cuda"

        def produce() -> None:
            step = start_step
            try:
                while not self._stop.is_set():
                    for micro in range(accum):
                        batch = sampler.batch(step, micro * dist.world + dist.rank)
                        self._put(batch.pin_memory() if pin else batch)
                    step += 1
            except BaseException as exc:  # handed to the consumer, which raises it
                self._put(exc)

        self._thread = threading.Thread(target=produce, name="fineflow-loader", daemon=True)
        self._thread.start()

    def _put(self, item: torch.Tensor | BaseException) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def next(self) -> torch.Tensor:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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


LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s")


@dataclass
class TrainState:
    """What moves during training, besides the weights and the optimizer."""

    step: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, logged loss)
    loss_sum: torch.Tensor | None = None  # sum of step losses since the last log
    loss_steps: int = 0
    log_rows: list[tuple[Any, ...]] = field(default_factory=list)  # LOG_COLUMNS, timings too
    elapsed_s: float = 0.0  # training time before this process (resumed runs)


def checkpoint_path(work: Path, step: int) -> Path:
    return work / f"{CHECKPOINT_PREFIX}{step:09d}.pt"


def checkpoints(work: Path) -> list[Path]:
    """The finished checkpoints in `work`, oldest first (temp files are not matched)."""
    return sorted(work.glob(f"{CHECKPOINT_PREFIX}*.pt"))


def save_checkpoint(
    work: Path,
    model: GPT,
    opt: torch.optim.Optimizer,
    state: TrainState,
    cfg: TrainConfig,
    dist: Dist = Dist(),
) -> Path:
    """Everything needed to continue bitwise exactly, written to a temp name then renamed.

    Then only the newest keep_checkpoints are kept. Older ones go after the new one is
    in place, so a kill at any moment leaves at least one whole checkpoint.
    """
    path = checkpoint_path(work, state.step)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": state.step,
        # WindowSampler needs nothing else: micro-batch k of step s is a pure function.
        "loader": {"seed": cfg.seed, "step": state.step, "world": dist.world},
        "history": state.history,
        "loss_sum": None if state.loss_sum is None else state.loss_sum.cpu(),
        "loss_steps": state.loss_steps,
        "log_rows": state.log_rows,
        "elapsed_s": state.elapsed_s,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "config": run_config(model, cfg),
    }
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(work, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    for old in checkpoints(work)[: -cfg.keep_checkpoints]:
        old.unlink(missing_ok=True)
    return path


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
        with contextlib.suppress(RuntimeError):  # fewer GPUs now: their states are unused
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    loss_sum = ckpt["loss_sum"]
    return TrainState(
        step=ckpt["step"],
        history=ckpt["history"],
        loss_sum=None if loss_sum is None else loss_sum.to(device),
        loss_steps=ckpt["loss_steps"],
        log_rows=[tuple(r) for r in ckpt.get("log_rows", [])],
        elapsed_s=ckpt.get("elapsed_s", 0.0),
    )


# ---------------------------------------------------------------- training


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
    dist: Dist = Dist(),
    progress: Progress | None = None,
) -> TrainResult:
    """Train a GPT on token arrays, resuming from the newest checkpoint in `work`.

    stop_at: return after this step without a final checkpoint, as a kill would (tests).
    dist: rank and world size under torchrun (the process group is already set up).
    """
    device = pick_device(cfg.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for matmuls autocast leaves fp32
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, vocab_size).to(device)
    opt = make_optimizer(model, cfg, device)
    accum = grad_accum_steps(cfg, dist.world)
    state = TrainState()
    found = checkpoints(work)
    if found:
        state = load_checkpoint(found[-1], model, opt, cfg, device)
        log.info("resuming from %s at step %d", found[-1], state.step)
    compiled = cfg.compile if cfg.compile is not None else device.type == "cuda"
    forward: Any = torch.compile(model) if compiled else model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = DistributedDataParallel(forward, device_ids=ids)
    sampler = WindowSampler(shards, cfg.model.block_size, cfg.batch_size, cfg.seed)
    tokens_per_step = cfg.batch_size * cfg.model.block_size * accum * dist.world
    flops_per_token = model.estimate_flops_per_token()
    peak = device_peak_flops(device)
    info = {
        "device": device_name(device),
        "world": dist.world,
        "grad_accum": accum,
        "tokens_per_step": tokens_per_step,
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
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

    model.train()
    loader = Prefetcher(sampler, state.step, accum, device, dist)
    t_log, steps_since_log = time.perf_counter(), 0
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
            steps_since_log += 1
            state.loss_sum = step_loss if state.loss_sum is None else state.loss_sum + step_loss
            state.loss_steps += 1
            if progress is not None:
                progress.update(state.step, cfg.steps)

            if state.step % cfg.log_every == 0 or state.step in (1, cfg.steps):
                loss_sum = state.loss_sum
                if dist.world > 1:  # the mean over all processes' micro-batches
                    loss_sum = loss_sum.clone()
                    torch.distributed.all_reduce(loss_sum)
                    loss_sum /= dist.world
                mean = float(loss_sum) / state.loss_steps  # the only sync per log interval
                state.history.append((state.step, mean))
                state.loss_sum, state.loss_steps = None, 0
                now = time.perf_counter()
                state.elapsed_s += now - t_log
                tok_s = steps_since_log * tokens_per_step / (now - t_log)
                util = mfu(tok_s, flops_per_token, peak, dist.world)
                state.log_rows.append(
                    (state.step, mean, lr, float(grad_norm), tok_s, util, state.elapsed_s)
                )
                log.info(
                    "step %d/%d  loss %.4f  lr %.2e  grad norm %.2f  %.0f tok/s%s",
                    state.step,
                    cfg.steps,
                    mean,
                    lr,
                    float(grad_norm),
                    tok_s,
                    "" if util is None else f"  MFU {100 * util:.1f}%",
                )
                t_log, steps_since_log = now, 0
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


# ---------------------------------------------------------------- metrics and launch


def write_metrics_db(path: Path, rows: list[tuple[Any, ...]], info: dict[str, Any]) -> None:
    """metrics.duckdb: `train_log` (LOG_COLUMNS, one row per log line) and `run` (one row)."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.execute(
            "CREATE TABLE train_log (step INTEGER, loss DOUBLE, lr DOUBLE, grad_norm DOUBLE, "
            "tokens_per_s DOUBLE, mfu DOUBLE, elapsed_s DOUBLE)"
        )
        if rows:
            con.executemany("INSERT INTO train_log VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute(
            "CREATE TABLE run (device VARCHAR, world INTEGER, grad_accum INTEGER, "
            "tokens_per_step BIGINT, flops_per_token BIGINT, peak_flops DOUBLE, compiled BOOLEAN)"
        )
        con.execute(
            "INSERT INTO run VALUES (?, ?, ?, ?, ?, ?, ?)",
            [info.get(k) for k in RUN_COLUMNS],
        )
    finally:
        con.close()


RUN_COLUMNS = (
    "device",
    "world",
    "grad_accum",
    "tokens_per_step",
    "flops_per_token",
    "peak_flops",
    "compiled",
)


def train_job(
    shard_files: list[Path], vocab_size: int, cfg: TrainConfig, work: Path, nproc: int
) -> TrainResult:
    """Train in this process (nproc 1), or under torchrun with nproc DDP processes.

    torchrun runs fineflow.distributed, which trains with the same `train` and whose
    rank 0 leaves the final weights and logs in work/result.pt; they are read back here.
    """
    from tasks.shard import read_shard

    if nproc == 1:
        return train(
            [read_shard(p) for p in shard_files],
            vocab_size,
            cfg,
            work,
            progress=Progress("train: steps"),
        )
    work.mkdir(parents=True, exist_ok=True)
    job = work / "job.json"
    job.write_text(
        json.dumps(
            {
                "shards": [str(p) for p in shard_files],
                "vocab_size": vocab_size,
                "cfg": cfg.model_dump(mode="json"),
                "work": str(work),
            }
        )
    )
    result_file = work / RESULT
    result_file.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "fineflow.distributed",
        str(job),
    ]
    log.info("train: launching %s", " ".join(cmd))
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(
            f"torchrun training exited with status {done.returncode}; its checkpoints in "
            f"{work} are kept, run again to resume"
        )
    saved = torch.load(result_file, map_location="cpu", weights_only=False)
    model = GPT.from_spec(saved["spec"])
    model.load_state_dict(saved["model"])
    return TrainResult(
        model,
        saved["steps"],
        saved["tokens_seen"],
        saved["history"],
        saved["log_rows"],
        saved["info"],
    )


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
    from tasks.shard import read_shard
    from tasks.tokenizer import TOKENIZER_JSON

    key = stage_key(STAGE_VERSION, shards, tokenizer, cfg)
    work = layout.work_dir(Path(root), "train", key)
    vocab_size = _vocab_size(shards, tokenizer)
    nproc = process_count(cfg)
    result = train_job(shard_paths(Path(root), shards, "train"), vocab_size, cfg, work, nproc)

    val_shards = [read_shard(p) for p in shard_paths(Path(root), shards, "val")]
    max_val = VAL_BATCHES * cfg.batch_size * cfg.model.block_size
    device = pick_device(cfg.device)
    model = result.model.to(device)
    val_loss = mean_loss(model, val_shards, cfg.batch_size, device, max_val)
    tail = [loss for _, loss in result.history[-FINAL_LOSS_POINTS:]]
    log.info("train: done, %d steps, val loss %.4f", result.steps, val_loss)

    with ArtifactWriter(Path(root), "train", key) as out:
        save_model(model, out.path("model.pt"))
        _write_json(out.path("config.json"), run_config(model, cfg))
        _write_json(
            out.path("metrics.json"),
            {
                "step": [s for s, _ in result.history],
                "train_loss": [round(loss, 6) for _, loss in result.history],
                "val_loss": round(val_loss, 6),
            },
        )
        # Timings: the one file whose bytes differ between identical runs, so the
        # fingerprint is a digest of the other files (which say what the model is).
        write_metrics_db(out.path(METRICS_DB), result.log_rows, result.info)
        # The tokenizer travels with the weights: `python -m fineflow.export` needs both.
        shutil.copyfile(tokenizer.path(Path(root), TOKENIZER_JSON), out.path(TOKENIZER_JSON))
        content = fingerprint(
            [(n, file_sha256(out.path(n))) for n in (*DETERMINISTIC_FILES, TOKENIZER_JSON)]
        )
        manifest = out.commit(
            cfg,
            counts={"steps": result.steps, "tokens_seen": result.tokens_seen},
            stats={
                "first_train_loss": round(result.history[0][1], 6),  # step 1: about ln(vocab)
                "final_train_loss": round(sum(tail) / len(tail), 6),
                "val_loss": round(val_loss, 6),
                "params": model.num_params(),
            },
            content=content,
        )
    shutil.rmtree(work, ignore_errors=True)  # the artifact now holds what the checkpoint did
    return manifest
