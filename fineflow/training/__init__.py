"""The trainer behind the train stage (tasks/train.py); imports without Prefect or the data stages.

    runtime     where a process trains: Dist (rank, world), device, bf16 autocast
    data        token shards -> training batches (sampled, prefetched) and eval windows
    checkpoint  atomic step checkpoints, keep-K, exact resume, refusal of another config
    loop        optimizer, lr schedule, grad accumulation, `train`
    launch      `train_job`: in this process, or under torchrun (fineflow.distributed)

The train stage's cache key sees the code of every definition here that the task reaches
(storage/code.py), so a change of logic reruns training; comments and docstrings do not.
"""
