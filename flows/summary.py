"""One line per stage for the end of a run, and the run's summary artifacts in the Prefect UI.

A stage line: name, ran/cached, seconds, key figure. Seconds are the time a stage
added to the run: from the moment the previous stage's last task finished to the
moment this stage's last task finished (the per-WARC stages overlap, so this is
each stage's share of the wall clock, not CPU time).

Artifacts (`publish_run_artifacts`, inside a flow run only): a table `fineflow-funnel`
(per WARC: responses, then what each per-WARC stage kept, then what dedup kept; and a
total row) and a markdown `fineflow-run-summary` (the stage lines and where the outputs are).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect.futures import PrefectFuture, wait

from storage.artifacts import Manifest


@dataclass(frozen=True)
class StageLine:
    stage: str
    ran: int
    cached: int
    seconds: float
    figure: str
    # What the stage returned, for the run's artifacts; not part of the printed line.
    manifests: tuple[Manifest, ...] = field(default=(), repr=False, compare=False)

    @property
    def status(self) -> str:
        if self.ran and self.cached:
            return f"ran {self.ran}/{self.ran + self.cached}"
        return "ran" if self.ran else "cached"

    def __str__(self) -> str:
        return f"{self.stage:<11} {self.status:<10} {self.seconds:7.1f}s  {self.figure}"


class StageClock:
    """Waits for each stage's futures in pipeline order and times what each one added."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.lines: list[StageLine] = []

    def finish(self, stage: str, futures: list[PrefectFuture]) -> list[Manifest]:
        wait(futures)
        results = [f.result() for f in futures]  # raises the stage's error, naming the task
        now = time.monotonic()
        cached = sum(f.state.name == "Cached" for f in futures)
        ms = tuple(m for m in results if isinstance(m, Manifest))
        self.lines.append(
            StageLine(
                stage,
                len(futures) - cached,
                cached,
                now - self.last,
                figure(stage, results),
                ms,
            )
        )
        self.last = now
        return results


def _total(manifests: list[Manifest], key: str) -> int:
    return sum(m.counts.get(key, 0) for m in manifests)


def figure(stage: str, results: list) -> str:
    """The one number a user wants to see for `stage`."""
    ms = [m for m in results if isinstance(m, Manifest)]
    if stage == "resolve_crawl":
        return f"{sum(len(r) for r in results)} WARC URLs"
    if stage == "download":
        mb = sum(f.bytes for m in ms for f in m.files if f.path != "manifest.json") / 1e6
        return f"{len(ms)} WARCs fetched, {mb:.1f} MB"
    if stage == "url_filter":
        from tasks.url_filter import FILTER_REASONS  # the URL rules, not status/type drops

        dropped = sum(_total(ms, f"dropped_{reason}") for reason in FILTER_REASONS)
        return (
            f"{_total(ms, 'kept')} of {_total(ms, 'total')} responses kept, "
            f"{dropped} dropped by URL rules"
        )
    if stage == "extract":
        return f"{_total(ms, 'kept')} docs kept of {_total(ms, 'total')} pages"
    if stage == "filter":
        lang = sum(v for m in ms for k, v in m.counts.items() if k.startswith("dropped_language"))
        return (
            f"{_total(ms, 'kept')} of {_total(ms, 'total')} docs kept, {lang} by language, "
            f"{_total(ms, 'total') - _total(ms, 'kept') - lang} by quality"
        )
    if stage == "minhash":
        return f"{_total(ms, 'docs')} documents signed"
    m = ms[0]
    if stage == "dedup":
        return (
            f"{m.counts['kept']} docs kept, {m.counts['dropped_duplicate']} removed as duplicates"
        )
    if stage == "tokenizer":
        return f"vocab size {m.stats['vocab_size']}"
    if stage == "shard":
        c = m.counts
        return (
            f"{c['train_tokens']:,} train + {c['val_tokens']:,} val tokens in {c['shards']} shards"
        )
    if stage == "train":
        return (
            f"{m.counts['steps']} steps, train loss {m.stats['first_train_loss']:.3f} -> "
            f"{m.stats['final_train_loss']:.3f}, val loss {m.stats['val_loss']:.3f}"
        )
    if stage == "evaluate":
        return (
            f"val loss {m.stats['val_loss']:.3f}, {m.stats['bits_per_byte']:.3f} bits/byte; "
            f"sample: {m.stats['first_sample']!r}"
        )
    return ""


# --- artifacts in the Prefect UI ----------------------------------------------------------

log = logging.getLogger("fineflow.summary")
PER_WARC_STAGES = ("download", "url_filter", "extract", "minhash")
# The count that says how many documents (or responses) a per-WARC stage let through.
_KEPT = {"url_filter": "kept", "minhash": "docs"}


def funnel_rows(lines: list[StageLine], root: Path) -> list[dict[str, str | int]]:
    """Per WARC and in total: responses, then what each per-WARC stage and dedup kept.

    Every per-WARC stage with a `kept` count gets a column, in run order, so a stage
    added to the data flow shows up in the funnel without touching this function.
    """
    per_warc = [ln for ln in lines if ln.manifests and all(m.warc for m in ln.manifests)]
    warcs = sorted({m.warc for ln in per_warc for m in ln.manifests})
    rows: dict[str, dict[str, str | int]] = {w: {"warc": w} for w in warcs}
    columns: list[str] = []
    for ln in per_warc:
        for m in ln.manifests:
            if ln.stage == "download":
                rows[m.warc]["MB"] = round(m.counts.get("bytes", 0) / 1e6, 2)
                continue
            if ln.stage == "url_filter" and "total" in m.counts:
                rows[m.warc]["responses"] = m.counts["total"]
            kept = m.counts.get(_KEPT.get(ln.stage, "kept"))
            if kept is not None:
                rows[m.warc][f"after {ln.stage}"] = kept
        columns += [f"after {ln.stage}"]
    for w, n in _dedup_kept_per_warc(lines, root).items():
        if w in rows:
            rows[w]["after dedup"] = n
    out = list(rows.values())
    if out:
        total: dict[str, str | int] = {"warc": f"total ({len(out)} WARCs)"}
        for key in {k for r in out for k in r} - {"warc"}:
            total[key] = round(sum(r.get(key, 0) for r in out), 2)  # type: ignore[misc]
        out.append(total)
    order = ["warc", "MB", "responses", *columns, "after dedup"]
    return [{k: r[k] for k in order if k in r} for r in out]


def _dedup_kept_per_warc(lines: list[StageLine], root: Path) -> dict[str, int]:
    dedup = next((ln.manifests[0] for ln in lines if ln.stage == "dedup" and ln.manifests), None)
    if dedup is None:
        return {}
    from storage.catalog import connect

    try:
        with connect(dedup.path(Path(root), "corpus.duckdb"), read_only=True) as con:
            return dict(con.execute("select warc, kept from dedup_stats").fetchall())
    except Exception as exc:  # the funnel is a view: a missing column must not fail a run
        log.warning("no dedup column in the funnel: %s", exc)
        return {}


def summary_markdown(lines: list[StageLine], outputs: dict[str, Manifest], root: Path) -> str:
    """The run as markdown: one row per stage, then where each output lives."""
    ran = sum(1 for ln in lines if ln.ran)
    md = [
        "# fineflow run",
        "",
        f"{len(lines)} stages, {ran} ran, {len(lines) - ran} cached.",
        "",
        "| stage | status | seconds | key figure |",
        "|---|---|---:|---|",
    ]
    md += [
        f"| {ln.stage} | {ln.status} | {ln.seconds:.1f} | {ln.figure.replace('|', '/')} |"
        for ln in lines
    ]
    if (corpus := outputs.get("dedup")) is not None:  # FineWeb's funnel, from the catalog
        from tasks.filter_docs import funnel_markdown

        table = funnel_markdown(corpus.path(Path(root), "corpus.duckdb"))
        md += ["", "## Funnel: where every record went", "", table] if table else []
    md += ["", f"## Outputs under `{root}`", ""]
    for stage, m in outputs.items():
        names = ", ".join(f"`{f.path}`" for f in m.files[:4])
        more = f" and {len(m.files) - 4} more" if len(m.files) > 4 else ""
        md.append(f"- **{stage}**: `{Path(root) / m.dir}` ({names}{more})")
    return "\n".join(md) + "\n"


def publish_run_artifacts(lines: list[StageLine], outputs: dict[str, Manifest], root: Path) -> None:
    """The funnel table and the run summary, attached to the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    rows = funnel_rows(lines, root)
    try:
        if rows:
            create_table_artifact(
                rows, key="fineflow-funnel", description="Documents kept per WARC, stage by stage"
            )
        create_markdown_artifact(
            summary_markdown(lines, outputs, root),
            key="fineflow-run-summary",
            description="Stages run or cached, and where the outputs are",
        )
    except Exception as exc:  # the UI is a view: never fail a run over it
        log.warning("run artifacts not published: %s", exc)
