"""One line per stage for the end of a run, and the run's summary artifacts in the Prefect UI.

A stage line: name, ran/cached, seconds, key figure. Seconds are the time a stage
added to the run: from the moment the previous stage's last task finished to the
moment this stage's last task finished (the per-WARC stages overlap, so this is
each stage's share of the wall clock, not CPU time).

Artifacts (`publish_run_artifacts`, inside a flow run only): a table `fineflow-funnel`
(per WARC: responses, then what each per-WARC stage kept, then what dedup kept; and a
total row: numbers only, so it fits a 1,600 px window), a table `fineflow-drop-reasons`
(pages dropped per stage and reason) and a markdown `fineflow-run-summary` (the stage
lines, a link to the run report, where the outputs are).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect.futures import PrefectFuture

from fineflow.storage import why
from fineflow.storage.artifacts import Manifest


@dataclass(frozen=True)
class WarcFailure:
    """A WARC left out of the corpus: the stage it failed and why, in words."""

    warc: str
    uri: str
    stage: str
    reason: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.warc} ({self.stage}): {self.reason}"

    def as_record(self) -> dict[str, str]:
        return {
            "warc": self.warc,
            "uri": self.uri,
            "stage": self.stage,
            "reason": self.reason,
            "hint": self.hint,
        }


def failure_of(future: PrefectFuture, stage: str, warc: str, uri: str) -> WarcFailure | None:
    """The failure of one per-WARC task run, or None if it completed or never started."""
    state = _state(future)
    if state is None or not (state.is_failed() or state.is_crashed()):
        return None  # completed, or NotReady because an earlier stage of its WARC failed
    exc = state.result(raise_on_failure=False)
    reason, hint = explain(exc) if isinstance(exc, BaseException) else (state.message or "", "")
    return WarcFailure(warc, uri, stage, reason, hint)


def explain(exc: BaseException) -> tuple[str, str]:
    """(reason, hint) of an exception, in words: a FineflowError's own, else its type and
    message (one line, bounded: input text never floods the summary)."""
    from fineflow.errors import FineflowError, disk_full, is_disk_full

    if not isinstance(exc, FineflowError) and (full := is_disk_full(exc)) is not None:
        exc = disk_full(full, getattr(full, "filename", None) or "the data root")
    if isinstance(exc, FineflowError):
        return exc.reason, exc.hint
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__, ""


def stage_failed(exc: Exception, stage: str) -> Exception:
    """`exc` as a FineflowError that names `stage` (the original stays its cause)."""
    from fineflow.errors import FineflowError

    if isinstance(exc, FineflowError):
        exc.stage = exc.stage or stage
        return exc
    reason, hint = explain(exc)
    return FineflowError(reason, hint=hint, stage=stage)


@dataclass(frozen=True)
class StageLine:
    stage: str
    ran: int
    cached: int
    seconds: float
    figure: str
    # What the stage returned, for the run's artifacts; not part of the printed line.
    manifests: tuple[Manifest, ...] = field(default=(), repr=False, compare=False)
    failed: int = 0  # task runs that failed (per-WARC stages; their WARCs are left out)
    why: str = ""  # why the runs that ran did (storage/why.py), "" when all came cached

    @property
    def status(self) -> str:
        done = self.ran + self.cached
        if self.failed:
            return f"{self.failed} failed" + (f", ran {self.ran}" if self.ran else "")
        if self.ran and self.cached:
            return f"ran {self.ran}/{done}"
        return "ran" if self.ran else "cached"

    def __str__(self) -> str:
        return f"{self.stage:<11} {self.status:<16} {self.seconds:7.1f}s  {self.figure}"


class StageClock:
    """Waits for each stage's futures in pipeline order and times what each one added."""

    def __init__(self, root: Path | None = None) -> None:
        self.last = time.monotonic()
        self.lines: list[StageLine] = []
        self.root = root  # where the why records are (storage/why.py); None: not said

    def finish(
        self, stage: str, futures: list[PrefectFuture], tolerate: bool = False
    ) -> list[Manifest]:
        """The stage's results in order. `tolerate`: a task run that failed (or never
        started) gives None in its place instead of raising its error."""
        _wait_all(futures)
        if tolerate:
            results = [f.result() if _completed(f) else None for f in futures]
        else:
            try:
                results = [f.result() for f in futures]
            except Exception as exc:  # the stage's error, with the stage named
                err = stage_failed(exc, stage)
                if err is exc:
                    raise
                raise err from exc
        now = time.monotonic()
        states = [_state(f) for f in futures]
        cached = sum(s is not None and s.name == "Cached" for s in states)
        failed = sum(s is not None and (s.is_failed() or s.is_crashed()) for s in states)
        ms = tuple(m for m in results if isinstance(m, Manifest))
        ran = sum(s is not None and s.is_completed() for s in states) - cached
        said = ""
        if ran and self.root is not None:  # the runs that ran: what the next --why compares
            slots = [m.warc or "corpus" for m in ms]
            for slot in slots:
                why.completed(self.root, stage, slot)
            said = why.summarize(why.reasons(self.root, stage, slots))
        self.lines.append(
            StageLine(stage, ran, cached, now - self.last, figure(stage, results), ms, failed, said)
        )
        self.last = now
        return results


def _wait_all(futures: list[PrefectFuture]) -> None:
    """Wait for every future; one whose upstream failed raises from `wait` on a process
    pool (UpstreamTaskError): it is over too, and its state says so (`_state`)."""
    for future in futures:
        with contextlib.suppress(Exception):
            future.wait()


def _state(future: PrefectFuture):
    """The future's final state; None for a task run that never started: a process pool
    raises its upstream's failure (UpstreamTaskError) from `.state` instead of a state.

    `wait` first: it sets the final state from the task's own result; without it `.state`
    asks the API, which may not have heard of the end yet (a failed task read "Running")."""
    try:
        future.wait()
        return future.state
    except Exception:
        return None


def _completed(future: PrefectFuture) -> bool:
    state = _state(future)
    return state is not None and state.is_completed()


def figure(stage: str, results: list) -> str:
    """The one number a user wants to see for `stage` (flows/stages.py holds each)."""
    from fineflow.flows.stages import BY_NAME

    if stage == "resolve_crawl":
        return f"{sum(len(r) for r in results)} WARC URLs"
    ms = [m for m in results if isinstance(m, Manifest)]
    return BY_NAME[stage].figure(ms) if ms and stage in BY_NAME else ""


# --- artifacts in the Prefect UI ----------------------------------------------------------

log = logging.getLogger("fineflow.summary")


def funnel_rows(
    lines: list[StageLine], root: Path, failures: tuple[WarcFailure, ...] = ()
) -> list[dict[str, str | int]]:
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
            kept = m.counts.get("kept")  # every stage's count of what it let through
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
    rows_out = [{k: r[k] for k in order if k in r} for r in out]
    # a failed WARC: its row says at which stage, in the place of its counts (why, in words,
    # is in the run summary's table of failed WARCs: a long reason here widens every row)
    rows_out += [{"warc": f.warc, "failed at": f.stage} for f in failures]
    return rows_out


def drop_reason_rows(outputs: dict[str, Manifest], root: Path) -> list[dict[str, str | int]]:
    """Per stage and drop reason, the pages it dropped over every WARC (corpus.duckdb's
    funnel table): the funnel's "why", a table of its own so the funnel stays narrow."""
    corpus = outputs.get("dedup")
    if corpus is None:
        return []
    from fineflow.storage.catalog import connect

    try:
        with connect(corpus.path(Path(root), "corpus.duckdb"), read_only=True) as con:
            rows = con.execute(
                "SELECT stage, metric, sum(value) AS n FROM funnel "
                "WHERE starts_with(metric, 'dropped_') "
                "OR (stage = 'extract' AND starts_with(metric, 'skipped_')) "
                "GROUP BY ALL HAVING n > 0 ORDER BY min(step), n DESC, metric"
            ).fetchall()
    except Exception as exc:  # the funnel is a view: a missing table must not fail a run
        log.warning("no drop reasons table: %s", exc)
        return []
    return [
        {"stage": stage, "reason": metric.split("_", 1)[1], "pages": int(n)}
        for stage, metric, n in rows
    ]


def _dedup_kept_per_warc(lines: list[StageLine], root: Path) -> dict[str, int]:
    dedup = next((ln.manifests[0] for ln in lines if ln.stage == "dedup" and ln.manifests), None)
    if dedup is None:
        return {}
    from fineflow.storage.catalog import connect

    try:
        with connect(dedup.path(Path(root), "corpus.duckdb"), read_only=True) as con:
            return dict(con.execute("select warc, kept from dedup_stats").fetchall())
    except Exception as exc:  # the funnel is a view: a missing column must not fail a run
        log.warning("no dedup column in the funnel: %s", exc)
        return {}


def summary_markdown(
    lines: list[StageLine],
    outputs: dict[str, Manifest],
    root: Path,
    failures: tuple[WarcFailure, ...] = (),
) -> str:
    """The run as markdown: one row per stage, then where each output lives."""
    ran = sum(1 for ln in lines if ln.ran)
    md = [
        "# fineflow run",
        "",
        f"{len(lines)} stages, {ran} ran, {len(lines) - ran} cached.",
        "",
        "| stage | status | seconds | key figure | why it ran |",
        "|---|---|---:|---|---|",
    ]
    md += [
        f"| {ln.stage} | {ln.status} | {ln.seconds:.1f} | {ln.figure.replace('|', '/')} "
        f"| {ln.why.replace('|', '/')} |"
        for ln in lines
    ]
    if (report := outputs.get("report")) is not None:
        page = Path(root) / report.dir / "report.html"
        md += ["", f"**The run, step by step**: [report.html]({page.as_uri()}) (`{page}`)"]
    if failures:
        md += ["", f"## {len(failures)} WARC(s) failed and were left out", ""]
        md += ["| WARC | stage | reason | what to do |", "|---|---|---|---|"]
        md += [
            f"| {f.warc} | {f.stage} | {f.reason.replace('|', '/')} | {f.hint.replace('|', '/')} |"
            for f in failures
        ]
    if (corpus := outputs.get("dedup")) is not None:  # FineWeb's funnel, from the catalog
        from fineflow.tasks.filter import funnel_markdown

        table = funnel_markdown(corpus.path(Path(root), "corpus.duckdb"))
        md += ["", "## Funnel: where every record went", "", table] if table else []
    md += ["", f"## Outputs under `{root}`", ""]
    for stage, m in outputs.items():
        names = ", ".join(f"`{f.path}`" for f in m.files[:4])
        more = f" and {len(m.files) - 4} more" if len(m.files) > 4 else ""
        md.append(f"- **{stage}**: `{Path(root) / m.dir}` ({names}{more})")
    return "\n".join(md) + "\n"


def publish_run_artifacts(
    lines: list[StageLine],
    outputs: dict[str, Manifest],
    root: Path,
    failures: tuple[WarcFailure, ...] = (),
) -> None:
    """The funnel table and the run summary, attached to the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    rows = funnel_rows(lines, root, failures)
    reasons = drop_reason_rows(outputs, root)
    try:
        if rows:
            create_table_artifact(
                rows, key="fineflow-funnel", description="Documents kept per WARC, stage by stage"
            )
        if reasons:
            create_table_artifact(
                reasons,
                key="fineflow-drop-reasons",
                description="Why the funnel dropped what it dropped: pages per stage and reason",
            )
        create_markdown_artifact(
            summary_markdown(lines, outputs, root, failures),
            key="fineflow-run-summary",
            description="Stages run or cached, and where the outputs are",
        )
    except Exception as exc:  # the UI is a view: never fail a run over it
        log.warning("run artifacts not published: %s", exc)
