"""Token shards -> batches: random training windows, prefetched, and eval windows.

Training batches are random windows of block_size + 1 tokens over the memory-mapped
train shards (windows never cross a shard boundary), drawn by a generator seeded with
(seed, step, micro-batch): the loader has no state beyond the step, so a resumed run
reads exactly the batches the killed one would have. A background thread builds (and
on CUDA pins) the next batches while the GPU runs. Evaluation reads non-overlapping
windows, every target once, in float32.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fineflow.model import GPT
from fineflow.training.runtime import SINGLE_PROCESS, Dist

if TYPE_CHECKING:  # the annotation only: the trainer imports without the artifact store
    from fineflow.storage.artifacts import Manifest


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
        dist: Dist = SINGLE_PROCESS,
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
    """Mean cross-entropy (nats) over the first max_targets targets of the shards.

    Shards without a single target (under 2 tokens in all) raise: a loss of 0 would read
    as a perfect model.
    """
    total, count = 0.0, 0
    for y, losses in target_losses(model, shards, batch_size, device, max_targets):
        total, count = total + float(losses.sum()), count + len(y)
    if count == 0:
        tokens = sum(len(s) for s in shards)
        raise ValueError(f"no targets to evaluate: the shards hold {tokens} token(s) in all")
    return total / count
