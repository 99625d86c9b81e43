"""One process of a multi-process training job: `torchrun ... -m fineflow.distributed JOB`.

The train task writes JOB (a JSON file: shard paths, vocab size, TrainConfig, work dir)
and launches torchrun, which starts one copy of this module per process with RANK,
WORLD_SIZE and LOCAL_RANK set. Each copy joins the process group (NCCL on CUDA, gloo
on CPU), runs the same `fineflow.training.loop.train` as a single process does, wrapped in DDP
there, and rank 0 writes the final weights and logs to `<work>/result.pt` for the
task to read back. Checkpoints go to the same work dir, so a killed job resumes the
same way a single process does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

from fineflow.config import TrainConfig
from fineflow.storage.shards import read_shard
from fineflow.training.launch import RESULT
from fineflow.training.loop import train
from fineflow.training.runtime import Dist


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    cfg = TrainConfig.model_validate(job["cfg"])
    dist = Dist(
        rank=int(os.environ["RANK"]),
        world=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(dist.local_rank)
    torch_dist.init_process_group("nccl" if cuda else "gloo")
    try:
        work = Path(job["work"])
        shards = [read_shard(Path(p)) for p in job["shards"]]
        result = train(shards, job["vocab_size"], cfg, work, dist=dist)
        if dist.main:
            tmp = work / f".{RESULT}.tmp"
            torch.save(
                {
                    "spec": result.model.spec(),
                    "model": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                    "steps": result.steps,
                    "tokens_seen": result.tokens_seen,
                    "history": result.history,
                    "log_rows": result.log_rows,
                    "info": result.info,
                },
                tmp,
            )
            os.replace(tmp, work / RESULT)
        torch_dist.barrier()
    finally:
        torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
