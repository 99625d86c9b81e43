"""The stage graph, written once: each stage's task, what it takes, its output and figure.

The data flow and the model flow wire the tasks from this table; `fineflow status` walks
it to compute cache keys exactly as a run would; the run summary takes each stage's key
figure from it; `--stop-after` and `--force` name its rows; the CLI lists its outputs.
Adding a stage is its task file plus one row here.

`takes` names a task's arguments after the data root, in order:
- a stage's name: that stage's output (in a per-WARC stage, the same WARC's);
- "source": the WARC itself (per-WARC stages);
- "cfg.<field>": that sub-config of PipelineConfig (a task sees only its own);
- "all:<stage>": a per-WARC stage's outputs over every WARC (corpus stages);
- "funnel": url_filter + extract + filter outputs over every WARC (dedup's funnel table);
- "sources": every WARC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from fineflow.storage.artifacts import Manifest


def _sum(ms: list[Manifest], key: str) -> int:
    return sum(m.counts.get(key, 0) for m in ms)


def _download(ms: list[Manifest]) -> str:
    mb = sum(f.bytes for m in ms for f in m.files if f.path != "manifest.json") / 1e6
    return f"{len(ms)} WARCs fetched, {mb:.1f} MB"


def _url_filter(ms: list[Manifest]) -> str:
    from fineflow.tasks.url_filter import FILTER_REASONS  # the URL rules, not status/type

    dropped = sum(_sum(ms, f"dropped_{reason}") for reason in FILTER_REASONS)
    return (
        f"{_sum(ms, 'kept')} of {_sum(ms, 'total')} responses kept, {dropped} dropped by URL rules"
    )


def _filter(ms: list[Manifest]) -> str:
    lang = sum(v for m in ms for k, v in m.counts.items() if k.startswith("dropped_language"))
    total, kept = _sum(ms, "total"), _sum(ms, "kept")
    return f"{kept} of {total} docs kept, {lang} by language, {total - kept - lang} by quality"


def _train(ms: list[Manifest]) -> str:
    c, s = ms[0].counts, ms[0].stats
    return (
        f"{c['steps']} steps, train loss {s['first_train_loss']:.3f} -> "
        f"{s['final_train_loss']:.3f}, val loss {s['val_loss']:.3f}"
    )


def _report(ms: list[Manifest]) -> str:
    size = sum(f.bytes for f in ms[0].files if f.path == "report.html")
    return f"report.html ({size / 1e3:,.0f} kB): the crawl to the next-token distribution"


def _evaluate(ms: list[Manifest]) -> str:
    s = ms[0].stats
    return (
        f"val loss {s['val_loss']:.3f}, {s['bits_per_byte']:.3f} bits/byte; "
        f"sample: {s['first_sample']!r}"
    )


@dataclass(frozen=True)
class Stage:
    name: str
    task_ref: str  # "module:attribute", imported when first used (torch only for training)
    takes: tuple[str, ...]
    figure: Callable[[list[Manifest]], str] = field(repr=False)
    per_warc: bool = False
    output: tuple[str, str] | None = None  # (file in the artifact, what it is) for the CLI

    @property
    def reads_warcs(self) -> bool:
        """Whether the task takes every WARC's outputs (dedup, report), not one manifest each."""
        return any(t.startswith("all:") or t in ("funnel", "sources") for t in self.takes)

    @property
    def task(self) -> Any:
        module, _, name = self.task_ref.partition(":")
        return getattr(import_module(module), name)

    def args(
        self,
        cfg: Any,
        up: Mapping[str, Any],
        source: Any = None,
        columns: Mapping[str, list] | None = None,
        sources: list | None = None,
        wrap: Callable[[Any], Any] = lambda v: v,
    ) -> tuple:
        """The task's arguments after the root. In a mapped call `up` holds per-WARC lists
        and `source` the list of WARCs, and `wrap` (prefect.unmapped) marks the settings."""
        out = []
        for name in self.takes:
            if name == "source":
                out.append(source)
            elif name.startswith("cfg."):
                out.append(wrap(getattr(cfg, name[4:])))
            elif name.startswith("all:"):
                out.append(columns[name[4:]])
            elif name == "funnel":
                out.append(columns["url_filter"] + columns["extract"] + columns["filter"])
            elif name == "sources":
                out.append(sources)
            else:
                out.append(up[name])
        return tuple(out)


_T = "fineflow.tasks."
STAGES: tuple[Stage, ...] = (
    Stage("download", _T + "download:download_warc", ("source", "cfg.download"), _download, True),
    Stage("url_filter", _T + "url_filter:filter_urls", ("download", "cfg.url_filter"),
          _url_filter, True),
    Stage("extract", _T + "extract:extract_text", ("download", "url_filter", "cfg.extract"),
          lambda ms: f"{_sum(ms, 'kept')} docs kept of {_sum(ms, 'total')} pages", True),
    Stage("filter", _T + "filter:filter_docs", ("extract", "cfg.filter"), _filter, True),
    Stage("minhash", _T + "minhash:minhash_docs", ("filter", "cfg.minhash"),
          lambda ms: f"{_sum(ms, 'kept')} documents signed", True),
    Stage("dedup", _T + "dedup:dedup_docs",
          ("all:filter", "all:minhash", "cfg.dedup", "funnel", "sources"),
          lambda ms: f"{ms[0].counts['kept']} docs kept, "
          f"{ms[0].counts['dropped_duplicate']} removed as duplicates",
          output=("corpus.duckdb", "corpus catalog (DuckDB)")),
    Stage("tokenizer", _T + "tokenizer:train_tokenizer", ("dedup", "cfg.tokenizer"),
          lambda ms: f"vocab size {ms[0].stats['vocab_size']}",
          output=("tokenizer.json", "tokenizer")),
    Stage("shard", _T + "shard:shard_tokens", ("dedup", "tokenizer", "cfg.shard"),
          lambda ms: f"{ms[0].counts['train_tokens']:,} train + {ms[0].counts['val_tokens']:,} "
          f"val tokens in {ms[0].counts['shards']} shards",
          output=("", "token shards")),
    Stage("train", _T + "train:train_model", ("shard", "tokenizer", "cfg.train"), _train,
          output=("model.pt", "model weights")),
    Stage("evaluate", _T + "evaluate:evaluate_model",
          ("train", "shard", "tokenizer", "cfg.evaluate"), _evaluate,
          output=("report.md", "evaluation")),
    Stage("report", _T + "report:report_run",
          ("all:download", "all:url_filter", "all:filter", "dedup", "tokenizer", "shard",
           "train", "evaluate", "cfg.evaluate", "cfg.report"), _report,
          output=("report.html", "run report")),
)  # fmt: skip
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
PER_WARC: tuple[Stage, ...] = tuple(s for s in STAGES if s.per_warc)
CORPUS: tuple[Stage, ...] = tuple(s for s in STAGES if not s.per_warc)


def until(stop_after: str | None, stages: tuple[Stage, ...] = STAGES) -> tuple[Stage, ...]:
    """`stages` up to and including `stop_after` (all of them when it is None)."""
    if stop_after is None:
        return stages
    last = [s.name for s in STAGES].index(stop_after)
    return tuple(s for s in stages if [t.name for t in STAGES].index(s.name) <= last)
