"""The typed configuration tree: one sub-model per stage, composed into PipelineConfig.

PipelineConfig is the flow's only parameter (the Prefect UI renders it as a form).
Each task receives only its own sub-config, so editing the training config never
changes the cache key of extraction. Every model is frozen and forbids unknown
fields, so a typo in a YAML preset fails at the start, naming the field.

The defaults run the bundled sample (fineflow/sample/warcs) on a CPU in a few minutes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fineflow.sources import check_sources

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_DIR = PACKAGE_DIR / "sample"  # package data: the same in a checkout and a wheel
PRESETS_FILE = PACKAGE_DIR / "prefect.yaml"  # a link to the project's prefect.yaml
DATA_ROOT_ENV = "FINEFLOW_DATA_ROOT"


def default_data_root() -> Path:
    """$FINEFLOW_DATA_ROOT, else `data/` in the current directory (never inside the package)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or Path.cwd() / "data").absolute()


# The stages in the order they run; `force` and `stop_after` name these.
StageName = Literal[
    "download",
    "url_filter",
    "extract",
    "filter",
    "minhash",
    "dedup",
    "tokenizer",
    "shard",
    "train",
    "evaluate",
    "report",
]
STAGES: tuple[str, ...] = get_args(StageName)


def runtime(**kw: Any) -> Any:
    """A field that cannot change any stage's output (threads, workers, memory limits,
    retries, checkpoint cadence): it stays out of every cache key (storage/fingerprint.py),
    so changing it reruns nothing; tests/flows/test_caching.py holds each one to it."""
    return Field(json_schema_extra={"affects_output": False}, **kw)


class _Config(BaseModel):
    # validate_default: a default has its field's type (a float field's `3` becomes 3.0), so
    # a config read back from JSON (a --config file, the Prefect UI's form, a deployment)
    # fingerprints, and so caches, exactly as the one built in Python
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` laid on it, mapping by mapping (`over` wins at the leaves)."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(base.get(k), dict)
        out[k] = deep_merge(base[k], v) if both else v
    return out


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
    on_error: Literal["skip", "fail"] = runtime(
        default="skip",
        description="a WARC that fails a per-WARC stage: skip it (counted, named, retried by "
        "the next run; the corpus is built from the rest) or fail the whole run at once",
    )
    min_good_warcs: int = runtime(
        default=1,
        ge=1,
        description="fail the run when fewer WARCs than this make it through the per-WARC "
        "stages (with on_error=skip)",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> SourceConfig:
        if not self.warcs and self.common_crawl is None:
            raise ValueError("sources: give at least one WARC in `warcs` or a `common_crawl` slice")
        return self

    @field_validator("warcs")
    @classmethod
    def _files_there_names_unique(cls, v: list[str]) -> list[str]:
        check_sources(v)  # a missing local file fails here, at the start, not mid-run
        return v


class DownloadConfig(_Config):
    retries: int = runtime(default=4, ge=0, description="attempts after the first")
    backoff_s: float = runtime(
        default=1.0, gt=0, allow_inf_nan=False, description="first retry delay; doubles"
    )
    timeout_s: float = runtime(default=60.0, gt=0, description="socket timeout per read")
    chunk_bytes: int = runtime(default=1 << 20, ge=4096)


class UrlFilterConfig(_Config):
    """FineWeb's URL filter: UT1 blocklists, then banned words, soft words and subwords."""

    blocklist: Path | str = Field(
        default=SAMPLE_DIR / "blocklist" / "domains",
        description="UT1 blocklist: a `domains` file, a directory holding `domains`/`urls`"
        " (or <category>/domains), or a UT1 .tar.gz; a local path or an http(s)/s3 URL",
    )
    categories: list[str] = Field(
        default_factory=lambda: ["adult"],
        description="UT1 categories read from a directory or archive (e.g. adult/domains)",
    )
    banned_words: list[str] = Field(
        default_factory=lambda: ["porn", "xxx", "sex", "casino", "viagra"],
        description="a URL containing any of these as a token is dropped",
    )
    soft_banned_words: list[str] = Field(
        default_factory=lambda: ["adult", "nude", "naked", "escort", "erotic", "webcam", "milf"],
        description="a URL with `soft_word_threshold` or more of these as tokens is dropped",
    )
    soft_word_threshold: int = Field(default=2, ge=1)
    banned_subwords: list[str] = Field(
        default_factory=lambda: ["pornhub", "xvideos", "xhamster", "redtube", "youporn"],
        description="dropped when found anywhere in the URL with non-alphanumerics removed",
    )
    banned_words_file: Path | None = Field(default=None, description="more banned words, 1/line")
    soft_banned_words_file: Path | None = None
    banned_subwords_file: Path | None = None

    @field_validator("blocklist")  # after: JSON input reaches it as str (model_validate_json)
    @classmethod
    def _path_unless_url(cls, v: Path | str) -> Path | str:
        # Local paths become Path so cache keys see the file's bytes; URLs stay strings.
        if isinstance(v, str) and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+://", v):
            return Path(v)
        if isinstance(v, str) and v.startswith("file://"):
            return Path(v.removeprefix("file://"))
        return v


class ExtractConfig(_Config):
    min_chars: int = Field(default=200, ge=0, description="shorter extracted texts are dropped")
    max_html_bytes: int = Field(
        default=10_000_000,
        ge=1024,
        description="bigger pages are skipped (real news pages reach 3 MB; a 10 MB page costs "
        "trafilatura seconds and ~0.8 GB of address space, see tasks/extract.py)",
    )
    favor_precision: bool = True
    include_comments: bool = False
    include_tables: bool = Field(
        default=True, description="text of <table> cells kept (trafilatura's and FineWeb's default)"
    )
    workers: int | None = runtime(
        default=None,
        ge=0,
        description="sandbox processes per WARC task (None: the cores the task has, the "
        "machine's over the WARCs running at once; 0: extract in-process, no timeout)",
    )
    timeout_s: float = Field(default=5.0, gt=0, description="per page; the worker is replaced")
    accelerate: bool = runtime(
        default=True,
        description="trafilatura's pruning XPaths compiled to Python and a C class lookup "
        "(tasks/fast_trafilatura.py): the same text, ~40% less extraction time; false runs "
        "trafilatura as shipped",
    )
    worker_memory_mb: int = Field(
        default=2048, ge=0, description="address-space cap of a sandbox process (0: none)"
    )


class LanguageFilterConfig(_Config):
    enabled: bool = True
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        min_length=1,  # none would drop every document; turn the filter off with enabled=false
        description="fastText lid.176",
    )
    min_score: float = Field(default=0.65, ge=0, le=1)


class GopherRepetitionConfig(_Config):
    """Rae et al. 2021 (Gopher), table A1; fractions of lines, paragraphs or characters."""

    enabled: bool = True
    dup_line_frac: float = Field(default=0.3, ge=0, le=1)
    dup_para_frac: float = Field(default=0.3, ge=0, le=1)
    dup_line_char_frac: float = Field(default=0.2, ge=0, le=1)
    dup_para_char_frac: float = Field(default=0.2, ge=0, le=1)
    top_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )


class GopherQualityConfig(_Config):
    enabled: bool = True
    min_words: int = Field(default=50, ge=0)
    max_words: int = Field(default=100_000, ge=1)
    min_avg_word_length: float = Field(default=3, ge=0)
    max_avg_word_length: float = Field(default=10, ge=0)
    max_symbol_word_ratio: float = Field(default=0.1, ge=0, description="'#' and ellipses")
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float = Field(
        default=0.8, ge=0, le=1, description="at least this fraction of words has a letter"
    )
    min_stop_words: int = Field(default=2, ge=0)


class C4FilterConfig(_Config):
    """Raffel et al. 2020 (C4) rules; FineWeb drops the terminal-punctuation line rule."""

    enabled: bool = True
    terminal_punct_lines: bool = Field(default=False, description="FineWeb: off")
    min_words_per_line: int = Field(default=3, ge=0, description="shorter lines removed")
    max_word_length: int = Field(default=1000, ge=1, description="lines with longer words removed")
    min_sentences: int = Field(default=5, ge=0)
    javascript_lines: bool = True
    policy_lines: bool = True
    lorem_ipsum: bool = True
    curly_bracket: bool = True
    remove_citations: bool = True


class FineWebFilterConfig(_Config):
    enabled: bool = True
    line_punct_thr: float = Field(
        default=0.12, ge=0, le=1, description="drop if at most this fraction of lines end in .!?"
    )
    short_line_thr: float = Field(default=0.67, ge=0, le=1)
    short_line_chars: int = Field(default=30, ge=1)
    char_dup_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="drop at this fraction of characters in duplicated lines (paper 0.1, "
        "datatrove code 0.01; README: why 0.1)",
    )
    new_line_ratio: float = Field(default=0.3, ge=0, description="newlines per word (lists)")


class PiiConfig(_Config):
    enabled: bool = True
    emails: bool = True
    public_ipv4: bool = True


class FilterConfig(_Config):
    """The per-WARC filter stage, in FineWeb's order: language, Gopher, C4, FineWeb, PII."""

    language: LanguageFilterConfig = LanguageFilterConfig()
    gopher_repetition: GopherRepetitionConfig = GopherRepetitionConfig()
    gopher_quality: GopherQualityConfig = GopherQualityConfig()
    c4: C4FilterConfig = C4FilterConfig()
    fineweb: FineWebFilterConfig = FineWebFilterConfig()
    pii: PiiConfig = PiiConfig()
    dropped_samples: int = Field(default=5, ge=0, description="kept per drop reason, per WARC")
    workers: int | None = runtime(
        default=None,
        ge=0,
        description="processes judging one WARC's documents (None: the cores the task has; "
        "0 or 1: in-process); a WARC of few documents is always judged in-process",
    )


class MinHashConfig(_Config):
    ngram: int = Field(default=5, ge=1, description="word n-gram shingles")
    bands: int = Field(default=14, ge=1)
    rows: int = Field(default=8, ge=1, description="permutations per band")
    seed: int = 1
    workers: int | None = runtime(
        default=None,
        ge=0,
        description="processes signing one WARC's documents (None: the cores the task has; "
        "0 or 1: in-process); a WARC of few documents is always signed in-process",
    )


class DedupConfig(_Config):
    enabled: bool = Field(
        default=True,
        description="false: keep every document (clusters are still found and recorded)",
    )
    scope: Literal["crawl", "global"] = Field(
        default="crawl", description="compare documents within their crawl (FineWeb) or all"
    )
    memory_limit: str = runtime(
        default="4GB",
        pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="DuckDB memory_limit; past it DuckDB spills to a scratch directory",
    )
    threads: int | None = runtime(default=None, ge=1, description="DuckDB threads (None: all)")


class TokenizerConfig(_Config):
    vocab_size: int = Field(default=4096, ge=260, le=1 << 20)
    max_docs: int | None = Field(default=None, ge=1, description="train on at most this many")


class ShardConfig(_Config):
    shard_tokens: int = Field(default=10_000_000, ge=1024, description="tokens per shard file")
    val_fraction: float = Field(default=0.05, gt=0, lt=1, description="of documents, by id hash")
    batch_docs: int = runtime(default=256, ge=1, description="documents encoded per batch")


class ModelConfig(_Config):
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    n_embd: int = Field(default=128, ge=8)
    block_size: int = Field(default=128, ge=8, description="context length in tokens")
    vocab_multiple: int = Field(
        default=64, ge=1, description="embedding and head rows padded to a multiple of this"
    )
    qk_norm: bool = Field(default=True, description="RMSNorm on each head's q and k")
    mlp: Literal["relu2", "swiglu"] = Field(
        default="relu2",
        description="relu2: proj(relu(fc x)^2), 4x wide; swiglu: down(silu(gate x) * up x),"
        " 8/3x wide rounded up to a multiple of 64 (about the same parameters)",
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError("model.n_embd must be a multiple of 2 * n_head (rotary halves)")
        return self


class TrainConfig(_Config):
    model: ModelConfig = ModelConfig()
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per step per process")
    batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="tokens per optimizer step over all processes; sets grad_accum when given",
    )
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=30, ge=0)
    schedule: Literal["cosine", "wsd"] = Field(
        default="cosine", description="after warmup: cosine decay, or warmup-stable-decay"
    )
    decay_fraction: float = Field(
        default=0.2, gt=0, le=1, description="wsd: the last fraction of steps decays linearly"
    )
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool | None = Field(default=None, description="None: on for CUDA, off for CPU")
    checkpoint_every: int = runtime(default=100, ge=1)
    keep_checkpoints: int = runtime(default=2, ge=1, description="newest checkpoints kept")
    log_every: int = Field(default=25, ge=1)
    threads: int | None = runtime(default=None, ge=1, description="torch CPU threads")
    nproc: int | None = Field(
        default=None,
        ge=1,
        description="training processes (torchrun + DDP when > 1); None: one per CUDA GPU, "
        "1 without CUDA",
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError("train.warmup_steps must be smaller than train.steps")
        return self

    @model_validator(mode="after")
    def _batch_tokens_divide(self) -> TrainConfig:
        # the process count is checked at launch (training.loop.grad_accum_steps)
        per_micro = self.batch_size * self.model.block_size
        if self.batch_tokens is not None and self.batch_tokens % per_micro:
            raise ValueError(
                f"train.batch_tokens {self.batch_tokens} is not a multiple of train.batch_size"
                f" {self.batch_size} x model.block_size {self.model.block_size} = {per_micro}"
            )
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
    top_p: float | None = Field(default=None, gt=0, le=1, description="nucleus sampling")
    seed: int = 0
    max_val_tokens: int | None = Field(default=None, ge=1, description="cap on evaluated tokens")


class ReportConfig(_Config):
    """The run report (tasks/report.py): how much of each step it shows."""

    pages: int = Field(default=3, ge=1, description="pages shown as raw HTML beside their text")
    dropped_per_reason: int = Field(default=1, ge=0, description="dropped pages shown per reason")
    steps: int = Field(default=6, ge=1, description="generation steps shown per prompt")
    top: int = Field(default=10, ge=1, description="bars per next-token distribution")
    language_chars: int = Field(
        default=2_000_000,
        ge=1000,
        description="characters per language encoded for its bytes per token",
    )


class PipelineConfig(_Config):
    """Everything one run needs. Defaults: the bundled sample on a CPU."""

    data_root: Path = Field(
        default_factory=default_data_root,
        description="artifacts, cache, DuckDB (local). Given an fsspec URL (s3://bucket/prefix),"
        " the URL becomes remote_root and this a local working copy under ~/.cache/fineflow",
    )
    remote_root: str | None = Field(
        default=None,
        description="fsspec URL (s3://, gs://, az://, file://) mirroring data_root: artifacts"
        " and cache records are uploaded there and restored from it instead of rerun",
    )
    sources: SourceConfig = Field(default_factory=SourceConfig)
    download: DownloadConfig = DownloadConfig()
    url_filter: UrlFilterConfig = Field(default_factory=UrlFilterConfig)
    extract: ExtractConfig = ExtractConfig()
    filter: FilterConfig = FilterConfig()
    minhash: MinHashConfig = MinHashConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    workers: int = runtime(default=2, ge=1, description="processes for the per-WARC stages")
    dask_address: str | None = runtime(
        default=None,
        description="address of an existing Dask scheduler (tcp://host:8786): the per-WARC "
        "stages run on its workers instead of the local process pool",
    )
    force: list[StageName] = Field(default_factory=list, description="stages to rerun anyway")
    stop_after: StageName | None = Field(default=None, description="last stage to run")

    @model_validator(mode="before")
    @classmethod
    def _url_data_root(cls, data: object) -> object:
        # data_root=s3://… is shorthand for remote_root=s3://… with a derived working copy
        from fineflow.storage import layout, remote

        root = data.get("data_root") if isinstance(data, dict) else None
        if remote.is_url(root) and remote.check_url(root) is None and not data.get("remote_root"):
            return {**data, "remote_root": root, "data_root": layout.remote_cache_dir(root)}
        return data

    @field_validator("data_root", mode="before")
    @classmethod
    def _local_or_usable_url(cls, v: object) -> object:
        from fineflow.storage import remote

        if remote.is_url(v):  # a URL the shorthand above could not take
            raise ValueError(remote.check_url(v) or "give remote_root or data_root, not both URLs")
        return v

    @field_validator("remote_root")
    @classmethod
    def _remote_usable(cls, v: str | None) -> str | None:
        from fineflow.storage import remote

        if v is not None and (problem := remote.check_url(v) if remote.is_url(v) else "not a URL"):
            raise ValueError(problem)
        return v.rstrip("/") if v else v

    @field_validator("url_filter")
    @classmethod
    def _blocklist_exists(cls, v: UrlFilterConfig) -> UrlFilterConfig:
        if isinstance(v.blocklist, Path) and not v.blocklist.exists():
            raise ValueError(f"url_filter.blocklist: no such file {v.blocklist}")
        return v
