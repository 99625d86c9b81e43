"""The trainer behind the train stage (tasks/train.py); imports without Prefect or the data stages.

    runtime     where a process trains: Dist (rank, world), device, bf16 autocast
    data        token shards -> training batches (sampled, prefetched) and eval windows
    checkpoint  atomic step checkpoints, keep-K, exact resume, refusal of another config
    loop        optimizer, lr schedule, grad accumulation, `train`
    launch      `train_job`: in this process, or under torchrun (fineflow.distributed)

Anything here that changes what training produces (weights, logged losses) must bump
STAGE_VERSION in tasks/train.py: the stage's cache key sees the task's source, not these.
"""
