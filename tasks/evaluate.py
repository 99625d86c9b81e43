"""evaluate: trained model + val shards + tokenizer -> `report.md`, `eval.json`, `loss.png`.

Corpus stage. The val loss and bits per byte are exact: the val shards are cut into
non-overlapping windows of block_size tokens, so every token after a shard's first is
a target exactly once (up to max_val_tokens targets), each predicted from up to
block_size - 1 tokens of context.

- val_loss: mean cross-entropy in nats over all those targets (as in training).
- bits_per_byte: sum of the target losses / (ln 2 * UTF-8 bytes of those targets),
  both sums without the targets that are `<|endoftext|>` (a document boundary, no text).
  A token's bytes come from its byte-level BPE spelling (tasks.tokenizer.token_bytes:
  each symbol of a token string is one byte), not from decoding single ids, which
  mangles tokens that split a multi-byte character.

Samples: each prompt, preceded by `<|endoftext|>` as every document is in the shards,
continued by max_new_tokens tokens (KV cache; temperature, top_k, top_p; a
generator seeded with cfg.seed for each prompt, so a prompt's sample does not depend
on the others), cut at the first `<|endoftext|>`.

loss.png: the train artifact's logged train losses by step and the val loss (matplotlib,
Agg backend, no timestamp in the file: same curve, same bytes). report.md links it by
relative path; in a Prefect run the report is also published as a markdown artifact
with the PNG inlined as a data: URI, since the UI cannot reach files on disk.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from tokenizers import Tokenizer

from fineflow.config import EvaluateConfig
from fineflow.model import GPT
from fineflow.progress import in_prefect_run
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.storage.shards import read_shard
from fineflow.tasks.tokenizer import (
    EOT,
    TOKENIZER_JSON,
    hf_encoder,
    load_tokenizer,
    token_byte_lengths,
)
from fineflow.training.data import shard_paths, target_losses
from fineflow.training.runtime import pick_device

STAGE_VERSION = 2
LOSS_PNG = "loss.png"
EVAL_BATCH_TOKENS = 8192  # tokens per forward pass: batch = this // block_size windows
FIRST_SAMPLE_CHARS = 80

log = logging.getLogger("fineflow.evaluate")


def val_metrics(
    model: GPT,
    shards: list[np.ndarray],
    token_bytes: np.ndarray,
    eot_id: int,
    device: torch.device,
    max_targets: int | None = None,
) -> dict[str, float | int]:
    """val_loss (nats/token) and bits_per_byte over the shards' windows (module docstring)."""
    batch = max(1, EVAL_BATCH_TOKENS // model.config.block_size)
    lengths = torch.from_numpy(token_bytes)
    nats, targets, text_nats, text_tokens, text_bytes = 0.0, 0, 0.0, 0, 0
    for y, losses in target_losses(model, shards, batch, device, max_targets):
        text = y != eot_id
        nats += float(losses.sum())
        targets += len(y)
        text_nats += float(losses[text].sum())
        text_tokens += int(text.sum())
        text_bytes += int(lengths[y[text]].sum())
    if not targets or not text_bytes:
        raise ValueError("the val shards hold no text to evaluate")
    return {
        "val_loss": nats / targets,
        "bits_per_byte": text_nats / (math.log(2) * text_bytes),
        "val_tokens": targets,
        "val_text_tokens": text_tokens,
        "val_bytes": text_bytes,
    }


def sample_texts(
    model: GPT,
    tokenizer: Tokenizer,
    eot_id: int,
    cfg: EvaluateConfig,
    device: torch.device,
) -> list[str]:
    """Each prompt with its sampled continuation (module docstring)."""
    model.eval()
    encode = hf_encoder(tokenizer)  # as the shard stage encodes: "<|endoftext|>" stays text
    texts = []
    for prompt in cfg.prompts:
        ids = encode([prompt])[0]
        idx = torch.tensor([[eot_id, *ids]], device=device)
        out = model.generate(
            idx,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            generator=torch.Generator(device=device).manual_seed(cfg.seed),
        )
        new = out[0, idx.size(1) :].tolist()
        if eot_id in new:
            new = new[: new.index(eot_id)]
        texts.append(tokenizer.decode(ids + new))  # decoded together: no split characters
    return texts


def load_model(root: Path, model: Manifest, device: torch.device) -> GPT:
    """The train artifact's GPT, on `device`, in eval mode."""
    spec = json.loads(model.path(root, "config.json").read_text())["model"]
    gpt = GPT.from_spec(spec)
    weights = torch.load(model.path(root, "model.pt"), map_location="cpu", weights_only=True)
    gpt.load_state_dict(weights)
    return gpt.to(device).eval()


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def loss_curve_png(steps: list[int], losses: list[float], val_loss: float | None) -> bytes:
    """The training loss curve as PNG bytes (deterministic for the same points)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    try:
        ax.plot(steps, losses, marker=".", label="train loss (mean since previous log)")
        if val_loss is not None:
            ax.axhline(val_loss, color="tab:orange", ls="--", label=f"val loss {val_loss:.3f}")
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)


def publish_report(markdown: str, png: bytes, key: str) -> None:
    """The report as a Prefect markdown artifact (inside a Prefect run only)."""
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    try:
        create_markdown_artifact(
            markdown=markdown.replace(f"]({LOSS_PNG})", f"]({uri})"),
            key="fineflow-report",
            description=f"evaluate {key}: val loss, bits per byte, loss curve, samples",
        )
    except Exception as exc:  # the UI is a view: never fail a stage over it
        log.warning("no report artifact: %s", exc)


def render_report(figures: dict[str, Any], cfg: EvaluateConfig, samples: list[str]) -> str:
    """The run's report in markdown: eval.json's figures, the loss curve, each sample fenced."""
    f = figures
    lines = [
        "# fineflow: evaluation",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {f['params']:,} |",
        f"| training steps | {f['steps']:,} ({f['tokens_seen']:,} tokens) |",
        f"| final train loss | {f['final_train_loss']:.4f} nats/token |",
        f"| val loss | {f['val_loss']:.4f} nats/token ({f['val_tokens']:,} tokens) |",
        f"| bits per byte | {f['bits_per_byte']:.4f} ({f['val_bytes']:,} bytes) |",
        "",
        "## Loss curve",
        "",
        f"![loss curve]({LOSS_PNG})",
        "",
        "## Samples",
        "",
        f"{cfg.max_new_tokens} new tokens at temperature {cfg.temperature}, "
        f"top-k {cfg.top_k}, top-p {cfg.top_p}, seed {cfg.seed}.",
    ]
    for prompt, text in zip(cfg.prompts, samples, strict=True):
        fence = _fence(text)
        lines += ["", f"**{prompt}**", "", f"{fence}text", text, fence]
    return "\n".join(lines) + "\n"


@task(name="evaluate", task_run_name="evaluate")
def evaluate_model(
    root: str, model: Manifest, shards: Manifest, tokenizer: Manifest, cfg: EvaluateConfig
) -> Manifest:
    """Val loss and bits per byte on the val shards, and samples for the prompts."""
    key = stage_key(STAGE_VERSION, model, shards, tokenizer, cfg)
    device = pick_device("auto")
    tok = load_tokenizer(tokenizer.path(Path(root), TOKENIZER_JSON))
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise ValueError(f"tokenizer artifact {tokenizer.key} has no {EOT} token")
    gpt = load_model(Path(root), model, device)
    val = [read_shard(p) for p in shard_paths(Path(root), shards, "val")]
    metrics = val_metrics(gpt, val, token_byte_lengths(tok), eot_id, device, cfg.max_val_tokens)
    samples = sample_texts(gpt, tok, eot_id, cfg, device)
    log.info(
        "evaluate: val loss %.4f, %.4f bits/byte over %d tokens",
        metrics["val_loss"],
        metrics["bits_per_byte"],
        metrics["val_tokens"],
    )

    figures = {
        "params": gpt.num_params(),
        "steps": model.counts["steps"],
        "tokens_seen": model.counts["tokens_seen"],
        "final_train_loss": model.stats["final_train_loss"],
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()},
    }
    first = samples[0].replace("\n", " ")[:FIRST_SAMPLE_CHARS] if samples else ""
    curve = json.loads(model.path(Path(root), "metrics.json").read_text())
    png = loss_curve_png(curve["step"], curve["train_loss"], curve.get("val_loss"))
    report = render_report(figures, cfg, samples)
    publish_report(report, png, key)
    with ArtifactWriter(Path(root), "evaluate", key) as out:
        out.path(LOSS_PNG).write_bytes(png)
        out.path("report.md").write_text(report)
        samples_json = [{"prompt": p, "text": t} for p, t in zip(cfg.prompts, samples, strict=True)]
        out.path("eval.json").write_text(
            json.dumps({**figures, "samples": samples_json}, indent=1, sort_keys=True) + "\n"
        )
        return out.commit(
            cfg,
            counts={"val_tokens": metrics["val_tokens"]},
            stats={
                "val_loss": figures["val_loss"],
                "bits_per_byte": figures["bits_per_byte"],
                "first_sample": first,
            },
        )
