"""The train stage: loader, schedule, exact resume, refused checkpoints, the task itself.

The tiny model, its config and its upstream artifacts come from tests/helpers/training.py.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch

from fineflow.config import PipelineConfig, TrainConfig
from fineflow.errors import FineflowError
from fineflow.model import GPT
from fineflow.storage import layout
from fineflow.storage.artifacts import stage_key, verify
from fineflow.storage.fingerprint import output_dump
from fineflow.storage.shards import read_shard
from fineflow.tasks.train import METRICS_DB, STAGE_VERSION, VAL_BATCHES, train_model
from fineflow.training.checkpoint import checkpoint_path, checkpoints
from fineflow.training.data import (
    Prefetcher,
    WindowSampler,
    eval_windows,
    mean_loss,
    shard_paths,
)
from fineflow.training.launch import train_job
from fineflow.training.loop import grad_accum_steps, lr_at, train
from fineflow.training.runtime import Dist, process_count
from tests.helpers.training import DOCS, TINY, make_upstream, tiny_train_config

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- loader and schedule


def test_sampler_is_deterministic_and_stays_inside_shards() -> None:
    shards = [np.arange(0, 40, dtype=np.uint16), np.arange(1000, 1020, dtype=np.uint16)]
    sampler = WindowSampler(shards, block_size=8, batch_size=64, seed=3)
    batch = sampler.batch(5, 1)
    assert batch.shape == (64, 9) and batch.dtype == torch.int64
    assert (batch.diff(dim=1) == 1).all()  # consecutive tokens: no window crosses a shard
    assert {int(r[0]) < 1000 for r in batch} == {True, False}  # both shards are read
    assert torch.equal(batch, WindowSampler(shards, 8, 64, seed=3).batch(5, 1))
    assert not torch.equal(batch, sampler.batch(5, 0))
    assert not torch.equal(batch, sampler.batch(6, 1))
    assert not torch.equal(batch, WindowSampler(shards, 8, 64, seed=4).batch(5, 1))
    with pytest.raises(ValueError, match="window"):
        WindowSampler([np.arange(8)], block_size=8, batch_size=1, seed=0)


def test_eval_windows_cover_every_target_once() -> None:
    tokens = np.arange(50)
    batches = list(eval_windows(tokens, block_size=16, batch_size=2))
    ys = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(ys[ys != -1], torch.arange(1, 50))
    for x, y in batches:  # the target is the next input
        real = y != -1
        assert torch.equal(x[real] + 1, y[real])
    capped = torch.cat([y for _, y in eval_windows(tokens, 16, 2, max_targets=20)]).flatten()
    assert torch.equal(capped[capped != -1], torch.arange(1, 21))


def test_lr_schedule() -> None:
    cfg = tiny_train_config(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b for a, b in pairwise(lrs))


def test_wsd_schedule_is_flat_then_decays() -> None:
    cfg = tiny_train_config(
        steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2
    )
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) == 1.0 for s in range(9, 80))
    assert lr_at(80, cfg) == pytest.approx(1.0 - 0.9 / 20)
    assert lr_at(99, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(80, 100)]
    assert all(a > b for a, b in pairwise(lrs))


def test_batch_tokens_sets_grad_accum() -> None:
    cfg = tiny_train_config(batch_tokens=4 * 16 * 6)  # batch 4 x block 16
    assert grad_accum_steps(cfg, 1) == 6 and grad_accum_steps(cfg, 2) == 3
    assert grad_accum_steps(tiny_train_config(grad_accum=5), 2) == 5  # no batch_tokens
    with pytest.raises(ValueError, match="not a multiple"):
        grad_accum_steps(cfg, 4)


def test_batch_tokens_that_no_step_holds_fail_at_the_start(tmp_path: Path) -> None:
    """At config validation (not once training began), naming the fields."""
    with pytest.raises(ValueError, match="train.batch_tokens 100 is not a multiple of train.batch"):
        tiny_train_config(batch_tokens=100)
    with pytest.raises(ValueError, match="batch_size 4 x model.block_size 16 = 64"):
        PipelineConfig.model_validate(
            {"train": {"batch_size": 4, "batch_tokens": 96, "model": {"block_size": 16}}}
        )
    # the process count is known at launch: checked there, before torchrun starts anything
    cfg = tiny_train_config(batch_tokens=4 * 16 * 6)
    with pytest.raises(ValueError, match="x 4 process"):
        train_job([], 64, cfg, tmp_path / "work", nproc=4)
    assert not (tmp_path / "work").exists()


def test_prefetcher_yields_the_sampler_order_per_rank() -> None:
    shards = [np.arange(0, 500, dtype=np.uint16)]
    sampler = WindowSampler(shards, block_size=8, batch_size=3, seed=5)
    loader = Prefetcher(sampler, start_step=7, accum=2, device=torch.device("cpu"))
    got = [loader.next() for _ in range(4)]
    loader.close()
    want = [sampler.batch(s, m) for s in (7, 8) for m in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    rank1 = Prefetcher(sampler, 7, 2, torch.device("cpu"), Dist(rank=1, world=2))
    got = [rank1.next() for _ in range(2)]
    rank1.close()
    assert torch.equal(got[0], sampler.batch(7, 1)) and torch.equal(got[1], sampler.batch(7, 3))


# ---------------------------------------------------------------- training and checkpoints


def _tokens(n: int = 2000) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 64, size=n).astype(np.uint16)]


def test_resume_is_bitwise_exact(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_train_config()
    whole = train(_tokens(), 64, cfg, tmp_path / "whole")
    killed = train(_tokens(), 64, cfg, tmp_path / "killed", stop_at=6)  # last checkpoint: 4
    assert killed.steps == 6
    ckpt = torch.load(checkpoint_path(tmp_path / "killed", 4), weights_only=False)
    assert ckpt["step"] == 4 and ckpt["loader"] == {"seed": cfg.seed, "step": 4, "world": 1}
    with caplog.at_level(logging.INFO, logger="fineflow.train"):
        resumed = train(_tokens(), 64, cfg, tmp_path / "killed")
    # outside a task run the line goes to fineflow.train (inside one: the test further down)
    resumed_lines = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
    assert resumed_lines == ["train: resumed from step 4 of 12 (ckpt_000000004.pt)"]
    assert resumed.steps == whole.steps == 12
    assert resumed.tokens_seen == 12 * 4 * 16
    assert resumed.history == whole.history
    assert [s for s, _ in whole.history] == [1, 3, 6, 9, 12]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # keep_checkpoints (2): only the newest survive, at steps 8 and 12
    assert checkpoints(tmp_path / "whole") == [
        checkpoint_path(tmp_path / "whole", s) for s in (8, 12)
    ]


def test_sigkill_mid_run_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    """A real process running training is killed with SIGKILL at its first checkpoint."""
    np.save(tmp_path / "tokens.npy", _tokens()[0])
    cfg = tiny_train_config(steps=300, checkpoint_every=5, batch_size=2, threads=1)
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    work = tmp_path / "killed"
    script = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from fineflow.config import TrainConfig\n"
        "from fineflow.training.loop import train\n"
        "d = Path(sys.argv[1])\n"
        "cfg = TrainConfig.model_validate_json((d / 'cfg.json').read_text())\n"
        "train([np.load(d / 'tokens.npy')], 64, cfg, d / 'killed')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    try:
        while not checkpoints(work) and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    found = checkpoints(work)
    at = torch.load(found[-1], weights_only=False)["step"]
    assert 5 <= at < cfg.steps  # killed mid-run, not after the end
    resumed = train(_tokens(), 64, cfg, work)
    whole = train(_tokens(), 64, cfg, tmp_path / "whole")
    assert resumed.steps == whole.steps == 300 and resumed.history == whole.history
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_another_config_is_refused(tmp_path: Path) -> None:
    train(_tokens(), 64, tiny_train_config(), tmp_path, stop_at=5)
    other = tiny_train_config(model=TINY.model_copy(update={"n_embd": 64}), lr=3e-3)
    ckpt = checkpoint_path(tmp_path, 4)
    with pytest.raises(ValueError) as err:
        train(_tokens(), 64, other, tmp_path)
    message = str(err.value)
    assert str(ckpt) in message
    assert "model.n_embd: checkpoint 32, this run 64" in message
    assert "train.lr: checkpoint 0.01, this run 0.003" in message
    assert "train.model.n_embd" in message
    with pytest.raises(ValueError, match="model.vocab_size: checkpoint 64, this run 65"):
        train(_tokens(), 65, tiny_train_config(), tmp_path)


def test_a_damaged_checkpoint_is_passed_over_for_an_older_whole_one(tmp_path: Path) -> None:
    cfg = tiny_train_config()
    whole = train(_tokens(), 64, cfg, tmp_path / "whole")
    work = tmp_path / "damaged"
    train(_tokens(), 64, cfg, work, stop_at=9)  # checkpoints at 4 and 8
    newest = checkpoint_path(work, 8)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated on disk
    resumed = train(_tokens(), 64, cfg, work)  # from step 4, not a torch zip error
    assert resumed.history == whole.history
    assert newest.with_name(newest.name + ".unreadable").stat().st_size == 1000  # kept aside
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # none whole (an empty file): a fresh start, the same run
    again = tmp_path / "empty"
    train(_tokens(), 64, cfg, again, stop_at=5)
    checkpoint_path(again, 4).write_bytes(b"")
    assert train(_tokens(), 64, cfg, again).history == whole.history


def test_resuming_with_another_process_count_is_refused_unless_batch_tokens(
    tmp_path: Path,
) -> None:
    """nproc None resumes on however many GPUs there are now: a step's tokens would change."""
    train(_tokens(), 64, tiny_train_config(), tmp_path, stop_at=5)
    with pytest.raises(ValueError, match="written by 1 process.*this run has 2.*batch_tokens"):
        train(_tokens(), 64, tiny_train_config(), tmp_path, dist=Dist(0, 2, 0))


def test_loss_falls_on_repetitive_tokens(tmp_path: Path) -> None:
    pattern = np.random.default_rng(1).integers(0, 64, size=13)
    cfg = tiny_train_config(steps=40, log_every=10, lr=1e-2, warmup_steps=5)
    result = train([np.tile(pattern, 100).astype(np.uint16)], 64, cfg, tmp_path)
    losses = [loss for _, loss in result.history]
    assert losses[0] > 3.5  # about ln(64) = 4.16 at init
    assert losses[-1] < 0.5


# ---------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_disk(where: Path, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of about `size_bytes` mounted at `where` (root only: skipped otherwise)."""
    where.mkdir(parents=True, exist_ok=True)
    size = f"size={max(1, size_bytes // 1024)}k"
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"filling a disk for real needs `mount -t tmpfs`: {exc}")
    if done.returncode != 0:
        pytest.skip(
            "filling a disk for real needs a small tmpfs, and mount was not permitted "
            f"(run as root to test it): {done.stderr.strip() or done.returncode}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def _leftovers(d: Path) -> list[str]:
    """Temporary files and directories under `d` (a failed write must leave none)."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if ".tmp" in p.name)


def test_a_full_disk_while_checkpointing_names_the_file_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """On a real full file system (a tmpfs with room for one checkpoint, not two): the
    error is a FineflowError naming the checkpoint and the free space, not torch's
    "unexpected pos"; the partial file is gone, the whole older checkpoint stays, and a
    run with room resumes from it exactly."""
    cfg = tiny_train_config(model=TINY.model_copy(update={"n_embd": 64}))
    whole = train(_tokens(), 64, cfg, tmp_path / "whole")
    size = checkpoint_path(tmp_path / "whole", 12).stat().st_size
    with small_disk(tmp_path / "disk", size * 3 // 2) as disk:
        work = disk / "work"
        with pytest.raises(FineflowError) as err:
            train(_tokens(), 64, cfg, work)
        failed = checkpoint_path(work, 8)
        assert err.value.stage == "train" and err.value.path == str(failed)
        assert str(err.value).startswith(f"disk full while writing {failed} (")
        assert "MB free on that file system" in str(err.value)
        assert "data_root" in err.value.hint
        assert "unexpected pos" in str(err.value.__cause__)  # torch's words, kept as the cause
        assert _leftovers(disk) == []
        assert checkpoints(work) == [checkpoint_path(work, 4)]
        shutil.copytree(work, tmp_path / "roomy")
    resumed = train(_tokens(), 64, cfg, tmp_path / "roomy")
    assert resumed.history == whole.history
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_full_disk_while_writing_the_model_names_the_file_and_leaves_no_scratch(
    tmp_path: Path,
) -> None:
    """The train task's own files: the train stage's directory on a tmpfs with room for
    the final checkpoint and half of model.pt."""
    probe_root, root = tmp_path / "probe", tmp_path / "root"
    tokenizer, shards, _ = make_upstream(probe_root, DOCS * 6, DOCS[:3])
    cfg = tiny_train_config(steps=6, checkpoint_every=6)  # one checkpoint, at the end
    probe = train_model.fn(str(probe_root), shards, tokenizer, cfg)  # where there is room
    model_bytes = probe.path(probe_root, "model.pt").stat().st_size
    tokens = [read_shard(p) for p in shard_paths(probe_root, shards, "train")]
    train(tokens, tokenizer.stats["vocab_size"], cfg, tmp_path / "ckpt")  # the task's checkpoint
    ckpt_bytes = checkpoint_path(tmp_path / "ckpt", 6).stat().st_size
    for upstream in (shards, tokenizer):
        shutil.copytree(probe_root / upstream.dir, root / upstream.dir)
    work = layout.work_dir(root, "train", probe.key)
    with small_disk(root / "train", ckpt_bytes + model_bytes // 2) as disk:
        with pytest.raises(FineflowError) as err:
            train_model.fn(str(root), shards, tokenizer, cfg)
        assert err.value.stage == "train"
        assert err.value.path and err.value.path.endswith("/model.pt")
        assert str(err.value).startswith(f"disk full while writing {err.value.path} (")
        assert _leftovers(disk) == []  # no scratch directory, no partial model.pt
        assert [p.name for p in disk.iterdir()] == [work.name]  # the checkpoint is kept
        assert checkpoints(disk / work.name) == [checkpoint_path(disk / work.name, 6)]


def test_a_failed_checkpoint_write_leaves_no_file_without_a_real_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same promise where no tmpfs can be mounted: torch.save failing the way it does
    on ENOSPC (a C++ enforce error, the OSError only as its context) after writing part
    of the file."""
    cfg = tiny_train_config()
    real_save = torch.save

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if not hasattr(f, "write"):
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from None

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(FineflowError, match="disk full while writing .*ckpt_000000004.pt"):
        train(_tokens(), 64, cfg, tmp_path)
    assert _leftovers(tmp_path) == [] and checkpoints(tmp_path) == []

    def broken(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"half")
        raise ValueError("not a disk problem")

    monkeypatch.setattr(torch, "save", broken)  # any other failure: itself, no file left
    with pytest.raises(ValueError, match="not a disk problem"):
        train(_tokens(), 64, cfg, tmp_path)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- the task


def test_train_model_task(tmp_path: Path) -> None:
    tokenizer, shards, _ = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    cfg = tiny_train_config(steps=30, log_every=10, warmup_steps=3)
    manifest = train_model.fn(str(tmp_path), shards, tokenizer, cfg)

    assert manifest.stage == "train" and verify(tmp_path, manifest) is None
    assert {f.path for f in manifest.files} == {
        "model.pt",
        "config.json",
        "metrics.json",
        METRICS_DB,
        "tokenizer.json",
    }
    assert manifest.counts == {"steps": 30, "tokens_seen": 30 * 4 * 16}
    assert not layout.work_dir(tmp_path, "train", manifest.key).exists()

    config = json.loads(manifest.path(tmp_path, "config.json").read_text())
    assert config["model"]["vocab_size"] == tokenizer.stats["vocab_size"]
    # what can change the weights, and not the runtime settings (threads, checkpoints)
    assert config["train"] == output_dump(cfg) and "checkpoint_every" not in config["train"]
    assert output_dump(TrainConfig.model_validate(config["train"])) == output_dump(cfg)
    metrics = json.loads(manifest.path(tmp_path, "metrics.json").read_text())
    assert metrics["step"] == [1, 10, 20, 30]
    assert metrics["train_loss"][-1] < metrics["train_loss"][0] - 1.0
    tail = sum(metrics["train_loss"][-3:]) / 3
    assert manifest.stats["final_train_loss"] == pytest.approx(tail, abs=1e-5)
    assert manifest.stats["first_train_loss"] == metrics["train_loss"][0]

    model = GPT.from_spec(config["model"])
    weights = torch.load(manifest.path(tmp_path, "model.pt"), weights_only=True)
    assert all(w.dtype == torch.float32 for w in weights.values())
    model.load_state_dict(weights)
    assert manifest.stats["params"] == model.num_params()
    val = [read_shard(p) for p in shards.paths(tmp_path, "val_000000.bin")]
    loss = mean_loss(model, val, 4, torch.device("cpu"), VAL_BATCHES * 4 * 16)
    assert manifest.stats["val_loss"] == pytest.approx(loss, abs=1e-5)
    with pytest.raises(ValueError, match="no targets to evaluate: the shards hold 1 token"):
        mean_loss(model, [val[0][:1]], 4, torch.device("cpu"), 64)  # not a loss of 0
    assert metrics["val_loss"] == manifest.stats["val_loss"]
    import duckdb

    con = duckdb.connect(str(manifest.path(tmp_path, METRICS_DB)), read_only=True)
    rows = con.sql("select step, loss, tokens_per_s, mfu from train_log order by step").fetchall()
    assert [r[0] for r in rows] == metrics["step"]
    assert [round(r[1], 6) for r in rows] == metrics["train_loss"]
    assert all(r[2] > 0 and r[3] is None for r in rows)  # CPU: no peak, so no MFU
    assert con.sql("select device, world, grad_accum from run").fetchall() == [("cpu", 1, 1)]
    con.close()

    # Same inputs, another data root: the same bytes, so downstream caches agree.
    again = tmp_path / "again"
    for upstream in (shards, tokenizer):
        shutil.copytree(tmp_path / upstream.dir, again / upstream.dir)
    rerun = train_model.fn(str(again), shards, tokenizer, cfg)
    assert rerun.fingerprint == manifest.fingerprint and rerun.stats == manifest.stats


def test_a_resumed_task_says_so_in_the_terminal_and_the_task_log(
    prefect_server, tmp_path: Path
) -> None:
    """fineflow's INFO lines reach only the log file; the resume goes through Prefect's
    run logger: the terminal's handler prints it, and the UI shows it in the task's log."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogWorker

    tokenizer, shards, _ = make_upstream(tmp_path, DOCS * 6, DOCS[:3])
    cfg = tiny_train_config()
    work = layout.work_dir(tmp_path, "train", stage_key(STAGE_VERSION, shards, tokenizer, cfg))
    tokens = [read_shard(p) for p in shard_paths(tmp_path, shards, "train")]
    train(tokens, tokenizer.stats["vocab_size"], cfg, work, stop_at=6)  # killed after step 6

    class Lines(logging.Handler):
        lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    @flow
    def run():
        return train_model(str(tmp_path), shards, tokenizer, cfg, return_state=True)

    said = "train: resumed from step 4 of 12 (ckpt_000000004.pt)"
    lines = Lines()
    task_runs = logging.getLogger("prefect.task_runs")  # the run logger's; root's console
    task_runs.addHandler(lines)
    try:
        state = run()
    finally:
        task_runs.removeHandler(lines)
    assert state.is_completed() and said in lines.lines
    APILogWorker.drain_all(timeout=30, at_exit=False)  # sent to the API: what the UI reads
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(
                task_run_id=LogFilterTaskRunId(any_=[state.state_details.task_run_id])
            )
        )
    assert said in [entry.message for entry in logs]


def test_more_processes_than_gpus_fail_at_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank takes cuda:<local_rank>; the card count is faked, this box has none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="train.nproc 3 is more than the 2 CUDA device"):
        process_count(tiny_train_config(device="cuda", nproc=3))
    assert process_count(tiny_train_config(device="cuda", nproc=2)) == 2
    assert process_count(tiny_train_config(device="auto")) == 2
    assert process_count(tiny_train_config(device="cpu", nproc=3)) == 3  # CPU ranks: gloo


def test_a_val_split_without_targets_fails_before_training(tmp_path: Path) -> None:
    tokenizer, shards, _ = make_upstream(tmp_path, DOCS * 6, [""])  # val: one <|endoftext|>
    cfg = tiny_train_config(steps=4, warmup_steps=1)
    with pytest.raises(ValueError, match="val split holds 1 token.*shard.val_fraction"):
        train_model.fn(str(tmp_path), shards, tokenizer, cfg)
    assert not (tmp_path / "train").exists()  # no steps run, no checkpoint written


def test_peak_table_names_cards_and_knows_what_it_does_not_know() -> None:
    from fineflow.devices import mfu, peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12 and peak_bf16_flops("NVIDIA L40S") == 362e12
    assert peak_bf16_flops("NVIDIA A10G") is None and peak_bf16_flops("NVIDIA A10") == 125e12
    assert peak_bf16_flops("Some Future GPU") is None
    assert mfu(1e5, 1e9, 989e12, world=2) == 1e14 / (2 * 989e12)
    assert mfu(1e5, 1e9, None) is None
