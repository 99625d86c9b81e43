"""train: token shards -> `model.pt` + `config.json` + `metrics.json` + `metrics.duckdb`.

Corpus stage, a thin task over the trainer in fineflow/training/: random windows of
the memory-mapped train shards, prefetched (data); AdamW, warmup then cosine or wsd,
grad accumulation, bf16 + torch.compile on CUDA, float32 on CPU (loop); atomic step
checkpoints every checkpoint_every steps, the newest keep_checkpoints kept, resumed
bitwise exactly on CPU (checkpoint); one process, or DDP under torchrun with one
process per CUDA GPU or train.nproc (launch). The work dir is keyed on the whole
TrainConfig, `steps` included: the schedule depends on the run length (cosine
everywhere, wsd from its decay on), so a checkpoint of a 300-step run is not a point
on a 600-step run and is not continued. The work dir is removed once the artifact is
committed.

model.pt: the final state_dict, float32 (byte-identical for identical weights).
config.json: {"model": GPT.spec(), "train": TrainConfig}.
tokenizer.json: the tokenizer artifact's, so the directory alone exports
(`python -m fineflow.export data/train/<key> OUT`, fineflow/export.py).
metrics.json: {"step": [...], "train_loss": [...], "val_loss": x}, each logged loss
the mean over the steps since the previous log (step 1 alone is logged too); val_loss
over the first VAL_BATCHES batches of the val shards.
metrics.duckdb: tables train_log (step, loss, lr, grad_norm, tokens_per_s, mfu,
elapsed_s) and run (device, world, grad_accum, tokens_per_step, flops_per_token,
peak_flops, compiled). Its bytes hold timings, so the manifest fingerprint is a
digest of the other three files. MFU is against fineflow.devices' table of peaks.

A file whose write fails is removed (the artifact's scratch directory goes with it), and
a full disk is a FineflowError naming the file and the free space (stage "train"), not
torch's "unexpected pos". A resumed run says so in the terminal and the task's log.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prefect import task

from fineflow.config import TrainConfig
from fineflow.model import GPT
from fineflow.storage import layout
from fineflow.storage.artifacts import MANIFEST_NAME, ArtifactWriter, Manifest, stage_key
from fineflow.storage.fingerprint import file_sha256, fingerprint
from fineflow.training.checkpoint import run_config, writing
from fineflow.training.data import mean_loss, shard_paths
from fineflow.training.launch import train_job
from fineflow.training.runtime import pick_device, process_count

STAGE_VERSION = 2  # bump when anything in fineflow/training/ changes what training produces
METRICS_DB = "metrics.duckdb"
DETERMINISTIC_FILES = ("config.json", "metrics.json", "model.pt")
FINAL_LOSS_POINTS = 3  # final_train_loss: mean of this many last logged losses
VAL_BATCHES = 8  # the end-of-training val loss reads this many batches of the val shards

log = logging.getLogger("fineflow.train")


RUN_COLUMNS = (
    "device",
    "world",
    "grad_accum",
    "tokens_per_step",
    "flops_per_token",
    "peak_flops",
    "compiled",
)


def write_metrics_db(path: Path, rows: list[tuple[Any, ...]], info: dict[str, Any]) -> None:
    """metrics.duckdb: `train_log` (one row per log line, checkpoint.LOG_COLUMNS) and `run`."""
    from fineflow.storage import catalog

    with catalog.connect(path) as con:
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


def save_model(model: GPT, path: Path) -> None:
    """float32 state_dict on the CPU. Same weights and file name -> same bytes (torch's zip
    records are named after the file and its serialization id hashes names and CRCs)."""
    torch.save({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, path)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _write(out: ArtifactWriter, name: str, write: Callable[[Path], object]) -> None:
    """`write(path)` for the artifact's file `name`; a failed write leaves no file, and a
    full disk says which file and how much space is left (checkpoint.writing)."""
    with writing(out.path(name)) as path:
        write(path)


def _vocab_size(shards: Manifest, tokenizer: Manifest) -> int:
    vocab, tok_vocab = shards.stats.get("vocab_size"), tokenizer.stats.get("vocab_size")
    if not isinstance(vocab, int) or vocab != tok_vocab:
        raise ValueError(
            f"shard artifact {shards.key} says vocab_size {vocab!r}, "
            f"tokenizer artifact {tokenizer.key} says {tok_vocab!r}"
        )
    return vocab


def read_val(root: Path, shards: Manifest) -> list:
    """The val shards, refused before training if they hold no target for the val loss."""
    from fineflow.storage.shards import read_shard

    val_shards = [read_shard(p) for p in shard_paths(root, shards, "val")]
    if not any(len(s) >= 2 for s in val_shards):
        tokens = sum(len(s) for s in val_shards)
        raise ValueError(
            f"shard artifact {shards.key}: the val split holds {tokens} token(s) in "
            f"{len(val_shards)} shard(s), no target for the val loss; more data or a larger "
            "shard.val_fraction"
        )
    return val_shards


def loss_figures(history: list[tuple[int, float]], val_loss: float) -> tuple[dict, dict]:
    """(metrics.json, manifest stats) of a finished run's loss curve."""
    tail = [loss for _, loss in history[-FINAL_LOSS_POINTS:]]
    metrics = {
        "step": [s for s, _ in history],
        "train_loss": [round(loss, 6) for _, loss in history],
        "val_loss": round(val_loss, 6),
    }
    stats = {
        "first_train_loss": round(history[0][1], 6),  # step 1: about ln(vocab)
        "final_train_loss": round(sum(tail) / len(tail), 6),
        "val_loss": round(val_loss, 6),
    }
    return metrics, stats


@task(name="train", task_run_name="train")
def train_model(root: str, shards: Manifest, tokenizer: Manifest, cfg: TrainConfig) -> Manifest:
    """Train the GPT on the train shards (resuming a killed run); weights, config, metrics."""
    from fineflow.tasks.tokenizer import TOKENIZER_JSON

    base = Path(root)
    key = stage_key(STAGE_VERSION, shards, tokenizer, cfg)
    work = layout.work_dir(base, "train", key)
    vocab_size = _vocab_size(shards, tokenizer)
    val_shards = read_val(base, shards)  # checked before training, not after it
    result = train_job(
        shard_paths(base, shards, "train"), vocab_size, cfg, work, process_count(cfg)
    )

    device = pick_device(cfg.device)
    model = result.model.to(device)
    max_val = VAL_BATCHES * cfg.batch_size * cfg.model.block_size
    val_loss = mean_loss(model, val_shards, cfg.batch_size, device, max_val)
    log.info("train: done, %d steps, val loss %.4f", result.steps, val_loss)
    metrics, stats = loss_figures(result.history, val_loss)

    with ArtifactWriter(base, "train", key) as out:
        _write(out, "model.pt", lambda p: save_model(model, p))
        _write(out, "config.json", lambda p: _write_json(p, run_config(model, cfg)))
        _write(out, "metrics.json", lambda p: _write_json(p, metrics))
        # Timings: the one file whose bytes differ between identical runs, so the
        # fingerprint is a digest of the other files (which say what the model is).
        _write(out, METRICS_DB, lambda p: write_metrics_db(p, result.log_rows, result.info))
        # The tokenizer travels with the weights: `python -m fineflow.export` needs both.
        tok_json = tokenizer.path(base, TOKENIZER_JSON)
        _write(out, TOKENIZER_JSON, lambda p: shutil.copyfile(tok_json, p))
        content = fingerprint(
            [(n, file_sha256(out.path(n))) for n in (*DETERMINISTIC_FILES, TOKENIZER_JSON)]
        )
        with writing(out.path(MANIFEST_NAME)):  # commit writes it, then renames the directory
            manifest = out.commit(
                cfg,
                counts={"steps": result.steps, "tokens_seen": result.tokens_seen},
                stats={**stats, "params": model.num_params()},
                content=content,
            )
    shutil.rmtree(work, ignore_errors=True)  # the artifact now holds what the checkpoint did
    return manifest
