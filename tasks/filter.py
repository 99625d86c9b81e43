"""Stage "filter": extract's docs.parquet -> the documents FineWeb's filters keep.

Per WARC, after extract, so changing a threshold never re-extracts. Each document
goes through tasks/quality.py's chain (language, Gopher repetition, Gopher quality,
C4, FineWeb, PII); the first rule that fires drops it.

docs.parquet: extract's columns (id, url, host, warc, date, text, length) plus
language (str) and language_score (float64); text is C4-cleaned and PII-redacted,
length recomputed. dropped.parquet: up to `dropped_samples` documents per reason
(warc, id, url, reason, text = first 500 characters), so every rule can be audited.
Counts: total, kept, dropped_<reason> for every reason of quality.reasons(cfg),
replaced_email, replaced_ip. Stats: chars (of kept text).

A WARC of `POOL_MIN_DOCS` (400) documents or more is judged on `workers` processes
(None: the cores the task has, see tasks/extract.py), batches of 64 sent in order and
taken back in order, so the output is the same bytes for any number of workers.

Also here, for the corpus catalog: `funnel_rows` (manifests -> funnel table rows),
`load_funnel` (the `funnel` and `dropped_samples` tables of corpus.duckdb) and
`funnel_markdown` (the funnel per WARC and in total, as Markdown).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from fineflow.config import FilterConfig
from fineflow.storage import catalog, parquet
from fineflow.storage.artifacts import ArtifactWriter, Manifest, stage_key
from fineflow.tasks.extract import DOCS_SCHEMA
from fineflow.tasks.quality import Verdict, judge, reasons
from fineflow.tasks.sandbox import ordered_map, pool_size

# 2: words and sentences counted as FineWeb does (tasks/words.py); 3: its URL rule
# leaves private and loopback IPs out, as spaCy's does
STAGE_VERSION = 3
DOCS = "docs.parquet"
DROPPED = "dropped.parquet"
SAMPLE_CHARS = 500
ROW_GROUP = 1000
# A WARC of fewer documents is judged in-process: ~6 s of filtering on one core, well
# over what a filter process costs to start (it imports the filters and loads lid.176)
POOL_MIN_DOCS = 400
POOL_BATCH = 64  # documents per call to a filter process: the pipe's cost stays small

log = logging.getLogger("fineflow.filter")

FILTERED_SCHEMA = DOCS_SCHEMA.append(pa.field("language", pa.string())).append(
    pa.field("language_score", pa.float64())
)
DROPPED_SCHEMA = pa.schema(
    [
        ("warc", pa.string()),
        ("id", pa.string()),
        ("url", pa.string()),
        ("reason", pa.string()),
        ("text", pa.string()),
    ]
)


def count_keys(cfg: FilterConfig) -> list[str]:
    return ["total", "kept", *(f"dropped_{r}" for r in reasons(cfg))] + [
        "replaced_email",
        "replaced_ip",
    ]


def judge_texts(texts: list[str], cfg: FilterConfig) -> list[Verdict]:
    """quality.judge over a batch of texts: what a filter worker runs."""
    return [judge(text, cfg) for text in texts]


def judge_docs(
    docs: Path, out: Path, dropped: Path, cfg: FilterConfig
) -> tuple[dict[str, int], int]:
    """Judge every document (quality.judge): the kept ones to `out`, redacted, and up to
    `cfg.dropped_samples` per reason to `dropped`; returns (counts, characters kept)."""
    counts: Counter[str] = Counter()
    samples: dict[str, list[dict]] = defaultdict(list)
    chars = 0
    batch: list[dict] = []
    n_docs = pq.ParquetFile(docs).metadata.num_rows
    workers = pool_size(cfg.workers, n_docs, POOL_MIN_DOCS)
    if workers > 1:
        log.info("%s: judging %d documents in %d processes", docs.parent.name, n_docs, workers)
    pending: deque[list[dict]] = deque()  # rows whose texts are being judged, in order

    def texts() -> Iterator[list[str]]:
        for rb in parquet.iter_batches(docs, POOL_BATCH):  # memory flat on any WARC size
            rows = rb.to_pylist()
            pending.append(rows)
            yield [row["text"] for row in rows]

    with pq.ParquetWriter(out, FILTERED_SCHEMA) as writer:
        calls = ((batch, cfg) for batch in texts())
        for judged in ordered_map(judge_texts, calls, workers, "filter"):
            for row, v in zip(pending.popleft(), judged, strict=True):
                counts["total"] += 1
                if v.reason is not None:
                    counts[f"dropped_{v.reason}"] += 1
                    if len(samples[v.reason]) < cfg.dropped_samples:
                        samples[v.reason].append(
                            {
                                "warc": row["warc"],
                                "id": row["id"],
                                "url": row["url"],
                                "reason": v.reason,
                                "text": row["text"][:SAMPLE_CHARS],
                            }
                        )
                    continue
                counts["kept"] += 1
                counts["replaced_email"] += v.emails
                counts["replaced_ip"] += v.ips
                chars += len(v.text)
                batch.append(
                    row
                    | {
                        "text": v.text,
                        "length": len(v.text),
                        "language": v.language,
                        "language_score": round(v.language_score, 6),
                    }
                )
                if len(batch) >= ROW_GROUP:
                    writer.write_table(pa.Table.from_pylist(batch, schema=FILTERED_SCHEMA))
                    batch = []
        if batch or not counts["kept"]:  # an empty WARC still gets a valid file
            writer.write_table(pa.Table.from_pylist(batch, schema=FILTERED_SCHEMA))
    rows = [s for reason in reasons(cfg) for s in samples.get(reason, [])]
    pq.write_table(pa.Table.from_pylist(rows, schema=DROPPED_SCHEMA), dropped)
    unknown = set(counts) - set(count_keys(cfg))
    if unknown:  # a reason quality.reasons() does not list: a bug, not data
        raise RuntimeError(f"filter reasons missing from quality.reasons(): {sorted(unknown)}")
    return {k: counts[k] for k in count_keys(cfg)}, chars


# --- the funnel in the corpus catalog --------------------------------------------------

FUNNEL_DDL = """
CREATE TABLE funnel (
    warc   VARCHAR NOT NULL,
    step   INTEGER NOT NULL,   -- the stage's position in the pipeline
    stage  VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,   -- total, kept, dropped_<reason>, skipped_<reason>, ...
    value  BIGINT  NOT NULL
)
"""
DROPPED_DDL = """
CREATE TABLE dropped_samples (
    warc VARCHAR, stage VARCHAR, id VARCHAR, url VARCHAR, reason VARCHAR, text VARCHAR
)
"""
# FineWeb's funnel columns: records -> URL filter -> extraction -> filters -> dedup
_FUNNEL_COLUMNS = (
    ("records", "url_filter", "total"),
    ("url_filter", "url_filter", "kept"),
    ("extracted", "extract", "kept"),
    ("language", "filter", "kept_language"),
    ("quality", "filter", "kept"),
    ("dedup", "dedup", "kept"),
)


def funnel_rows(manifests: Sequence[Manifest]) -> list[tuple[str, int, str, str, int]]:
    """(warc, step, stage, metric, value) for every count of every per-WARC manifest."""
    from fineflow.config import STAGES

    rows = []
    for m in manifests:
        step = STAGES.index(m.stage) if m.stage in STAGES else len(STAGES)
        for metric, value in sorted(m.counts.items()):
            rows.append((m.warc or m.key, step, m.stage, metric, int(value)))
        if m.stage == "filter":  # what passed language ID, for the funnel's language column
            lang = sum(v for k, v in m.counts.items() if k.startswith("dropped_language_"))
            rows.append((m.warc or m.key, step, m.stage, "kept_language", m.counts["total"] - lang))
    return rows


def load_funnel(con, root: Path, manifests: Iterable[Manifest]) -> None:  # noqa: ANN001
    """Tables `funnel` (per-WARC counts of every stage, plus dedup's) and `dropped_samples`."""
    manifests = list(manifests)
    con.execute(FUNNEL_DDL)
    con.execute(DROPPED_DDL)
    rows = funnel_rows(manifests)
    if rows:
        con.executemany("INSERT INTO funnel VALUES (?, ?, ?, ?, ?)", rows)
    from fineflow.config import STAGES

    con.execute(
        """
        INSERT INTO funnel
        SELECT warc, $step, 'dedup', m.metric, m.value FROM dedup_stats,
        LATERAL (VALUES ('total', docs), ('kept', kept), ('dropped_duplicate', dropped_duplicate))
            AS m(metric, value)
        """,
        {"step": STAGES.index("dedup")},
    )
    dropped = [str(p) for m in manifests if m.stage == "filter" for p in m.paths(root, DROPPED)]
    if dropped:
        con.execute(
            "INSERT INTO dropped_samples SELECT warc, 'filter', id, url, reason, text"
            " FROM read_parquet($files)",
            {"files": dropped},
        )


def funnel_digest(manifests: Sequence[Manifest]) -> list[tuple[str | None, str, str]]:
    """What the funnel tables hold, for the corpus fingerprint: which artifacts fed them."""
    return [(m.warc, m.stage, m.fingerprint) for m in manifests]


def funnel_markdown(db_path: Path) -> str:
    """FineWeb's funnel table (records -> URL filter -> extraction -> language -> quality ->
    dedup), one row per WARC and a total, from corpus.duckdb; '' if it has no funnel."""
    with catalog.connect(Path(db_path), read_only=True) as con:
        has = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'funnel'"
        ).fetchone()[0]
        if not has:
            return ""
        cells = con.execute(
            "SELECT warc, stage, metric, value FROM funnel ORDER BY warc"
        ).fetchall()
    table: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    for warc, stage, metric, value in cells:
        table[warc][(stage, metric)] = value
    names = [c[0] for c in _FUNNEL_COLUMNS]
    lines = ["| WARC | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    total = [0] * len(names)
    for warc in sorted(table):
        vals = [table[warc].get((s, m), 0) for _, s, m in _FUNNEL_COLUMNS]
        total = [a + b for a, b in zip(total, vals, strict=True)]
        lines.append(f"| {warc} | " + " | ".join(f"{v:,}" for v in vals) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v:,}**" for v in total) + " |")
    if total[0]:
        pct = [f"{100 * v / total[0]:.1f}%" for v in total]
        lines.append("| % of records | " + " | ".join(pct) + " |")
    return "\n".join(lines) + "\n"


@task(name="filter", task_run_name="filter[{docs.warc}]")
def filter_docs(root: str, docs: Manifest, cfg: FilterConfig) -> Manifest:
    """Language ID, Gopher, C4 and FineWeb quality filters and PII redaction for one WARC."""
    key = stage_key(STAGE_VERSION, docs, cfg)
    started = time.monotonic()
    with ArtifactWriter(Path(root), "filter", key, warc=docs.warc) as out:
        counts, chars = judge_docs(
            docs.path(Path(root), DOCS), out.path(DOCS), out.path(DROPPED), cfg
        )
        log.info(
            "%s: kept %d of %d documents in %.1fs",
            docs.warc,
            counts["kept"],
            counts["total"],
            time.monotonic() - started,
        )
        return out.commit(cfg, counts=counts, stats={"chars": chars})
