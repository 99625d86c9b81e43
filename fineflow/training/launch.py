"""Launch training: in this process, or under torchrun with one DDP process per GPU.

torchrun runs fineflow.distributed, which trains with the same `train` and whose
rank 0 leaves the final weights and logs in `<work>/result.pt`; they are read back
here, so the caller gets the same TrainResult either way. Checkpoints go to the same
work dir, so a killed job resumes the way a single process does.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch

from fineflow.config import TrainConfig
from fineflow.model import GPT
from fineflow.progress import Progress
from fineflow.training.loop import TrainResult, grad_accum_steps, train

RESULT = "result.pt"  # what torchrun's rank 0 hands back to the train task

log = logging.getLogger("fineflow.train")

# tasks.shard (read_shard) is imported where used: it pulls in the data stages'
# dependencies (DuckDB, pyarrow, ...), which the trainer itself does not need, so the
# trainer also imports on a bare GPU box (bench/gpu_check.sh).


def train_job(
    shard_files: list[Path], vocab_size: int, cfg: TrainConfig, work: Path, nproc: int
) -> TrainResult:
    """Train in this process (nproc 1), or under torchrun with nproc DDP processes.

    torchrun runs fineflow.distributed, which trains with the same `train` and whose
    rank 0 leaves the final weights and logs in work/result.pt; they are read back here.
    """
    from fineflow.storage.shards import read_shard

    grad_accum_steps(cfg, nproc)  # batch_tokens must split over nproc: say so before torchrun
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
