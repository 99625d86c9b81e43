"""An ablation spec: a base config, named variants of it, seeds, a token budget, one yardstick.

FineWeb chose each filter by building the corpus with and without it, training the same
small model on each for the same number of tokens and comparing them on one evaluation.
A spec says exactly that (README, "Ablations"):

    name: sample-recipe
    base: {train: {model: {n_layer: 2}}}         # PipelineConfig fields, as a --config file
    variants:
      no-quality: {filter.gopher_quality.enabled: false, filter.c4.enabled: false}
      no-dedup: {dedup.enabled: false}
    seeds: 2
    tokens: 300000                               # training tokens per model
    tokenizer: shared                            # one tokenizer (the base corpus's) for all
    eval: {fraction: 0.15}                       # held-out clusters of the base corpus
    choice: {items: 200, choices: 4}             # the multiple-choice continuation task

`base` is always run as the variant named "base", the one the others are compared with.
A variant's overrides are dotted paths or nested mappings laid over `base`. Everything
is checked when the spec is read, naming the variant and the field: an unknown field, a
bad value, a variant that sets what the spec decides (train.steps comes from `tokens`,
train.seed from `seeds`, shard.val_fraction from eval.fraction) or a data root of its own.

The yardstick (flows/ablate.py): every variant's shard split sends the same
near-duplicate clusters to val (by the hash of the cluster id), so no variant trains on
them; the held-out set is the base corpus's val split (the base config is the
reference cleaning), or the documents of `eval.texts`. A leak check refuses the spec
before any training if a variant's train split holds one of them anyway, by id or as a
MinHash near-duplicate.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fineflow.config import PipelineConfig, _Config, deep_merge, runtime

BASE = "base"
BUNDLED = Path(__file__).resolve().parent / "ablations"  # `fineflow ablate sample`
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a variant's name is shown, never a path
# What the spec itself decides for every variant: a variant or base may not set these.
DECIDED = {
    ("train", "steps"): "`tokens` sets train.steps",
    ("train", "seed"): "`seeds` sets train.seed",
    ("shard", "val_fraction"): "eval.fraction sets shard.val_fraction (the held-out clusters)",
    ("data_root",): "every variant shares the data root (and so its cache)",
    ("force",): "not in an ablation",
    ("stop_after",): "not in an ablation",
}


class HoldoutConfig(_Config):
    """The documents every model is scored on; no variant trains on them."""

    fraction: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="near-duplicate clusters held out of every variant's training, by the hash"
        " of the cluster id; the base corpus's share of them is the evaluation set",
    )
    texts: Path | None = Field(
        default=None,
        description='instead: a JSON-lines file of documents ({"text": ...} a line) to score'
        " on; refused if any variant trains on one of them",
    )
    max_docs: int | None = Field(default=None, ge=1, description="score on at most this many")

    @field_validator("texts")
    @classmethod
    def _texts_exist(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file {v}")
        return v


class ChoiceConfig(_Config):
    """The multiple-choice continuation task built from the held-out documents."""

    items: int = Field(default=200, ge=1, description="questions (fewer if the set is small)")
    choices: int = Field(default=4, ge=2, description="the true next sentence + distractors")
    context_chars: int = Field(default=400, ge=20, description="text before the gap, at most")
    min_chars: int = Field(default=30, ge=1, description="shortest sentence used as an option")
    max_chars: int = Field(default=250, ge=1, description="longest sentence used as an option")
    seed: int = 0


class AblationSpec(_Config):
    """A base config, its variants, seeds and a token budget (module docstring)."""

    name: str = Field(default="ablation", pattern=NAME)
    base: dict[str, Any] = Field(default_factory=dict, description="PipelineConfig fields")
    variants: dict[str, dict[str, Any]] = Field(
        min_length=1, description="name -> overrides of base (dotted paths or nested)"
    )
    seeds: int = Field(default=2, ge=1, description="models per variant, train.seed + 0, 1, ...")
    tokens: int = Field(ge=1, description="training tokens per model (a smaller corpus repeats)")
    tokenizer: Literal["shared", "own"] = Field(
        default="shared",
        description="shared: one tokenizer, trained on the base corpus, for every variant;"
        " own: each variant trains its own (bits per byte compares either way)",
    )
    eval: HoldoutConfig = HoldoutConfig()
    choice: ChoiceConfig = ChoiceConfig()
    parallel: int | None = runtime(
        default=None,
        ge=1,
        description="models trained at once (None: one per core on a CPU, one on a GPU);"
        " the cores are shared out among them",
    )

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in v:
            if name == BASE:
                raise ValueError(f"{BASE!r} is the base config itself: name the variant otherwise")
            if not re.match(NAME, name):
                raise ValueError(f"variant name {name!r}: letters, digits, '.', '_', '-' only")
        return v

    @model_validator(mode="after")
    def _configs_valid(self) -> AblationSpec:
        self.configs()  # every variant's config, checked now: a bad one fails at the start
        return self

    def configs(self) -> dict[str, PipelineConfig]:
        """Each variant's PipelineConfig for seed 0, base first (ValueError naming the field)."""
        out = {}
        for name, over in {BASE: {}, **self.variants}.items():
            for where, tree in (("base", self.base), (f"variants.{name}", over)):
                if (bad := _decided(nested(tree), variant=where != "base")) is not None:
                    path, why = bad
                    raise ValueError(f"{where}.{path}: {why}")
            tree = deep_merge(nested(self.base), nested(over))
            tree = deep_merge(tree, {"shard": {"val_fraction": self.eval.fraction}})
            try:
                cfg = PipelineConfig.model_validate(tree)
                cfg = PipelineConfig.model_validate(
                    deep_merge(tree, {"train": {"steps": self.steps(cfg)}})
                )
            except ValidationError as err:
                e = err.errors()[0]
                path = ".".join(str(p) for p in e["loc"]) or "(top level)"
                raise ValueError(f"variant {name}: {path}: {e['msg']}") from None
            out[name] = cfg
        roots = {cfg.data_root for cfg in out.values()}
        if len(roots) > 1:
            raise ValueError(f"the variants resolve to {len(roots)} data roots; give one in base")
        return out

    def steps(self, cfg: PipelineConfig) -> int:
        """Optimizer steps that train on `tokens` tokens (the last step may overshoot)."""
        return math.ceil(self.tokens / tokens_per_step(cfg))

    def seeded(self, cfg: PipelineConfig, seed: int) -> PipelineConfig:
        """`cfg` for the `seed`-th model (0-based) of its variant."""
        train = cfg.train.model_copy(update={"seed": cfg.train.seed + seed})
        return cfg.model_copy(update={"train": train})


def tokens_per_step(cfg: PipelineConfig) -> int:
    """Tokens one optimizer step trains on (one process; DDP's are counted by batch_tokens)."""
    t = cfg.train
    return t.batch_tokens or t.batch_size * t.model.block_size * t.grad_accum


def nested(tree: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a": {"c": 2}} -> {"a": {"b": 1, "c": 2}}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        item = nested(value) if isinstance(value, dict) else value
        for part in reversed(str(key).split(".")):
            item = {part: item}
        out = deep_merge(out, item)
    return out


def _decided(tree: dict[str, Any], variant: bool) -> tuple[str, str] | None:
    for path, why in DECIDED.items():
        if path == ("data_root",) and not variant:
            continue  # base names the one data root
        node: Any = tree
        for part in path:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return ".".join(path), why
    return None


def load_spec(path: Path) -> AblationSpec:
    """The spec in a YAML (or JSON) file; ValueError saying what is wrong with it."""
    import yaml

    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: wants a mapping (name, base, variants, ...)")
    return AblationSpec.model_validate(tree)
