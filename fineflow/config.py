"""The typed configuration tree: one sub-model per stage, composed into PipelineConfig.

PipelineConfig is the flow's only parameter (the Prefect UI renders it as a form).
Each task receives only its own sub-config, so editing the training config never
changes the cache key of extraction. Every model is frozen and forbids unknown
fields, so a typo in a YAML preset fails at the start, naming the field.

The defaults run the bundled sample (sample/warcs) on a CPU in a few minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "sample"

# The order in which stages run; `force` and `stop_after` name these.
STAGES: tuple[str, ...] = (
    "download",
    "url_filter",
    "extract",
    "minhash",
    "dedup",
    "tokenizer",
    "shard",
    "train",
    "evaluate",
)
StageName = Literal[
    "download",
    "url_filter",
    "extract",
    "minhash",
    "dedup",
    "tokenizer",
    "shard",
    "train",
    "evaluate",
]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _sample_warcs() -> list[str]:
    return sorted(str(p) for p in (SAMPLE_DIR / "warcs").glob("*.warc.gz"))


class CommonCrawlConfig(_Config):
    """A slice of a Common Crawl crawl: the WARCs listed in its warc.paths.gz."""

    crawl: str = Field(pattern=r"^CC-MAIN-\d{4}-\d{2}$", description="e.g. CC-MAIN-2024-10")
    num_warcs: int = Field(default=1, ge=1, description="how many WARCs to take")
    offset: int = Field(default=0, ge=0, description="index of the first WARC in warc.paths")
    base_url: str = "https://data.commoncrawl.org/"


class SourceConfig(_Config):
    """Where WARCs come from: explicit URIs and/or a Common Crawl slice."""

    warcs: list[str] = Field(
        default_factory=_sample_warcs,
        description="WARC locations: https://, http://, s3://, file:// or a local path",
    )
    common_crawl: CommonCrawlConfig | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> SourceConfig:
        if not self.warcs and self.common_crawl is None:
            raise ValueError("sources: give at least one WARC in `warcs` or a `common_crawl` slice")
        return self


class DownloadConfig(_Config):
    retries: int = Field(default=4, ge=0, description="attempts after the first")
    backoff_s: float = Field(default=1.0, gt=0, description="first retry delay; doubles")
    timeout_s: float = Field(default=60.0, gt=0, description="socket timeout per read")
    chunk_bytes: int = Field(default=1 << 20, ge=4096)


class UrlFilterConfig(_Config):
    blocklist: Path = Field(
        default=SAMPLE_DIR / "blocklist" / "domains",
        description="UT1-format domain list: one domain per line, # comments",
    )
    banned_words: list[str] = Field(
        default_factory=lambda: ["porn", "xxx", "sex", "casino", "viagra"],
        description="a URL containing any of these as a token is dropped",
    )


class ExtractConfig(_Config):
    min_chars: int = Field(default=200, ge=0, description="shorter extracted texts are dropped")
    max_html_bytes: int = Field(default=2_000_000, ge=1024, description="bigger pages skipped")
    favor_precision: bool = True
    include_comments: bool = False


class MinHashConfig(_Config):
    ngram: int = Field(default=5, ge=1, description="word n-gram shingles")
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1, description="permutations per band")
    seed: int = 1


class DedupConfig(_Config):
    pass


class TokenizerConfig(_Config):
    vocab_size: int = Field(default=4096, ge=260, le=1 << 20)
    max_docs: int | None = Field(default=None, ge=1, description="train on at most this many")


class ShardConfig(_Config):
    shard_tokens: int = Field(default=10_000_000, ge=1024, description="tokens per shard file")
    val_fraction: float = Field(default=0.05, gt=0, lt=1, description="of documents, by id hash")
    batch_docs: int = Field(default=256, ge=1)


class ModelConfig(_Config):
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=8)
    block_size: int = Field(default=128, ge=8, description="context length in tokens")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError("model.n_embd must be a multiple of 2 * n_head (rotary halves)")
        return self


class TrainConfig(_Config):
    model: ModelConfig = ModelConfig()
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool | None = Field(default=None, description="None: on for CUDA, off for CPU")
    checkpoint_every: int = Field(default=100, ge=1)
    log_every: int = Field(default=25, ge=1)
    threads: int | None = Field(default=None, ge=1, description="torch CPU threads")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError("train.warmup_steps must be smaller than train.steps")
        return self


class EvaluateConfig(_Config):
    prompts: list[str] = Field(
        default_factory=lambda: [
            "The Python interpreter",
            "SELECT",
            "A database is",
        ]
    )
    max_new_tokens: int = Field(default=48, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=50, ge=1)
    seed: int = 0
    max_val_tokens: int | None = Field(default=None, ge=1, description="cap on evaluated tokens")


class PipelineConfig(_Config):
    """Everything one run needs. Defaults: the bundled sample on a CPU."""

    data_root: Path = Field(default=REPO_ROOT / "data", description="artifacts, cache, DuckDB")
    sources: SourceConfig = Field(default_factory=SourceConfig)
    download: DownloadConfig = DownloadConfig()
    url_filter: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = ExtractConfig()
    minhash: MinHashConfig = MinHashConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    workers: int = Field(default=2, ge=1, description="processes for the per-WARC stages")
    force: list[StageName] = Field(default_factory=list, description="stages to rerun anyway")
    stop_after: StageName | None = Field(default=None, description="last stage to run")

    @field_validator("url_filter")
    @classmethod
    def _blocklist_exists(cls, v: UrlFilterConfig) -> UrlFilterConfig:
        if not v.blocklist.is_file():
            raise ValueError(f"url_filter.blocklist: no such file {v.blocklist}")
        return v
