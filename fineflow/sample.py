"""`fineflow sample`, `export` and `report`: use what a configuration's run made.

    fineflow sample "The database" "SELECT" [--set evaluate.temperature=0.7 ...]
    fineflow export out/my-model [--preset gpu-124m ...]
    fineflow report [--open]

The model is the train stage's artifact for the configuration, found as `fineflow status`
finds it (the cache keys of that configuration; nothing runs, nothing is trained), or a
train artifact directory given with `--model` (data/train/<key>: model.pt, config.json,
tokenizer.json). Sampling takes its settings from the configuration's `evaluate` section
(max_new_tokens, temperature, top_k, top_p, seed), so `--set evaluate.max_new_tokens=200`
works here as in a run; the prompts given on the command line replace evaluate.prompts.
It samples exactly as the evaluate stage does (tasks/evaluate.py: `<|endoftext|>` first,
KV cache, cut at the next `<|endoftext|>`), so the config's own prompts and seed give the
report's samples. `fineflow report` finds the run report (report.html) the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fineflow.config import EvaluateConfig, PipelineConfig
from fineflow.export import ModelDirError

TRAIN_FILES = ("model.pt", "config.json", "tokenizer.json")


def stage_output(cfg: PipelineConfig, stage: str, what: str = "", hint: str = "") -> Any:
    """The manifest of the `stage` artifact `cfg` made, from the cache as `fineflow status`
    finds it (nothing runs); fetched from remote_root if only there. ModelDirError if the
    cache does not hold it."""
    from fineflow.status import CACHED, RESTORES, pipeline_status
    from fineflow.storage.remote import Remote

    lookup = cfg.model_copy(update={"stop_after": stage, "force": []})
    found = {s.stage: s for s in pipeline_status(lookup)}.get(stage)
    if found is None or found.output is None or found.summary not in (CACHED, RESTORES):
        state = found.summary if found is not None else "not reached"
        raise ModelDirError(
            f"no {what or stage + ' output'} for this configuration in {cfg.data_root} "
            f"({stage}: {state}); run `fineflow run` with the same options first{hint}"
        )
    if cfg.remote_root is not None:
        Remote(cfg.remote_root).localize(cfg.data_root, [found.output])
    return found.output


def trained_model_dir(cfg: PipelineConfig) -> Path:
    """The local directory of the train artifact `cfg` made (downloaded if only remote)."""
    train = stage_output(cfg, "train", "trained model", ", or give --model data/train/<key>")
    return train.path(cfg.data_root, "model.pt").parent


def check_model_dir(path: Path) -> Path:
    """`path` if it holds a train artifact's files, else ModelDirError naming what is missing."""
    missing = [name for name in TRAIN_FILES if not (Path(path) / name).is_file()]
    if missing:
        raise ModelDirError(f"{path} is not a train artifact directory: no {', '.join(missing)}")
    return Path(path)


def sample(model_dir: Path, cfg: EvaluateConfig, device: str = "auto") -> list[str]:
    """Each of cfg.prompts continued by the model in `model_dir`, as the evaluate stage does."""
    from fineflow.export import load_trained
    from fineflow.tasks.evaluate import sample_texts
    from fineflow.tasks.tokenizer import load_tokenizer
    from fineflow.training.runtime import pick_device
    from fineflow.vocab import EOT, TOKENIZER_JSON

    model_dir = check_model_dir(model_dir)
    dev = pick_device(device)
    model = load_trained(model_dir).to(dev)
    try:
        tok = load_tokenizer(model_dir / TOKENIZER_JSON)
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
        raise ModelDirError(f"{model_dir / TOKENIZER_JSON} does not load: {exc}") from exc
    eot_id = tok.token_to_id(EOT)
    if eot_id is None:
        raise ModelDirError(f"{model_dir / TOKENIZER_JSON} has no {EOT} token")
    return sample_texts(model, tok, eot_id, cfg, dev)


def describe_model(model_dir: Path) -> str:
    """One line: where the model is, its size and how long it trained."""
    import json

    try:
        spec = json.loads((model_dir / "config.json").read_text())
        m, t = spec["model"], spec.get("train", {})
        shape = f"{m['n_layer']} layers x {m['n_embd']} wide, context {m['block_size']}"
        steps = f", {t['steps']} steps" if "steps" in t else ""
        return f"model {model_dir} ({shape}, vocab {m['vocab_size']}{steps})"
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelDirError(
            f"{model_dir / 'config.json'} is not a train artifact's: {exc!r}"
        ) from exc
