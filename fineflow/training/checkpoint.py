"""Checkpoints: `ckpt_<step>.pt` in the stage's work dir, written atomically, resumed exactly.

A checkpoint holds the weights, the optimizer, the step, the loader position, the RNG
states (torch, CUDA, Python, numpy), the logs so far and the run's config. It is
written to a temporary name, fsynced and renamed; the newest keep_checkpoints are
kept, older ones removed only after the new one is in place; a write that fails leaves
no file behind, and a full disk is said in words (`writing`, for every file the
trainer writes). A checkpoint from
another configuration (model spec or TrainConfig, `steps` included: the schedule
depends on the run length) is refused, naming every field that differs.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fineflow.config import TrainConfig
from fineflow.errors import FineflowError, disk_full, is_disk_full
from fineflow.model import GPT
from fineflow.storage.fingerprint import output_dump
from fineflow.training.runtime import SINGLE_PROCESS, Dist

CHECKPOINT_PREFIX = "ckpt_"  # ckpt_<step, 9 digits>.pt in the work dir


def run_config(model: GPT, cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (and what config.json records): the
    settings that can change the weights; threads or checkpoint cadence may differ."""
    return {"model": model.spec(), "train": output_dump(cfg)}


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


@contextlib.contextmanager
def writing(path: Path, shown: Path | None = None, stage: str = "train") -> Iterator[Path]:
    """Write `path` inside the block. If the block fails, `path` is removed (no partial
    file stays), and a full disk becomes a FineflowError naming `shown` (default: `path`)
    and the free space there as the write failed; torch.save says ENOSPC only as
    "unexpected pos"."""
    try:
        yield path
    except BaseException as exc:
        full = None if isinstance(exc, FineflowError) else is_disk_full(exc)
        err = None if full is None else disk_full(full, shown or path, stage)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        if err is not None:
            raise err from exc
        raise


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
    dist: Dist = SINGLE_PROCESS,
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
    with writing(tmp, shown=path):
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


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that does not load (truncated or damaged on disk)."""


def load_checkpoint(
    path: Path,
    model: GPT,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    device: torch.device,
    dist: Dist = SINGLE_PROCESS,
) -> TrainState:
    """Restore model, optimizer and RNGs from `path`; refuse one from another config.

    A file that does not load raises UnreadableCheckpoint before anything is restored.
    """
    # Our own file from the work dir; it holds RNG states (tuples, numpy arrays) that the
    # weights-only unpickler refuses.
    # Loaded to host memory first (load_state_dict copies onto the device), so a full GPU
    # is an error of its own and never mistaken for a damaged file.
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as exc:  # truncated zip, empty file, bad pickle: torch's errors vary
        raise UnreadableCheckpoint(f"checkpoint {path} does not load: {exc}") from exc
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise UnreadableCheckpoint(f"checkpoint {path} does not load: not a fineflow checkpoint")
    diffs = _config_diff(ckpt["config"], run_config(model, cfg))
    if diffs:
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({'; '.join(diffs)}); "
            "delete it to start over, or rerun with the configuration it was written with"
        )
    saved_world = ckpt.get("loader", {}).get("world", dist.world)
    if cfg.batch_tokens is None and saved_world != dist.world:  # batch_tokens: same windows
        raise ValueError(
            f"checkpoint {path} was written by {saved_world} process(es), this run has "
            f"{dist.world}: without train.batch_tokens a step's tokens scale with the process "
            "count; run with as many processes (train.nproc), or set train.batch_tokens"
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
