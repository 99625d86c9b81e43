"""Where a training process runs: its place in a torchrun job, its device, its precision.

Dist is (rank, world, local_rank), a single process by default. Devices: 'auto' is
CUDA when torch sees one, else the CPU (MPS only when asked for); one process per
CUDA GPU unless train.nproc says otherwise. bf16 autocast on CUDA, float32 elsewhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from fineflow.config import TrainConfig


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = Dist()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available, else cpu (mps only when asked for)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("train.device is 'mps' but torch sees no MPS device")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def setup_device(cfg: TrainConfig, dist: Dist = SINGLE_PROCESS) -> torch.device:
    """This process's device, made current; CPU threads (train.threads); TF32 on CUDA."""
    device = pick_device(cfg.device, dist.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for matmuls autocast leaves fp32
        torch.backends.cudnn.allow_tf32 = True
    return device


def process_count(cfg: TrainConfig) -> int:
    """How many training processes: cfg.nproc, else one per CUDA GPU (1 without CUDA)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.nproc is not None:
        if cfg.device in ("auto", "cuda") and gpus and cfg.nproc > gpus:  # one GPU per rank
            raise ValueError(f"train.nproc {cfg.nproc} is more than the {gpus} CUDA device(s)")
        return cfg.nproc
    if cfg.device in ("auto", "cuda") and gpus:
        return gpus
    return 1


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; float32 elsewhere (CPU bf16 is slower and breaks exactness)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
